# staging: smaller, open to the team only, easy to tear down.
region                  = "eu-central-1"
environment             = "staging"
vpc_cidr                = "10.21.0.0/16"
certificate_arn         = "arn:aws:acm:eu-central-1:111122223333:certificate/replace-with-yours"
bootnode_enode_id       = "replace-with-128-hex-digits-from-bootnode-writeaddress"
rpc_min_size            = 2
rpc_max_size            = 2
rpc_ingress_cidrs       = ["203.0.113.0/24"]
dashboard_ingress_cidrs = ["203.0.113.0/24"]
backup_retention_days   = 7
deletion_protection     = false

instance_types = {
  sealer   = "t3.small"
  rpc      = "t3.small"
  bootnode = "t3.micro"
  ethstats = "t3.small"
}
