output "rpc_endpoint" {
  description = "JSON-RPC: https://DNS/ (point your domain's record for the certificate at it)."
  value       = aws_lb.public.dns_name
}

output "bootnode_public_ip" {
  description = "The bootnode's Elastic IP (peers outside the VPC: enode://ID@IP:30301)."
  value       = aws_eip.bootnode.public_ip
}

output "bootnode_enode" {
  description = "The enode URL every node's config names (chain.bootnodes)."
  value       = "enode://${var.bootnode_enode_id}@${local.followed.bootnode}:${local.ports.bootnode}"
}

output "efs_file_system_id" {
  value = aws_efs_file_system.chain.id
}

output "efs_access_point_ids" {
  value = { for r, ap in aws_efs_access_point.role : r => ap.id }
}

output "secret_arns" {
  description = "The secrets to put values into (deploy/terraform/README.md, Secrets)."
  value       = { for k, s in aws_secretsmanager_secret.node : s.name => s.arn }
}

output "kms_key_arn" {
  value = aws_kms_key.chain.arn
}

output "log_groups" {
  value = { for r, g in aws_cloudwatch_log_group.node : r => g.name }
}

output "alarm_topic_arn" {
  description = "The SNS topic the alarms notify: subscribe to it (deploy/terraform/README.md, Alarms)."
  value       = local.alarm_topic_arn
}
