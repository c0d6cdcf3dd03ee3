variable "environment" {
  description = "The Environment tag: names the secrets, the EFS directories and the log groups (1-32 lowercase letters, digits, -)."
  type        = string

  validation {
    condition     = can(regex("^[a-z0-9-]{1,32}$", var.environment))
    error_message = "environment: 1-32 lowercase letters, digits and -, as node-agent's Environment tag."
  }
}

variable "vpc_cidr" {
  description = "The VPC's address range; split into one public and one private /20 per availability zone."
  type        = string
  default     = "10.20.0.0/16"
}

variable "az_letters" {
  description = "The availability zones (letters of the region's zones) to spread the subnets, EFS mount targets and rpc nodes over: at least 2, at most 8."
  type        = list(string)
  default     = ["a", "b"]

  validation {
    condition     = length(var.az_letters) >= 2 && length(var.az_letters) <= 8
    error_message = "az_letters: 2 to 8 zones (the load balancer needs two)."
  }
}

variable "ami_id" {
  description = "The AMI baked with bake/build. Empty: the newest AMI of this account named node-agent-*."
  type        = string
  default     = ""
}

variable "instance_types" {
  description = "Instance type per role."
  type        = map(string)
  default = {
    sealer   = "t3.small"
    rpc      = "t3.small"
    bootnode = "t3.micro"
    ethstats = "t3.small"
  }
}

variable "root_volume_gib" {
  description = "Root volume (gp3, encrypted) per role. rpc nodes keep their chain here ([storage.rpc] kind = \"local\")."
  type        = map(number)
  default = {
    sealer   = 16
    rpc      = 50
    bootnode = 8
    ethstats = 16
  }
}

variable "rpc_min_size" {
  description = "Fewest rpc nodes. Keep at least 2: an ALB with no healthy target routes to all of them (docs/scaling.md)."
  type        = number
  default     = 2
}

variable "rpc_max_size" {
  description = "Most rpc nodes."
  type        = number
  default     = 4
}

variable "certificate_arn" {
  description = "ACM certificate for the load balancer's HTTPS listeners (JSON-RPC on 443, the ethstats dashboard on 3000)."
  type        = string
}

variable "rpc_ingress_cidrs" {
  description = "Who may call JSON-RPC through the load balancer (443)."
  type        = list(string)
  default     = ["0.0.0.0/0"]
}

variable "dashboard_ingress_cidrs" {
  description = "Who may open the ethstats dashboard through the load balancer (3000). Empty: nobody from outside."
  type        = list(string)
  default     = []
}

variable "bootnode_enode_id" {
  description = "The bootnode's node id (128 hex digits): `bootnode -nodekey KEY -writeaddress` of the key stored in ENV/bootnode/nodekey."
  type        = string

  validation {
    condition     = can(regex("^[0-9a-f]{128}$", var.bootnode_enode_id))
    error_message = "bootnode_enode_id: 128 lowercase hex digits (bootnode -writeaddress)."
  }
}

variable "private_zone_name" {
  description = "Private Route 53 zone of the fleet: bootnode.ZONE and ethstats.ZONE follow their instances."
  type        = string
  default     = "chain.internal"
}

variable "log_retention_days" {
  description = "CloudWatch Logs retention: written into node-agent's [logs] retention_days too, so the agent never changes it."
  type        = number
  default     = 30
}

variable "drain_secs" {
  description = "node-agent's health.drain_secs on rpc nodes, and the target group's deregistration delay (docs/scaling.md: drain_secs >= the delay)."
  type        = number
  default     = 30
}

variable "stop_secs" {
  description = "node-agent's timeouts.stop_secs (its default): the lifecycle hook waits drain_secs + stop_secs + a 30 s margin."
  type        = number
  default     = 120
}

variable "backup_schedule" {
  description = "AWS Backup schedule of the EFS file system (cron, UTC)."
  type        = string
  default     = "cron(0 3 * * ? *)"
}

variable "backup_retention_days" {
  description = "Days AWS Backup keeps each recovery point of the EFS file system, and so each copy of the chain backups in /{environment}/backups: their only retention (node-agent keeps every segment, a restore needs all of them)."
  type        = number
  default     = 35
}

variable "deletion_protection" {
  description = "Protect the load balancer from deletion (production: true)."
  type        = bool
  default     = true
}

variable "alarm_topic_arn" {
  description = "The SNS topic every alarm notifies (it must let cloudwatch.amazonaws.com publish, and its key let CloudWatch use it). Empty: the module makes one, encrypted with the environment's key (output alarm_topic_arn)."
  type        = string
  default     = ""
}

variable "metrics_namespace" {
  description = "node-agent's metrics.namespace: the CloudWatch namespace of its EMF metrics, which the alarms watch."
  type        = string
  default     = "NodeAgent"
}

variable "clique_period_secs" {
  description = "The chain's Clique period (the genesis' config.clique.period). The sealer-stalled alarm fires on a head older than 6 periods, node-agent's own stall limit (health.max_head_age_secs = 0)."
  type        = number
  default     = 5
}

variable "rpc_unhealthy_minutes" {
  description = "Minutes an rpc node may be unhealthy (node-agent's Healthy = 0) before the rpc-unhealthy alarm fires."
  type        = number
  default     = 5
}

variable "secret_rotation_days" {
  description = "The secrets' rotation policy: the secret-too-old alarm fires on a secret held longer than this plus a day. Nothing here rotates them (README: Secrets)."
  type        = number
  default     = 90
}

variable "backup_interval_secs" {
  description = "node-agent's backup.interval_secs (its default; the module does not write it into the config): the backup-too-old alarm fires on a newest segment older than twice this."
  type        = number
  default     = 3600
}
