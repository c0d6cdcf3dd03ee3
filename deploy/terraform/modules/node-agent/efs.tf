# The environment's EFS file system: encrypted, one access point per role that keeps data on it
# (/{environment}/{role}, POSIX user and owner 64100 = node-agent), one for the chain backups
# (/{environment}/backups, mounted by rpc), a file system policy that lets each role mount only through
# its access points and only over TLS, and an AWS Backup plan.

resource "aws_efs_file_system" "chain" {
  encrypted        = true
  kms_key_id       = aws_kms_key.chain.arn
  performance_mode = "generalPurpose"
  throughput_mode  = "elastic"
  tags             = merge(local.tags, { Name = "${local.name}-chain" })

  lifecycle_policy {
    transition_to_ia = "AFTER_30_DAYS"
  }
}

resource "aws_efs_mount_target" "chain" {
  count           = length(local.azs)
  file_system_id  = aws_efs_file_system.chain.id
  subnet_id       = aws_subnet.private[count.index].id
  security_groups = [aws_security_group.this["efs"].id]
}

resource "aws_efs_access_point" "role" {
  for_each       = local.efs_paths
  file_system_id = aws_efs_file_system.chain.id
  tags           = merge(local.tags, { Name = "${local.name}-${each.key}", Role = each.key })

  posix_user {
    uid = 64100
    gid = 64100
  }

  root_directory {
    path = each.value
    creation_info {
      owner_uid   = 64100
      owner_gid   = 64100
      permissions = "0750"
    }
  }
}

# /{environment}/backups (backup.path_template): node-agent's chain backups (docs/backups.md). The rpc
# nodes (backup.role) export segments into it and seed an empty datadir from it
# (storage.seed_from_backup); their config names this access point (backup.efs_access_point_id), and
# their instance profile and the file system policy let them mount it and nothing else.
resource "aws_efs_access_point" "backups" {
  file_system_id = aws_efs_file_system.chain.id
  tags           = merge(local.tags, { Name = "${local.name}-backups" })

  posix_user {
    uid = 64100
    gid = 64100
  }

  root_directory {
    path = "/${var.environment}/backups"
    creation_info {
      owner_uid   = 64100
      owner_gid   = 64100
      permissions = "0750"
    }
  }
}

# The parts of `node-agent iam-policy --file-system-policy` of every role that mounts, merged: sealer,
# bootnode and ethstats through their own access point, rpc through the backups' (node_agent_tf.py).
resource "aws_efs_file_system_policy" "chain" {
  file_system_id = aws_efs_file_system.chain.id
  policy = templatefile("${path.module}/policies/file-system.json.tftpl", {
    partition         = local.partition
    region            = local.region
    account_id        = local.account_id
    environment       = var.environment
    environment_title = local.environment_title
    file_system_id    = aws_efs_file_system.chain.id
    access_point_ids  = { for r, ap in aws_efs_access_point.role : r => ap.id }
    role_arns         = { for r in local.efs_client_roles : r => aws_iam_role.node[r].arn }

    backups_access_point_id = aws_efs_access_point.backups.id
  })
}

# AWS Backup copies the whole file system (it cannot select a directory): the roles' directories, which
# are only crash-consistent while geth runs, and /{environment}/backups, whose finished segments never
# change and so are copied consistently. Restore a single directory with an item-level restore.
# Retention of the copies is set here (var.backup_retention_days), and only here: node-agent keeps every
# segment in /{environment}/backups, since a restore replays the chain from block 1 and needs all of them.
resource "aws_backup_vault" "chain" {
  name        = "node-agent-${var.environment}"
  kms_key_arn = aws_kms_key.chain.arn
  tags        = local.tags
}

resource "aws_backup_plan" "chain" {
  name = "node-agent-${var.environment}-efs"
  tags = local.tags

  rule {
    rule_name         = "daily"
    target_vault_name = aws_backup_vault.chain.name
    schedule          = var.backup_schedule

    lifecycle {
      delete_after = var.backup_retention_days
    }
  }
}

resource "aws_iam_role" "backup" {
  name = "node-agent-${var.environment}-backup"
  assume_role_policy = jsonencode({
    Version   = "2012-10-17"
    Statement = [{ Effect = "Allow", Action = "sts:AssumeRole", Principal = { Service = "backup.amazonaws.com" } }]
  })
  tags = local.tags
}

resource "aws_iam_role_policy_attachment" "backup" {
  role       = aws_iam_role.backup.name
  policy_arn = "arn:${local.partition}:iam::aws:policy/service-role/AWSBackupServiceRolePolicyForBackup"
}

resource "aws_iam_role_policy_attachment" "restore" {
  role       = aws_iam_role.backup.name
  policy_arn = "arn:${local.partition}:iam::aws:policy/service-role/AWSBackupServiceRolePolicyForRestores"
}

resource "aws_backup_selection" "chain" {
  name         = "efs"
  plan_id      = aws_backup_plan.chain.id
  iam_role_arn = aws_iam_role.backup.arn
  resources    = [aws_efs_file_system.chain.arn]
}
