# Security groups open exactly the ports `node-agent check` lists per role, and only between the roles
# that talk: tests/deploy/test_consistency.py compares local.ingress with `check --json` and `iam-policy`.
# Every egress rule is the mirror of one ingress rule between two groups here: nothing leaves the VPC.

variable "bootnode_ingress_cidrs" {
  description = "Peers outside the VPC that may use the bootnode's discovery port (30301/udp) on its Elastic IP. Empty: the fleet only."
  type        = list(string)
  default     = []
}

locals {
  security_groups = {
    alb       = "the load balancer: JSON-RPC (443 -> rpc 8545) and the ethstats dashboard (3000)"
    sealer    = "the sealer: geth p2p with the other nodes"
    rpc       = "rpc nodes: geth p2p, JSON-RPC and the health endpoint from the load balancer"
    bootnode  = "the bootnode: discovery (udp)"
    ethstats  = "the ethstats dashboard: node reports, the dashboard and the health endpoint"
    efs       = "EFS mount targets: NFS from the roles that keep data or the chain backups on EFS"
    endpoints = "interface endpoints: HTTPS from every node"
  }

  # Between groups: traffic from `peer` to `sg` on protocol/port.
  ingress = [
    { sg = "rpc", peer = "alb", protocol = "tcp", port = local.ports.http, why = "JSON-RPC from the load balancer only" },
    { sg = "rpc", peer = "alb", protocol = "tcp", port = local.ports.health, why = "node-agent GET /ready from the load balancer only" },
    { sg = "ethstats", peer = "alb", protocol = "tcp", port = local.ports.ethstats, why = "the dashboard through the load balancer" },
    { sg = "ethstats", peer = "alb", protocol = "tcp", port = local.ports.health, why = "node-agent GET /ready from the load balancer only" },
    { sg = "ethstats", peer = "sealer", protocol = "tcp", port = local.ports.ethstats, why = "geth --ethstats reports" },
    { sg = "ethstats", peer = "rpc", protocol = "tcp", port = local.ports.ethstats, why = "geth --ethstats reports" },
    { sg = "sealer", peer = "rpc", protocol = "tcp", port = local.ports.p2p, why = "geth p2p" },
    { sg = "sealer", peer = "rpc", protocol = "udp", port = local.ports.p2p, why = "geth discovery" },
    { sg = "sealer", peer = "bootnode", protocol = "udp", port = local.ports.p2p, why = "discovery from the bootnode" },
    { sg = "rpc", peer = "sealer", protocol = "tcp", port = local.ports.p2p, why = "geth p2p" },
    { sg = "rpc", peer = "sealer", protocol = "udp", port = local.ports.p2p, why = "geth discovery" },
    { sg = "rpc", peer = "rpc", protocol = "tcp", port = local.ports.p2p, why = "geth p2p" },
    { sg = "rpc", peer = "rpc", protocol = "udp", port = local.ports.p2p, why = "geth discovery" },
    { sg = "rpc", peer = "bootnode", protocol = "udp", port = local.ports.p2p, why = "discovery from the bootnode" },
    { sg = "bootnode", peer = "sealer", protocol = "udp", port = local.ports.bootnode, why = "discovery" },
    { sg = "bootnode", peer = "rpc", protocol = "udp", port = local.ports.bootnode, why = "discovery" },
    { sg = "efs", peer = "sealer", protocol = "tcp", port = local.ports.nfs, why = "NFS (efs-utils TLS)" },
    { sg = "efs", peer = "bootnode", protocol = "tcp", port = local.ports.nfs, why = "NFS (efs-utils TLS)" },
    { sg = "efs", peer = "ethstats", protocol = "tcp", port = local.ports.nfs, why = "NFS (efs-utils TLS)" },
    { sg = "efs", peer = "rpc", protocol = "tcp", port = local.ports.nfs, why = "NFS (efs-utils TLS): the chain backups" },
    { sg = "endpoints", peer = "sealer", protocol = "tcp", port = local.ports.https, why = "AWS APIs" },
    { sg = "endpoints", peer = "rpc", protocol = "tcp", port = local.ports.https, why = "AWS APIs" },
    { sg = "endpoints", peer = "bootnode", protocol = "tcp", port = local.ports.https, why = "AWS APIs" },
    { sg = "endpoints", peer = "ethstats", protocol = "tcp", port = local.ports.https, why = "AWS APIs" },
  ]

  # From outside the VPC: each to every CIDR of its variable.
  ingress_cidr = [
    { sg = "alb", cidrs = var.rpc_ingress_cidrs, protocol = "tcp", port = local.ports.https, why = "JSON-RPC over HTTPS" },
    { sg = "alb", cidrs = var.dashboard_ingress_cidrs, protocol = "tcp", port = local.ports.ethstats, why = "the ethstats dashboard over HTTPS" },
    { sg = "bootnode", cidrs = var.bootnode_ingress_cidrs, protocol = "udp", port = local.ports.bootnode, why = "discovery from peers outside the VPC" },
  ]

  ingress_by_key = { for r in local.ingress : "${r.sg}-from-${r.peer}-${r.protocol}-${r.port}" => r }
  ingress_cidr_by_key = merge([
    for r in local.ingress_cidr : { for c in r.cidrs : "${r.sg}-from-${c}-${r.protocol}-${r.port}" => merge(r, { cidr = c }) }
  ]...)
}

resource "aws_security_group" "this" {
  # checkov:skip=CKV2_AWS_5:the role groups are attached by aws_launch_template.node[role] (network_interfaces), a for_each reference checkov's graph does not follow
  for_each    = local.security_groups
  name        = "${local.name}-${each.key}"
  description = each.value
  vpc_id      = aws_vpc.chain.id
  tags        = merge(local.tags, { Name = "${local.name}-${each.key}" })

  lifecycle {
    create_before_destroy = true
  }
}

resource "aws_vpc_security_group_ingress_rule" "between" {
  for_each                     = local.ingress_by_key
  security_group_id            = aws_security_group.this[each.value.sg].id
  referenced_security_group_id = aws_security_group.this[each.value.peer].id
  ip_protocol                  = each.value.protocol
  from_port                    = each.value.port
  to_port                      = each.value.port
  description                  = "${each.value.why} (from ${each.value.peer})"
}

resource "aws_vpc_security_group_egress_rule" "between" {
  for_each                     = local.ingress_by_key
  security_group_id            = aws_security_group.this[each.value.peer].id
  referenced_security_group_id = aws_security_group.this[each.value.sg].id
  ip_protocol                  = each.value.protocol
  from_port                    = each.value.port
  to_port                      = each.value.port
  description                  = "${each.value.why} (to ${each.value.sg})"
}

resource "aws_vpc_security_group_ingress_rule" "cidr" {
  for_each          = local.ingress_cidr_by_key
  security_group_id = aws_security_group.this[each.value.sg].id
  cidr_ipv4         = each.value.cidr
  ip_protocol       = each.value.protocol
  from_port         = each.value.port
  to_port           = each.value.port
  description       = each.value.why
}
