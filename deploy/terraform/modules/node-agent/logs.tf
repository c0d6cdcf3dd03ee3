# The log groups node-agent ships to (logs.group_template), made here with their retention. The user-data
# sets logs.create_group = false, so the agent never calls CreateLogGroup or PutRetentionPolicy and
# `iam-policy` (the instance profiles) grants neither: the groups must exist before the instances.

resource "aws_cloudwatch_log_group" "node" {
  # checkov:skip=CKV_AWS_338:30 days by default as node-agent's logs.retention_days (the user-data passes var.log_retention_days to it too); a year of agent and geth logs is not needed, raise the variable for more
  for_each          = local.log_groups
  name              = each.value
  retention_in_days = var.log_retention_days
  kms_key_id        = aws_kms_key.chain.arn
  tags              = merge(local.tags, { Role = each.key })
}

resource "aws_cloudwatch_log_group" "flow" {
  # checkov:skip=CKV_AWS_338:rejected-traffic flow logs are for debugging security groups, kept as long as node-agent's logs
  name              = "/vpc-flow/${var.environment}"
  retention_in_days = var.log_retention_days
  kms_key_id        = aws_kms_key.chain.arn
  tags              = local.tags
}

resource "aws_iam_role" "flow_logs" {
  name = "node-agent-${var.environment}-flow-logs"
  assume_role_policy = jsonencode({
    Version   = "2012-10-17"
    Statement = [{ Effect = "Allow", Action = "sts:AssumeRole", Principal = { Service = "vpc-flow-logs.amazonaws.com" } }]
  })
  tags = local.tags
}

resource "aws_iam_role_policy" "flow_logs" {
  name = "ship-flow-logs"
  role = aws_iam_role.flow_logs.id
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [{
      Effect   = "Allow"
      Action   = ["logs:CreateLogStream", "logs:PutLogEvents", "logs:DescribeLogStreams"]
      Resource = ["${aws_cloudwatch_log_group.flow.arn}:*"]
    }]
  })
}
