# One VPC over length(local.azs) zones. Public subnets hold only the load balancer and the bootnode's
# Elastic IP; the sealer, the rpc nodes, ethstats and EFS sit in private subnets that have no route to the
# internet at all: the AWS APIs node-agent calls are reached through interface endpoints (no NAT gateway).

resource "aws_vpc" "chain" {
  cidr_block           = var.vpc_cidr
  enable_dns_support   = true
  enable_dns_hostnames = true # the interface endpoints' private DNS names and EFS's DNS name need both
  tags                 = merge(local.tags, { Name = local.name })
}

# No rule: nothing may use the VPC's default security group.
resource "aws_default_security_group" "chain" {
  vpc_id = aws_vpc.chain.id
  tags   = merge(local.tags, { Name = "${local.name}-default-unused" })
}

resource "aws_internet_gateway" "chain" {
  vpc_id = aws_vpc.chain.id
  tags   = merge(local.tags, { Name = local.name })
}

resource "aws_subnet" "public" {
  count                   = length(local.azs)
  vpc_id                  = aws_vpc.chain.id
  availability_zone       = local.azs[count.index]
  cidr_block              = cidrsubnet(var.vpc_cidr, 4, count.index)
  map_public_ip_on_launch = false # the bootnode gets its Elastic IP; nothing else here is an instance
  tags                    = merge(local.tags, { Name = "${local.name}-public-${local.azs[count.index]}", Tier = "public" })
}

resource "aws_subnet" "private" {
  count             = length(local.azs)
  vpc_id            = aws_vpc.chain.id
  availability_zone = local.azs[count.index]
  cidr_block        = cidrsubnet(var.vpc_cidr, 4, 8 + count.index)
  tags              = merge(local.tags, { Name = "${local.name}-private-${local.azs[count.index]}", Tier = "private" })
}

resource "aws_route_table" "public" {
  vpc_id = aws_vpc.chain.id
  tags   = merge(local.tags, { Name = "${local.name}-public" })
}

resource "aws_route" "public_internet" {
  route_table_id         = aws_route_table.public.id
  destination_cidr_block = "0.0.0.0/0"
  gateway_id             = aws_internet_gateway.chain.id
}

resource "aws_route_table_association" "public" {
  count          = length(local.azs)
  subnet_id      = aws_subnet.public[count.index].id
  route_table_id = aws_route_table.public.id
}

# Only the VPC's local route: no NAT, no internet.
resource "aws_route_table" "private" {
  vpc_id = aws_vpc.chain.id
  tags   = merge(local.tags, { Name = "${local.name}-private" })
}

resource "aws_route_table_association" "private" {
  count          = length(local.azs)
  subnet_id      = aws_subnet.private[count.index].id
  route_table_id = aws_route_table.private.id
}

# The AWS APIs node-agent calls from a host: Secrets Manager (secrets and rotation), CloudWatch Logs
# (shipping), Auto Scaling (CompleteLifecycleAction on rpc nodes), and the EFS API that efs-utils may ask.
# IMDS and the Amazon DNS resolver need no endpoint.
resource "aws_vpc_endpoint" "interface" {
  for_each            = toset(["secretsmanager", "logs", "autoscaling", "elasticfilesystem"])
  vpc_id              = aws_vpc.chain.id
  service_name        = "com.amazonaws.${local.region}.${each.key}"
  vpc_endpoint_type   = "Interface"
  subnet_ids          = aws_subnet.private[*].id
  security_group_ids  = [aws_security_group.this["endpoints"].id]
  private_dns_enabled = true
  tags                = merge(local.tags, { Name = "${local.name}-${each.key}" })
}

# The bootnode's stable public address: associated with each new bootnode instance by the function in
# dns.tf, which also points bootnode.ZONE at its private address.
resource "aws_eip" "bootnode" {
  # checkov:skip=CKV2_AWS_19:associated at launch with the bootnode group's instance by the address function (dns.tf)
  domain = "vpc"
  tags   = merge(local.tags, { Name = "${local.name}-bootnode" })
}

resource "aws_flow_log" "chain" {
  vpc_id               = aws_vpc.chain.id
  traffic_type         = "REJECT"
  log_destination_type = "cloud-watch-logs"
  log_destination      = aws_cloudwatch_log_group.flow.arn
  iam_role_arn         = aws_iam_role.flow_logs.arn
  tags                 = local.tags
}
