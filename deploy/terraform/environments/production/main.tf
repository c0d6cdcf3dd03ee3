# One environment of the chain. staging/ and production/ hold the same main.tf and variables.tf (tests/deploy
# checks it); only terraform.tfvars differs. State stays local until you move it (README: "State").

terraform {
  required_version = ">= 1.5"

  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = ">= 5.40, < 7.0"
    }
    archive = {
      source  = "hashicorp/archive"
      version = ">= 2.4, < 3.0"
    }
  }
}

provider "aws" {
  region = var.region

  default_tags {
    tags = {
      Project = "node-agent-chain"
    }
  }
}

module "fleet" {
  source = "../../modules/node-agent"

  environment             = var.environment
  vpc_cidr                = var.vpc_cidr
  ami_id                  = var.ami_id
  instance_types          = var.instance_types
  rpc_min_size            = var.rpc_min_size
  rpc_max_size            = var.rpc_max_size
  certificate_arn         = var.certificate_arn
  rpc_ingress_cidrs       = var.rpc_ingress_cidrs
  dashboard_ingress_cidrs = var.dashboard_ingress_cidrs
  bootnode_enode_id       = var.bootnode_enode_id
  backup_retention_days   = var.backup_retention_days
  deletion_protection     = var.deletion_protection
  alarm_topic_arn         = var.alarm_topic_arn
}

output "rpc_endpoint" {
  value = module.fleet.rpc_endpoint
}

output "bootnode_enode" {
  value = module.fleet.bootnode_enode
}

output "secret_arns" {
  value = module.fleet.secret_arns
}

output "efs_file_system_id" {
  value = module.fleet.efs_file_system_id
}

output "alarm_topic_arn" {
  value = module.fleet.alarm_topic_arn
}
