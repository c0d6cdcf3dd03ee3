# The fleet of one environment: every role's instance profile, launch template and group, wired to what
# node-agent reads (tags, user-data config) and does (ports, log groups, secrets, EFS paths).

data "aws_caller_identity" "current" {}
data "aws_partition" "current" {}
data "aws_region" "current" {}

# Exactly the zones asked for: a zone AWS adds later never moves a subnet.
data "aws_availability_zones" "chosen" {
  state = "available"

  filter {
    name   = "zone-name"
    values = [for l in var.az_letters : "${data.aws_region.current.name}${l}"]
  }
}

# The AMI baked with bake/build (named node-agent-*), or var.ami_id.
data "aws_ami" "node_agent" {
  owners      = ["self"]
  most_recent = true

  filter {
    name   = var.ami_id == "" ? "name" : "image-id"
    values = [var.ami_id == "" ? "node-agent-*" : var.ami_id]
  }
}

locals {
  roles = ["sealer", "rpc", "bootnode", "ethstats"]

  # node-agent's [ports] defaults and the health endpoint's port (health.listen: 0.0.0.0:8080 on rpc and
  # ethstats, 127.0.0.1:8080 on sealer and bootnode). tests/deploy checks them against `node-agent check`.
  ports = {
    p2p      = 30303
    http     = 8545
    bootnode = 30301
    ethstats = 3000
    health   = 8080
    nfs      = 2049
    https    = 443
  }

  # Roles that keep their data on EFS, each through its own access point. rpc nodes keep their chain on
  # their own disk ([storage.rpc] kind = "local", the default).
  efs_roles = ["sealer", "bootnode", "ethstats"]
  # Roles that mount the chain backups (/{environment}/backups, through its access point): rpc exports
  # them (backup.role, node-agent's default) and seeds a new node from them (storage.seed_from_backup).
  backup_roles = ["rpc"]
  # Every role that mounts the file system: the security group and the file system policy's principals.
  efs_client_roles = [for r in local.roles : r if contains(concat(local.efs_roles, local.backup_roles), r)]

  # node-agent's templates (resources/config.example.toml), filled in for this environment.
  path_template      = "/{environment}/{role}"
  log_group_template = "/node-agent/{environment}/{role}"
  secret_name_templates = {
    sealer_keystore    = "{environment}/sealer/keystore"
    sealer_password    = "{environment}/sealer/password"
    bootnode_nodekey   = "{environment}/bootnode/nodekey"
    ethstats_ws_secret = "{environment}/ethstats/ws-secret"
  }
  secret_names = { for k, t in local.secret_name_templates : k => replace(t, "{environment}", var.environment) }
  log_groups   = { for r in local.roles : r => replace(replace(local.log_group_template, "{environment}", var.environment), "{role}", r) }
  efs_paths    = { for r in local.efs_roles : r => replace(replace(local.path_template, "{environment}", var.environment), "{role}", r) }

  name           = var.environment
  account_id     = data.aws_caller_identity.current.account_id
  partition      = data.aws_partition.current.partition
  region         = data.aws_region.current.name
  azs            = sort(data.aws_availability_zones.chosen.names)
  rpc_group_name = "${var.environment}-rpc"
  rpc_hook_name  = "${var.environment}-rpc-terminate"

  # "Mount-production-sealer-ThroughItsAccessPoint" -> "MountProductionSealerThroughItsAccessPoint", as
  # node-agent writes the file system policy's Sids.
  environment_title = join("", [for w in split("-", var.environment) : title(w)])

  tags = {
    Environment = var.environment
    ManagedBy   = "terraform/node-agent"
  }
}
