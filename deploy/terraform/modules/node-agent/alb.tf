# The public load balancer: JSON-RPC on 443 to the rpc nodes' 8545, the ethstats dashboard on 3000; each
# target group checks node-agent's GET /ready on the health port (docs/scaling.md, "The health check").

resource "aws_lb" "public" {
  # checkov:skip=CKV_AWS_91:access logs need an S3 bucket with its own policy and lifecycle; add one when JSON-RPC requests must be audited
  # checkov:skip=CKV2_AWS_28:a WAF web ACL costs about $5/month plus per-rule and per-request fees and has no JSON-RPC rule set; attach one with aws_wafv2_web_acl_association when needed
  # checkov:skip=CKV2_AWS_76:no WAF web ACL is attached (CKV2_AWS_28 above), so there is no Log4j rule to add to one
  # checkov:skip=CKV_AWS_150:deletion protection is var.deletion_protection: true by default and in production, false in staging so that it can be torn down
  name                       = "${var.environment}-chain"
  internal                   = false
  load_balancer_type         = "application"
  security_groups            = [aws_security_group.this["alb"].id]
  subnets                    = aws_subnet.public[*].id
  drop_invalid_header_fields = true
  enable_deletion_protection = var.deletion_protection
  tags                       = local.tags
}

resource "aws_lb_target_group" "rpc" {
  # checkov:skip=CKV_AWS_378:geth serves JSON-RPC over plain HTTP inside the VPC; TLS ends at the load balancer
  name                 = "${var.environment}-rpc"
  port                 = local.ports.http
  protocol             = "HTTP"
  vpc_id               = aws_vpc.chain.id
  target_type          = "instance"
  deregistration_delay = var.drain_secs # node-agent keeps geth serving drain_secs after /ready fails
  tags                 = merge(local.tags, { Role = "rpc" })

  health_check {
    protocol            = "HTTP"
    port                = tostring(local.ports.health)
    path                = "/ready"
    matcher             = "200"
    interval            = 5
    timeout             = 2
    healthy_threshold   = 2
    unhealthy_threshold = 2
  }
}

resource "aws_lb_target_group" "ethstats" {
  # checkov:skip=CKV_AWS_378:the ethstats server serves plain HTTP inside the VPC; TLS ends at the load balancer
  name                 = "${var.environment}-ethstats"
  port                 = local.ports.ethstats
  protocol             = "HTTP"
  vpc_id               = aws_vpc.chain.id
  target_type          = "instance"
  deregistration_delay = var.drain_secs
  tags                 = merge(local.tags, { Role = "ethstats" })

  health_check {
    protocol            = "HTTP"
    port                = tostring(local.ports.health)
    path                = "/ready"
    matcher             = "200"
    interval            = 5
    timeout             = 2
    healthy_threshold   = 2
    unhealthy_threshold = 2
  }
}

resource "aws_lb_listener" "rpc" {
  load_balancer_arn = aws_lb.public.arn
  port              = local.ports.https
  protocol          = "HTTPS"
  ssl_policy        = "ELBSecurityPolicy-TLS13-1-2-2021-06"
  certificate_arn   = var.certificate_arn

  default_action {
    type             = "forward"
    target_group_arn = aws_lb_target_group.rpc.arn
  }
}

resource "aws_lb_listener" "ethstats" {
  load_balancer_arn = aws_lb.public.arn
  port              = local.ports.ethstats
  protocol          = "HTTPS"
  ssl_policy        = "ELBSecurityPolicy-TLS13-1-2-2021-06"
  certificate_arn   = var.certificate_arn

  default_action {
    type             = "forward"
    target_group_arn = aws_lb_target_group.ethstats.arn
  }
}
