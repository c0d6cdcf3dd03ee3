# The log groups node-agent ships to (logs.group_template), made here with its retention, so no role needs
# to create one: node-agent's CreateLogGroup then answers "already exists" and its PutRetentionPolicy
# sets the value the group already has.

resource "aws_cloudwatch_log_group" "node" {
  # checkov:skip=CKV_AWS_338:retention is node-agent's logs.retention_days (default 30), which the agent sets itself at every start; raise both together with var.log_retention_days
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
