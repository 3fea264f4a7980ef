# `terraform test` with a mocked AWS provider (offline): what the load balancer forwards and
# how it decides a host is healthy.

mock_provider "aws" {
  mock_resource "aws_lb" {
    defaults = {
      arn = "arn:aws:elasticloadbalancing:eu-central-1:123456789012:loadbalancer/net/ddms-mock/0123456789abcdef"
    }
  }
  mock_resource "aws_lb_target_group" {
    defaults = {
      arn = "arn:aws:elasticloadbalancing:eu-central-1:123456789012:targetgroup/ddms-mock/0123456789abcdef"
    }
  }
}

variables {
  name               = "ddms-test"
  environment        = "test"
  vpc_id             = "vpc-0123456789abcdef0"
  subnet_ids         = ["subnet-0000000000000000a", "subnet-0000000000000000b"]
  ddms_instance_ids  = { "ddms-1" = "i-0000000000000000a", "ddms-2" = "i-0000000000000000b" }
  mqtt               = true
  broker_instance_id = "i-0000000000000000c"
}

run "https_health_checked_on_ready_and_mqtt_forwarded" {
  assert {
    condition     = aws_lb.this.load_balancer_type == "network" && !aws_lb.this.internal
    error_message = "a public network load balancer"
  }
  assert {
    condition = alltrue([for tg in [aws_lb_target_group.https, aws_lb_target_group.http] :
      tg.health_check[0].protocol == "HTTPS" && tg.health_check[0].path == "/ready" && tg.health_check[0].port == "443"
    ])
    error_message = "web targets are healthy only while nginx answers /ready over HTTPS"
  }
  assert {
    condition     = aws_lb_listener.https.port == 443 && aws_lb_listener.https.protocol == "TCP"
    error_message = "443 is passed through (nginx terminates TLS)"
  }
  assert {
    condition     = length(aws_lb_target_group_attachment.https) == 2 && length(aws_lb_target_group_attachment.http) == 2
    error_message = "every ddms host is a target"
  }
  assert {
    condition     = aws_lb_listener.mqtt[0].port == 8883 && aws_lb_target_group_attachment.mqtt[0].target_id == "i-0000000000000000c"
    error_message = "8883 goes to the broker (TLS terminated by Mosquitto)"
  }
}

run "no_mqtt_listener_without_a_broker" {
  command = plan
  variables {
    mqtt               = false
    broker_instance_id = null
  }
  assert {
    condition     = length(aws_lb_listener.mqtt) == 0
    error_message = "no 8883 listener"
  }
}

run "name_fits_target_group_names" {
  command = plan
  variables {
    name = "a-name-that-is-far-too-long-for-aws"
  }
  expect_failures = [var.name]
}
