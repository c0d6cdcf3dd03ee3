# Launch templates and Auto Scaling groups: rpc nodes scale behind the load balancer; the sealer, the
# bootnode and ethstats each run in a group of one, so that a dead instance is replaced.

locals {
  # docs/scaling.md: the hook waits for the drain, the children's stop and a margin.
  rpc_hook_heartbeat_secs = var.drain_secs + var.stop_secs + 30

  subnets = {
    sealer   = aws_subnet.private[*].id
    rpc      = aws_subnet.private[*].id
    bootnode = aws_subnet.public[*].id
    ethstats = aws_subnet.private[*].id
  }

  # The instance tags node-agent reads through instance metadata (docs/configuration.md).
  instance_tags = {
    for r in local.roles : r => merge(
      local.tags,
      { Name = "${var.environment}-${r}", Role = r, Environment = var.environment },
      contains(local.efs_roles, r) ? {
        EfsFileSystemId  = aws_efs_file_system.chain.id
        EfsAccessPointId = aws_efs_access_point.role[r].id
      } : {},
    )
  }

  # The one-liner of docs/install-and-bake.md ("Launch"), per role: what differs from the defaults.
  user_data = {
    for r in local.roles : r => templatefile("${path.module}/user-data.sh.tftpl", {
      role               = r
      bootnode_enode_id  = var.bootnode_enode_id
      bootnode_host      = "bootnode.${var.private_zone_name}"
      bootnode_port      = local.ports.bootnode
      ethstats_host      = "ethstats.${var.private_zone_name}"
      ethstats_port      = local.ports.ethstats
      file_system_id     = aws_efs_file_system.chain.id
      kms_key_arn        = aws_kms_key.chain.arn
      log_retention_days = var.log_retention_days
      stop_secs          = var.stop_secs
      drain_secs         = var.drain_secs
      lifecycle_hook     = local.rpc_hook_name
      autoscaling_group  = local.rpc_group_name

      # backup.efs_access_point_id: every role's config names it; rpc mounts it (export, seeding).
      backups_access_point_id = aws_efs_access_point.backups.id
    })
  }
}

resource "aws_launch_template" "node" {
  for_each               = toset(local.roles)
  name_prefix            = "${var.environment}-${each.key}-"
  image_id               = data.aws_ami.node_agent.id
  instance_type          = var.instance_types[each.key]
  update_default_version = true
  user_data              = base64encode(local.user_data[each.key])
  tags                   = merge(local.tags, { Role = each.key })

  iam_instance_profile {
    arn = aws_iam_instance_profile.node[each.key].arn
  }

  network_interfaces {
    device_index                = 0
    associate_public_ip_address = false # the bootnode's public address is its Elastic IP
    security_groups             = [aws_security_group.this[each.key].id]
    delete_on_termination       = true
  }

  block_device_mappings {
    device_name = data.aws_ami.node_agent.root_device_name
    ebs {
      volume_size           = var.root_volume_gib[each.key]
      volume_type           = "gp3"
      encrypted             = true # the account's aws/ebs key: Auto Scaling's service role may use it
      delete_on_termination = true
    }
  }

  metadata_options {
    http_endpoint               = "enabled"
    http_tokens                 = "required" # IMDSv2 only
    http_put_response_hop_limit = 1
    instance_metadata_tags      = "enabled" # node-agent reads Role and Environment here
  }

  monitoring {
    enabled = true
  }

  tag_specifications {
    resource_type = "instance"
    tags          = local.instance_tags[each.key]
  }

  tag_specifications {
    resource_type = "volume"
    tags          = merge(local.tags, { Name = "${var.environment}-${each.key}", Role = each.key })
  }
}

resource "aws_autoscaling_group" "rpc" {
  # checkov:skip=CKV2_AWS_15:docs/scaling.md: keep the health check type EC2, so the group does not replace a node that is still syncing; the target group's /ready keeps traffic away from it, node-agent restarts geth
  name                      = local.rpc_group_name
  min_size                  = var.rpc_min_size
  max_size                  = var.rpc_max_size
  vpc_zone_identifier       = local.subnets.rpc
  target_group_arns         = [aws_lb_target_group.rpc.arn]
  health_check_type         = "EC2"
  health_check_grace_period = 300
  default_instance_warmup   = 300

  launch_template {
    id      = aws_launch_template.node["rpc"].id
    version = aws_launch_template.node["rpc"].latest_version
  }

  # What the agent needs at its first boot: the log groups (logs.create_group = false: it never creates
  # one), and EFS reachable and mountable through the access points (rpc mounts the backups).
  depends_on = [aws_cloudwatch_log_group.node, aws_efs_mount_target.chain, aws_efs_file_system_policy.chain]

  # Exists before the first instance, so every rpc node's scale-in waits for node-agent's drain.
  initial_lifecycle_hook {
    name                 = local.rpc_hook_name
    lifecycle_transition = "autoscaling:EC2_INSTANCE_TERMINATING"
    default_result       = "CONTINUE"
    heartbeat_timeout    = local.rpc_hook_heartbeat_secs
  }

  # iam-policy grants CompleteLifecycleAction on this group by name; the tags say whose it is.
  dynamic "tag" {
    for_each = { Name = local.rpc_group_name, Role = "rpc", Environment = var.environment }
    content {
      key                 = tag.key
      value               = tag.value
      propagate_at_launch = false # the launch template tags the instances
    }
  }
}

resource "aws_autoscaling_group" "single" {
  # checkov:skip=CKV2_AWS_15:the bootnode and the sealer have no load balancer; ethstats keeps EC2 checks like rpc (docs/scaling.md), node-agent restarts its server
  for_each                  = toset(["sealer", "bootnode", "ethstats"])
  name                      = "${var.environment}-${each.key}"
  min_size                  = 1
  max_size                  = 1
  vpc_zone_identifier       = local.subnets[each.key]
  target_group_arns         = each.key == "ethstats" ? [aws_lb_target_group.ethstats.arn] : []
  health_check_type         = "EC2"
  health_check_grace_period = 300

  launch_template {
    id      = aws_launch_template.node[each.key].id
    version = aws_launch_template.node[each.key].latest_version
  }

  # The first instances' launch events must find the function that names them (dns.tf); their agents, the
  # log groups (logs.create_group = false) and EFS reachable and mountable through the access points.
  depends_on = [
    aws_cloudwatch_event_target.instance_launched, aws_lambda_permission.instance_launched,
    aws_cloudwatch_log_group.node, aws_efs_mount_target.chain, aws_efs_file_system_policy.chain,
  ]

  dynamic "tag" {
    for_each = { Name = "${var.environment}-${each.key}", Role = each.key, Environment = var.environment }
    content {
      key                 = tag.key
      value               = tag.value
      propagate_at_launch = false # the launch template tags the instances
    }
  }
}
