# production: JSON-RPC open to everyone, the dashboard to the operators only.
region                  = "eu-central-1"
environment             = "production"
vpc_cidr                = "10.20.0.0/16"
certificate_arn         = "arn:aws:acm:eu-central-1:111122223333:certificate/replace-with-yours"
bootnode_enode_id       = "replace-with-128-hex-digits-from-bootnode-writeaddress"
rpc_min_size            = 2
rpc_max_size            = 4
rpc_ingress_cidrs       = ["0.0.0.0/0"]
dashboard_ingress_cidrs = ["203.0.113.0/24"]
backup_retention_days   = 35
deletion_protection     = true

instance_types = {
  sealer   = "t3.small"
  rpc      = "t3.small"
  bootnode = "t3.micro"
  ethstats = "t3.small"
}
