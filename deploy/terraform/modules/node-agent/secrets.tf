# The secrets node-agent reads ([secrets.names]), without values: a value in Terraform would be in its state.
# Put them by hand or from a rotation function: deploy/terraform/README.md, "Secrets".

resource "aws_secretsmanager_secret" "node" {
  # checkov:skip=CKV2_AWS_57:a Clique signer key cannot be rotated by a function alone (the chain's signer set changes by vote); node-agent picks up values put by hand within secrets.rotation_interval_secs
  for_each                = local.secret_names
  name                    = each.value
  description             = "node-agent ${each.key} of ${var.environment}; the value is put outside Terraform"
  kms_key_id              = aws_kms_key.chain.arn
  recovery_window_in_days = 30
  tags                    = local.tags
}
