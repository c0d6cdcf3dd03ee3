variable "region" {
  description = "AWS region of the environment."
  type        = string
}

variable "environment" {
  description = "The Environment tag (staging, production)."
  type        = string
}

variable "vpc_cidr" {
  description = "The VPC's range; give each environment its own, so they can be peered later."
  type        = string
}

variable "ami_id" {
  description = "The AMI from bake/build. Empty: the newest node-agent-* AMI of the account."
  type        = string
  default     = ""
}

variable "instance_types" {
  description = "Instance type per role (sealer, rpc, bootnode, ethstats)."
  type        = map(string)
}

variable "rpc_min_size" {
  description = "Fewest rpc nodes (at least 2 behind an ALB)."
  type        = number
}

variable "rpc_max_size" {
  description = "Most rpc nodes."
  type        = number
}

variable "certificate_arn" {
  description = "ACM certificate (in var.region) for the load balancer."
  type        = string
}

variable "rpc_ingress_cidrs" {
  description = "Who may call JSON-RPC."
  type        = list(string)
}

variable "dashboard_ingress_cidrs" {
  description = "Who may open the ethstats dashboard."
  type        = list(string)
}

variable "bootnode_enode_id" {
  description = "The bootnode's node id (bootnode -nodekey KEY -writeaddress)."
  type        = string
}

variable "backup_retention_days" {
  description = "Days AWS Backup keeps each EFS recovery point: the retention of the chain backups' copies (node-agent keeps every segment)."
  type        = number
}

variable "deletion_protection" {
  description = "Protect the load balancer from deletion."
  type        = bool
}

variable "alarm_topic_arn" {
  description = "The SNS topic the alarms notify. Empty: the module makes one (output alarm_topic_arn: subscribe to it)."
  type        = string
  default     = ""
}
