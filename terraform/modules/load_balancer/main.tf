locals {
  tags = merge(var.tags, {
    Name        = var.name
    Environment = var.environment
    ManagedBy   = "terraform"
    Application = "ddms"
  })
}

# A network load balancer: TCP passthrough, so nginx keeps terminating TLS with the
# certificate Ansible installs (and the broker with its own), and client addresses reach the
# hosts unchanged (instance targets preserve them) for their security groups and logs.
resource "aws_lb" "this" {
  name                             = var.name
  load_balancer_type               = "network"
  internal                         = false
  subnets                          = var.subnet_ids
  enable_cross_zone_load_balancing = true
  enable_deletion_protection       = var.deletion_protection
  tags                             = local.tags
}

# 443 → nginx on every ddms host. A host is in rotation only while nginx answers /ready over
# HTTPS (the active slot is up and has its database and broker); NLB health checks do not
# verify the certificate.
resource "aws_lb_target_group" "https" {
  name                 = "${var.name}-https"
  port                 = 443
  protocol             = "TCP"
  vpc_id               = var.vpc_id
  target_type          = "instance"
  deregistration_delay = var.deregistration_delay
  tags                 = local.tags

  health_check {
    protocol            = "HTTPS"
    port                = "443"
    path                = "/ready"
    matcher             = "200"
    interval            = 10
    healthy_threshold   = 2
    unhealthy_threshold = 2
  }
}

# 80 → nginx (redirects to HTTPS); healthy by the same /ready check on 443.
resource "aws_lb_target_group" "http" {
  name                 = "${var.name}-http"
  port                 = 80
  protocol             = "TCP"
  vpc_id               = var.vpc_id
  target_type          = "instance"
  deregistration_delay = var.deregistration_delay
  tags                 = local.tags

  health_check {
    protocol            = "HTTPS"
    port                = "443"
    path                = "/ready"
    matcher             = "200"
    interval            = 10
    healthy_threshold   = 2
    unhealthy_threshold = 2
  }
}

# 8883 → the broker (MQTT over TLS, terminated by Mosquitto). Devices keep long connections:
# a long idle timeout is the broker's keepalive's business, not the balancer's.
resource "aws_lb_target_group" "mqtt" {
  count                = var.mqtt ? 1 : 0
  name                 = "${var.name}-mqtt"
  port                 = 8883
  protocol             = "TCP"
  vpc_id               = var.vpc_id
  target_type          = "instance"
  deregistration_delay = var.deregistration_delay
  tags                 = local.tags

  health_check {
    protocol            = "TCP"
    port                = "8883"
    interval            = 10
    healthy_threshold   = 2
    unhealthy_threshold = 2
  }
}

resource "aws_lb_target_group_attachment" "https" {
  for_each         = var.ddms_instance_ids
  target_group_arn = aws_lb_target_group.https.arn
  target_id        = each.value
  port             = 443
}

resource "aws_lb_target_group_attachment" "http" {
  for_each         = var.ddms_instance_ids
  target_group_arn = aws_lb_target_group.http.arn
  target_id        = each.value
  port             = 80
}

resource "aws_lb_target_group_attachment" "mqtt" {
  count            = var.mqtt ? 1 : 0
  target_group_arn = aws_lb_target_group.mqtt[0].arn
  target_id        = var.broker_instance_id
  port             = 8883
}

resource "aws_lb_listener" "https" {
  load_balancer_arn = aws_lb.this.arn
  port              = 443
  protocol          = "TCP"
  tags              = local.tags

  default_action {
    type             = "forward"
    target_group_arn = aws_lb_target_group.https.arn
  }
}

resource "aws_lb_listener" "http" {
  load_balancer_arn = aws_lb.this.arn
  port              = 80
  protocol          = "TCP"
  tags              = local.tags

  default_action {
    type             = "forward"
    target_group_arn = aws_lb_target_group.http.arn
  }
}

resource "aws_lb_listener" "mqtt" {
  count             = var.mqtt ? 1 : 0
  load_balancer_arn = aws_lb.this.arn
  port              = 8883
  protocol          = "TCP"
  tags              = local.tags

  default_action {
    type             = "forward"
    target_group_arn = aws_lb_target_group.mqtt[0].arn
  }
}
