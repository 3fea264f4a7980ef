# `terraform test` with a mocked AWS provider: offline, no account. Every layout the
# environment supports is applied against the mock and its outputs — what `cargo xtask
# provision` turns into the inventory — are checked.

mock_provider "aws" {
  mock_data "aws_subnet" {
    defaults = {
      vpc_id            = "vpc-0123456789abcdef0"
      availability_zone = "eu-central-1a"
    }
  }
  mock_data "aws_vpc" {
    defaults = {
      cidr_block = "10.0.0.0/16"
    }
  }
  mock_data "aws_region" {
    defaults = {
      name = "eu-central-1"
    }
  }
  mock_data "aws_iam_policy_document" {
    defaults = {
      json = "{\"Version\":\"2012-10-17\",\"Statement\":[]}"
    }
  }
  # The provider validates ARNs it is given: mocked ones must look like ARNs.
  mock_resource "aws_iam_policy" {
    defaults = {
      arn = "arn:aws:iam::123456789012:policy/ddms-mock"
    }
  }
  mock_resource "aws_lb" {
    defaults = {
      arn      = "arn:aws:elasticloadbalancing:eu-central-1:123456789012:loadbalancer/net/ddms-mock/0123456789abcdef"
      dns_name = "ddms-mock-0123456789abcdef.elb.eu-central-1.amazonaws.com"
    }
  }
  mock_resource "aws_lb_target_group" {
    defaults = {
      arn = "arn:aws:elasticloadbalancing:eu-central-1:123456789012:targetgroup/ddms-mock/0123456789abcdef"
    }
  }
  mock_resource "aws_db_instance" {
    defaults = {
      master_user_secret = [{ secret_arn = "arn:aws:secretsmanager:eu-central-1:123456789012:secret:rds-mock", kms_key_id = "", secret_status = "active" }]
    }
  }
  mock_data "aws_secretsmanager_secret_version" {
    defaults = {
      secret_string = "{\"username\":\"ddms\",\"password\":\"mock-password\"}"
    }
  }
}

variables {
  admin_cidrs        = ["203.0.113.0/24"]
  mqtt_cidrs         = ["198.51.100.0/24"]
  ssh_key_name       = "ddms-deploy"
  backup_bucket_name = "example-ddms-test-backups"
  hosts = {
    "ddms-t-1" = { subnet_id = "subnet-0000000000000000a" }
    "ddms-t-2" = { subnet_id = "subnet-0000000000000000b" }
  }
  db_host = { subnet_id = "subnet-0000000000000000a" }
  ssh_host_keys = {
    "ddms-t-1"        = { private_key = "mock-private-1", public_key = "ssh-ed25519 AAAAmock1" }
    "ddms-t-2"        = { private_key = "mock-private-2", public_key = "ssh-ed25519 AAAAmock2" }
    "ddms-staging-db" = { private_key = "mock-private-db", public_key = "ssh-ed25519 AAAAmockdb" }
  }
}

run "fleet_with_a_db_host" {
  assert {
    condition     = length(output.ddms_hosts) == 2 && output.ddms_hosts[0].name == "ddms-t-1"
    error_message = "ddms_hosts: ${jsonencode(output.ddms_hosts)}"
  }
  assert {
    condition     = output.service_hosts[0].name == "ddms-staging-db" && output.service_hosts[0].groups == ["db"]
    error_message = "the db host runs PostgreSQL and Mosquitto (group db)"
  }
  assert {
    condition     = output.database.tier == "host" && output.database.address == output.private_addresses["ddms-staging-db"]
    error_message = "the database is the db host's private address"
  }
  assert {
    condition     = output.database_password == null
    error_message = "the host tier's password is the inventory's secret, not Terraform's"
  }
  assert {
    condition     = output.mqtt.address == output.private_addresses["ddms-staging-db"] && output.mqtt.public_address == output.load_balancer.dns_name
    error_message = "ddms reaches the broker privately, devices through the load balancer"
  }
  assert {
    condition     = output.ssh_host_keys["ddms-staging-db"] == "ssh-ed25519 AAAAmockdb" && length(output.ssh_host_keys) == 3
    error_message = "every host's pinned key is an output"
  }
  assert {
    condition     = length(module.load_balancer[0].dns_name) > 0 && length(module.database) == 0
    error_message = "a load balancer, no RDS"
  }
  assert {
    condition     = module.load_balancer[0].dns_name == output.load_balancer.dns_name
    error_message = "load balancer output"
  }
  assert {
    condition     = length(aws_vpc_security_group_ingress_rule.service_from_ddms) == 4
    error_message = "5432 and 8883 from each ddms host"
  }
  assert {
    condition     = !output.single_host && output.backup_bucket.region == "eu-central-1"
    error_message = "outputs"
  }
}

run "fleet_with_rds" {
  variables {
    database_tier       = "rds"
    database_subnet_ids = ["subnet-0000000000000000a", "subnet-0000000000000000b"]
  }

  assert {
    condition     = output.database.tier == "rds" && output.database_password == "mock-password"
    error_message = "the RDS password comes from its Secrets Manager secret"
  }
  assert {
    condition     = output.service_hosts[0].groups == ["mosquitto"]
    error_message = "next to RDS the service host runs only the broker"
  }
  assert {
    condition     = length(aws_vpc_security_group_ingress_rule.service_from_ddms) == 2
    error_message = "only 8883 from each ddms host to the broker host"
  }
  assert {
    condition     = length(module.database[0].security_group_id) > 0 && length(module.load_balancer) == 1
    error_message = "RDS and a load balancer"
  }
}

run "single_host" {
  variables {
    single_host = true
    hosts       = { "ddms-t-1" = { subnet_id = "subnet-0000000000000000a" } }
    db_host     = null
    ssh_host_keys = {
      "ddms-t-1" = { private_key = "mock-private-1", public_key = "ssh-ed25519 AAAAmock1" }
    }
  }

  assert {
    condition     = output.database.tier == "single_host" && output.database.address == "127.0.0.1" && output.mqtt.address == "127.0.0.1"
    error_message = "PostgreSQL and Mosquitto on the host itself"
  }
  assert {
    condition     = output.load_balancer == null && length(output.service_hosts) == 0 && length(module.load_balancer) == 0
    error_message = "no load balancer, no service host"
  }
  assert {
    condition     = output.mqtt.public_address == output.ddms_hosts[0].address
    error_message = "devices reach the host's own broker"
  }
}

run "single_host_refuses_two_hosts" {
  command = plan
  variables {
    single_host = true
  }
  expect_failures = [terraform_data.layout]
}

run "rds_needs_two_subnets" {
  command = plan
  variables {
    database_tier = "rds"
  }
  expect_failures = [terraform_data.layout]
}

run "every_host_needs_a_pinned_key" {
  command = plan
  variables {
    ssh_host_keys = {
      "ddms-t-1" = { private_key = "mock-private-1", public_key = "ssh-ed25519 AAAAmock1" }
    }
  }
  expect_failures = [terraform_data.layout]
}
