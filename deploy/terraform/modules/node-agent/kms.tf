# One customer-managed key for the environment's data at rest: EFS, the secrets, the log groups, the
# backup vault and the alarm topic. node-agent's config names it (secrets.kms_key_arn), so `iam-policy`
# grants kms:Decrypt on it, only through Secrets Manager.

data "aws_iam_policy_document" "kms" {
  # checkov:skip=CKV_AWS_109:a key policy's Resource "*" is the key itself; the account administers its key through IAM (AWS's default key policy)
  # checkov:skip=CKV_AWS_111:a key policy's Resource "*" is the key itself (above)
  # checkov:skip=CKV_AWS_356:a key policy's Resource "*" is the key itself (above)
  statement {
    sid       = "AccountAdministersTheKey"
    actions   = ["kms:*"]
    resources = ["*"] # in a key policy, "*" is this key
    principals {
      type        = "AWS"
      identifiers = ["arn:${local.partition}:iam::${local.account_id}:root"]
    }
  }

  statement {
    sid       = "CloudWatchLogsEncryptsThisEnvironmentsGroups"
    actions   = ["kms:Encrypt", "kms:Decrypt", "kms:ReEncrypt*", "kms:GenerateDataKey*", "kms:Describe*"]
    resources = ["*"]
    principals {
      type        = "Service"
      identifiers = ["logs.${local.region}.amazonaws.com"]
    }
    condition {
      test     = "ArnLike"
      variable = "kms:EncryptionContext:aws:logs:arn"
      values = [
        "arn:${local.partition}:logs:${local.region}:${local.account_id}:log-group:/node-agent/${var.environment}/*",
        "arn:${local.partition}:logs:${local.region}:${local.account_id}:log-group:/vpc-flow/${var.environment}",
        "arn:${local.partition}:logs:${local.region}:${local.account_id}:log-group:/aws/lambda/node-agent-${var.environment}-follow-instance",
      ]
    }
  }

  # CloudWatch alarms publish to the alarm topic (alarms.tf), which this key encrypts: without these, an
  # alarm's notification fails ("CloudWatch Alarms does not have authorization to access the SNS topic
  # encryption key"). A topic given in alarm_topic_arn needs the same on its own key.
  statement {
    sid       = "CloudWatchAlarmsPublishToTheAlarmTopic"
    actions   = ["kms:Decrypt", "kms:GenerateDataKey*"]
    resources = ["*"]
    principals {
      type        = "Service"
      identifiers = ["cloudwatch.amazonaws.com"]
    }
  }
}

resource "aws_kms_key" "chain" {
  description             = "node-agent ${var.environment}: EFS, secrets, logs, backups, the alarm topic"
  enable_key_rotation     = true
  deletion_window_in_days = 30
  policy                  = data.aws_iam_policy_document.kms.json
  tags                    = local.tags
}

resource "aws_kms_alias" "chain" {
  name          = "alias/node-agent-${var.environment}"
  target_key_id = aws_kms_key.chain.key_id
}
