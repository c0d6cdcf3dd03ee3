# The alarms of docs/metrics.md on node-agent's EMF metrics (namespace var.metrics_namespace = the
# config's metrics.namespace), on the [Environment, Role] series, all notifying one SNS topic:
# var.alarm_topic_arn, or the one made here (encrypted with the environment's key). Periods are 60 s: the
# agent writes an event every health.interval_secs (10 s), so each period has several points. The
# thresholds follow node-agent's defaults through the variables; tests/deploy checks them against the docs.

locals {
  alarm_topic_arn = var.alarm_topic_arn != "" ? var.alarm_topic_arn : aws_sns_topic.alarms[0].arn
  alarm_prefix    = "node-agent-${var.environment}"
  alarm_topic     = "${local.alarm_prefix}-alarms"

  # Roles whose agent holds secrets (SecretAgeSeconds): every one (`check --json`'s secrets: the sealer's
  # keystore and password, the bootnode's node key, and the ethstats WS secret that ethstats and both geth
  # roles hold). The roles that export chain backups (BackupAgeSeconds): backup.role, node-agent's "rpc".
  secret_roles = ["sealer", "rpc", "bootnode", "ethstats"]
  backup_role  = "rpc"
}

resource "aws_sns_topic" "alarms" {
  count             = var.alarm_topic_arn == "" ? 1 : 0
  name              = local.alarm_topic
  kms_master_key_id = aws_kms_key.chain.arn # the key policy lets CloudWatch use it (kms.tf)
  tags              = local.tags
}

# Only this account's alarms of this environment publish. People of the account subscribe with their own
# grants (sns:Subscribe): in one account, the topic policy need not name them.
data "aws_iam_policy_document" "alarm_topic" {
  statement {
    sid       = "ThisEnvironmentsAlarmsPublish"
    actions   = ["sns:Publish"]
    resources = ["arn:${local.partition}:sns:${local.region}:${local.account_id}:${local.alarm_topic}"]
    principals {
      type        = "Service"
      identifiers = ["cloudwatch.amazonaws.com"]
    }
    condition {
      test     = "ArnLike"
      variable = "aws:SourceArn"
      values   = ["arn:${local.partition}:cloudwatch:${local.region}:${local.account_id}:alarm:${local.alarm_prefix}-*"]
    }
  }
}

resource "aws_sns_topic_policy" "alarms" {
  count  = var.alarm_topic_arn == "" ? 1 : 0
  arn    = aws_sns_topic.alarms[0].arn
  policy = data.aws_iam_policy_document.alarm_topic.json
}

# No new block for six Clique periods: nobody seals. No data: the sealer's agent (or its shipping) is gone.
resource "aws_cloudwatch_metric_alarm" "sealer_stalled" {
  alarm_name          = "${local.alarm_prefix}-sealer-stalled"
  alarm_description   = "The sealer's head is older than 6 Clique periods for 2 minutes, or the sealer reports nothing: nobody seals (docs/metrics.md)."
  namespace           = var.metrics_namespace
  metric_name         = "HeadAgeSeconds"
  dimensions          = { Environment = var.environment, Role = "sealer" }
  statistic           = "Maximum"
  comparison_operator = "GreaterThanThreshold"
  threshold           = 6 * var.clique_period_secs
  period              = 60
  evaluation_periods  = 2
  treat_missing_data  = "breaching"
  actions_enabled     = true
  alarm_actions       = [local.alarm_topic_arn]
  ok_actions          = [local.alarm_topic_arn]
  tags                = merge(local.tags, { Role = "sealer" })
}

# Minimum over the role: one rpc node not healthy for the whole window is enough. Short blips do not page.
resource "aws_cloudwatch_metric_alarm" "rpc_unhealthy" {
  alarm_name          = "${local.alarm_prefix}-rpc-unhealthy"
  alarm_description   = "An rpc node has not been healthy (node-agent status) for ${var.rpc_unhealthy_minutes} minutes (docs/metrics.md)."
  namespace           = var.metrics_namespace
  metric_name         = "Healthy"
  dimensions          = { Environment = var.environment, Role = "rpc" }
  statistic           = "Minimum"
  comparison_operator = "LessThanThreshold"
  threshold           = 1
  period              = 60
  evaluation_periods  = var.rpc_unhealthy_minutes
  treat_missing_data  = "notBreaching"
  actions_enabled     = true
  alarm_actions       = [local.alarm_topic_arn]
  ok_actions          = [local.alarm_topic_arn]
  tags                = merge(local.tags, { Role = "rpc" })
}

# A child the agent cannot keep up: it keeps restarting it with backoff, but a person must look.
resource "aws_cloudwatch_metric_alarm" "crash_loop" {
  for_each            = toset(local.roles)
  alarm_name          = "${local.alarm_prefix}-${each.key}-crash-loop"
  alarm_description   = "A ${each.key} child is crash-looping (docs/metrics.md)."
  namespace           = var.metrics_namespace
  metric_name         = "CrashLooping"
  dimensions          = { Environment = var.environment, Role = each.key }
  statistic           = "Maximum"
  comparison_operator = "GreaterThanOrEqualToThreshold"
  threshold           = 1
  period              = 60
  evaluation_periods  = 1
  treat_missing_data  = "notBreaching"
  actions_enabled     = true
  alarm_actions       = [local.alarm_topic_arn]
  ok_actions          = [local.alarm_topic_arn]
  tags                = merge(local.tags, { Role = each.key })
}

# Any loss in the last 5 minutes (1 of 5 periods): a single lost minute must not go unnoticed, and the
# alarm stays up for the 5 minutes after it.
resource "aws_cloudwatch_metric_alarm" "lines_lost" {
  for_each            = toset(local.roles)
  alarm_name          = "${local.alarm_prefix}-${each.key}-lines-lost"
  alarm_description   = "${each.key} lost log lines (disk full or events refused by CloudWatch) in the last 5 minutes (docs/metrics.md)."
  namespace           = var.metrics_namespace
  metric_name         = "LinesLost"
  dimensions          = { Environment = var.environment, Role = each.key }
  statistic           = "Sum"
  comparison_operator = "GreaterThanThreshold"
  threshold           = 0
  period              = 60
  evaluation_periods  = 5
  datapoints_to_alarm = 1
  treat_missing_data  = "notBreaching"
  actions_enabled     = true
  alarm_actions       = [local.alarm_topic_arn]
  ok_actions          = [local.alarm_topic_arn]
  tags                = merge(local.tags, { Role = each.key })
}

# Rotation stopped. The age restarts with the agent, so a secret stale across restarts goes unseen.
resource "aws_cloudwatch_metric_alarm" "secret_too_old" {
  for_each            = toset(local.secret_roles)
  alarm_name          = "${local.alarm_prefix}-${each.key}-secret-too-old"
  alarm_description   = "A secret ${each.key} holds is older than the rotation policy (${var.secret_rotation_days} days, plus a day) for an hour (docs/metrics.md)."
  namespace           = var.metrics_namespace
  metric_name         = "SecretAgeSeconds"
  dimensions          = { Environment = var.environment, Role = each.key }
  statistic           = "Maximum"
  comparison_operator = "GreaterThanThreshold"
  threshold           = (var.secret_rotation_days + 1) * 86400
  period              = 60
  evaluation_periods  = 60
  treat_missing_data  = "notBreaching"
  actions_enabled     = true
  alarm_actions       = [local.alarm_topic_arn]
  ok_actions          = [local.alarm_topic_arn]
  tags                = merge(local.tags, { Role = each.key })
}

# No segment for two intervals, or no exporter at all (no data).
resource "aws_cloudwatch_metric_alarm" "backup_too_old" {
  alarm_name          = "${local.alarm_prefix}-backup-too-old"
  alarm_description   = "The newest chain backup segment is older than twice backup.interval_secs for an hour, or no node exports (docs/metrics.md)."
  namespace           = var.metrics_namespace
  metric_name         = "BackupAgeSeconds"
  dimensions          = { Environment = var.environment, Role = local.backup_role }
  statistic           = "Maximum"
  comparison_operator = "GreaterThanThreshold"
  threshold           = 2 * var.backup_interval_secs
  period              = 60
  evaluation_periods  = 60
  treat_missing_data  = "breaching"
  actions_enabled     = true
  alarm_actions       = [local.alarm_topic_arn]
  ok_actions          = [local.alarm_topic_arn]
  tags                = merge(local.tags, { Role = local.backup_role })
}
