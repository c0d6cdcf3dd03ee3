# Stable names for the two single instances others dial: bootnode.ZONE (chain.bootnodes) and
# ethstats.ZONE (chain.ethstats), private to the VPC. A replacement instance has a new address, so a
# small function follows Auto Scaling's launch events: it updates the record and moves the bootnode's
# Elastic IP. (A group cannot launch into a fixed private IP or an existing network interface.) The groups
# are made after the rule and the function (compute.tf: depends_on), so their first launch is followed too;
# names here are the groups' names as compute.tf builds them, not references, to keep it that way.

resource "aws_route53_zone" "private" {
  # checkov:skip=CKV2_AWS_38:DNSSEC signing applies to public zones only
  # checkov:skip=CKV2_AWS_39:query logging of a private zone needs Resolver query logging; the names here are two A records
  name          = var.private_zone_name
  force_destroy = true # the function's records are not Terraform's
  tags          = local.tags

  vpc {
    vpc_id = aws_vpc.chain.id
  }
}

locals {
  followed = {
    bootnode = "bootnode.${var.private_zone_name}"
    ethstats = "ethstats.${var.private_zone_name}"
  }
}

data "archive_file" "follow_instance" {
  type        = "zip"
  source_file = "${path.module}/functions/follow_instance.py"
  output_path = "${path.root}/.terraform/follow_instance-${var.environment}.zip"
}

resource "aws_iam_role" "follow_instance" {
  name = "node-agent-${var.environment}-follow-instance"
  assume_role_policy = jsonencode({
    Version   = "2012-10-17"
    Statement = [{ Effect = "Allow", Action = "sts:AssumeRole", Principal = { Service = "lambda.amazonaws.com" } }]
  })
  tags = local.tags
}

resource "aws_iam_role_policy" "follow_instance" {
  name = "follow-instance"
  role = aws_iam_role.follow_instance.id
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [
      {
        Sid      = "ReadTheNewInstancesAddress"
        Effect   = "Allow"
        Action   = "ec2:DescribeInstances" # supports no resource-level permission
        Resource = "*"
      },
      {
        Sid      = "MoveTheBootnodesAddress"
        Effect   = "Allow"
        Action   = "ec2:AssociateAddress"
        Resource = "arn:${local.partition}:ec2:${local.region}:${local.account_id}:elastic-ip/${aws_eip.bootnode.allocation_id}"
      },
      {
        Sid       = "MoveTheBootnodesAddressToABootnode"
        Effect    = "Allow"
        Action    = "ec2:AssociateAddress"
        Resource  = "arn:${local.partition}:ec2:${local.region}:${local.account_id}:instance/*"
        Condition = { StringEquals = { "aws:ResourceTag/Role" = "bootnode", "aws:ResourceTag/Environment" = var.environment } }
      },
      {
        Sid      = "UpdateTheRecords"
        Effect   = "Allow"
        Action   = "route53:ChangeResourceRecordSets"
        Resource = aws_route53_zone.private.arn
      },
      {
        Sid      = "WriteItsLog"
        Effect   = "Allow"
        Action   = ["logs:CreateLogStream", "logs:PutLogEvents"]
        Resource = "${aws_cloudwatch_log_group.follow_instance.arn}:*"
      },
    ]
  })
}

resource "aws_cloudwatch_log_group" "follow_instance" {
  # checkov:skip=CKV_AWS_338:kept as long as node-agent's logs (var.log_retention_days)
  name              = "/aws/lambda/node-agent-${var.environment}-follow-instance"
  retention_in_days = var.log_retention_days
  kms_key_id        = aws_kms_key.chain.arn
  tags              = local.tags
}

resource "aws_lambda_function" "follow_instance" {
  # checkov:skip=CKV_AWS_117:it calls only the EC2 and Route 53 APIs; inside the VPC it would need two more endpoints (Route 53 has none)
  # checkov:skip=CKV_AWS_116:EventBridge retries a failed asynchronous invocation twice and the failure is in the function's log; a dead-letter queue would be an SQS queue nobody reads
  # checkov:skip=CKV_AWS_272:the code is this module's own file, zipped at plan time; there is no signing profile to check it against
  # checkov:skip=CKV_AWS_173:the environment holds only the zone id, record names and an allocation id, none of them secret
  # checkov:skip=CKV_AWS_115:a new account may have a concurrency limit of 10, below which no function may reserve any; launches of two groups of one never run it twice at once anyway
  # checkov:skip=CKV_AWS_50:one API call per launch; X-Ray tracing would need its own grant and service for nothing worth tracing
  function_name    = "node-agent-${var.environment}-follow-instance"
  role             = aws_iam_role.follow_instance.arn
  runtime          = "python3.12"
  handler          = "follow_instance.handler"
  filename         = data.archive_file.follow_instance.output_path
  source_code_hash = data.archive_file.follow_instance.output_base64sha256
  timeout          = 30
  tags             = local.tags

  environment {
    variables = {
      ZONE_ID     = aws_route53_zone.private.zone_id
      RECORDS     = jsonencode({ for r, fqdn in local.followed : "${var.environment}-${r}" => fqdn })
      ELASTIC_IPS = jsonencode({ "${var.environment}-bootnode" = aws_eip.bootnode.allocation_id })
    }
  }

  depends_on = [aws_cloudwatch_log_group.follow_instance]
}

resource "aws_cloudwatch_event_rule" "instance_launched" {
  name = "node-agent-${var.environment}-instance-launched"
  event_pattern = jsonencode({
    source        = ["aws.autoscaling"]
    "detail-type" = ["EC2 Instance Launch Successful"]
    detail        = { AutoScalingGroupName = [for r in keys(local.followed) : "${var.environment}-${r}"] }
  })
  tags = local.tags
}

resource "aws_cloudwatch_event_target" "instance_launched" {
  rule = aws_cloudwatch_event_rule.instance_launched.name
  arn  = aws_lambda_function.follow_instance.arn
}

resource "aws_lambda_permission" "instance_launched" {
  statement_id  = "AutoScalingLaunches"
  action        = "lambda:InvokeFunction"
  function_name = aws_lambda_function.follow_instance.function_name
  principal     = "events.amazonaws.com"
  source_arn    = aws_cloudwatch_event_rule.instance_launched.arn
}
