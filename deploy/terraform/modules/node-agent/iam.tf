# One instance profile per role. Its policy is exactly what `node-agent iam-policy` prints for the role's
# config (the user-data in compute.tf): policies/ROLE.json.tftpl are that output with the account,
# region, environment and ids as template variables, checked against the command by tests/deploy.

resource "aws_iam_role" "node" {
  for_each = toset(local.roles)
  name     = "${var.environment}-${each.key}"
  assume_role_policy = jsonencode({
    Version   = "2012-10-17"
    Statement = [{ Effect = "Allow", Action = "sts:AssumeRole", Principal = { Service = "ec2.amazonaws.com" } }]
  })
  tags = merge(local.tags, { Role = each.key })
}

resource "aws_iam_role_policy" "node" {
  for_each = toset(local.roles)
  name     = "node-agent-${each.key}"
  role     = aws_iam_role.node[each.key].id
  policy = templatefile("${path.module}/policies/${each.key}.json.tftpl", {
    partition         = local.partition
    region            = local.region
    account_id        = local.account_id
    environment       = var.environment
    file_system_id    = aws_efs_file_system.chain.id
    access_point_id   = contains(local.efs_roles, each.key) ? aws_efs_access_point.role[each.key].id : ""
    kms_key_arn       = aws_kms_key.chain.arn
    autoscaling_group = local.rpc_group_name

    # rpc's mount grant (the export and the seeding) names it; the other roles' templates do not use it.
    backups_access_point_id = aws_efs_access_point.backups.id
  })
}

resource "aws_iam_instance_profile" "node" {
  for_each = toset(local.roles)
  name     = "${var.environment}-${each.key}"
  role     = aws_iam_role.node[each.key].name
  tags     = merge(local.tags, { Role = each.key })
}
