locals {
  environment = "staging"

  # Outside single-host mode one more host serves the ddms hosts: PostgreSQL and Mosquitto
  # through the same Ansible roles as on premises (database_tier = "host"), or Mosquitto alone
  # next to RDS (database_tier = "rds").
  service_host_name = "ddms-${local.environment}-db"
  service_hosts     = var.single_host ? {} : { (local.service_host_name) = var.db_host }
  rds               = !var.single_host && var.database_tier == "rds"

  # Every host that needs an SSH host key (`cargo xtask provision` reads this with
  # `terraform console` before the first apply and generates the missing keys).
  host_names = concat(sort(keys(var.hosts)), keys(local.service_hosts))

  first_subnet_id = values(var.hosts)[0].subnet_id
}

data "aws_subnet" "first" {
  id = local.first_subnet_id
}

data "aws_vpc" "this" {
  id = data.aws_subnet.first.vpc_id
}

# The layout's rules, checked before anything is created.
resource "terraform_data" "layout" {
  input = { single_host = var.single_host, database_tier = var.database_tier }

  lifecycle {
    precondition {
      condition     = !var.single_host || length(var.hosts) == 1
      error_message = "single_host = true needs exactly one entry in hosts."
    }
    precondition {
      condition     = !var.single_host || var.database_tier == "host"
      error_message = "single_host = true runs PostgreSQL on the host: database_tier must be \"host\"."
    }
    precondition {
      condition     = var.single_host || var.db_host != null
      error_message = "db_host is required unless single_host = true (it runs the broker, and PostgreSQL in the host tier)."
    }
    precondition {
      condition     = var.database_tier != "rds" || length(var.database_subnet_ids) >= 2
      error_message = "database_tier = \"rds\" needs database_subnet_ids in two availability zones."
    }
    precondition {
      condition     = alltrue([for name in local.host_names : contains(keys(var.ssh_host_keys), name)])
      error_message = "ssh_host_keys needs a key for every host (cargo xtask provision generates them)."
    }
  }
}

module "backup_bucket" {
  source = "../../modules/backup_bucket"

  bucket_name                        = var.backup_bucket_name
  environment                        = local.environment
  role_name                          = "ddms-${local.environment}-backup"
  backup_expiration_days             = var.backup_expiration_days
  noncurrent_version_expiration_days = 7
  # Staging data is disposable.
  force_destroy = true
}

module "host" {
  source   = "../../modules/host"
  for_each = var.hosts

  name          = each.key
  environment   = local.environment
  subnet_id     = each.value.subnet_id
  instance_type = each.value.instance_type
  ssh_key_name  = var.ssh_key_name
  admin_cidrs   = var.admin_cidrs
  # Devices reach the broker on the host itself only in single-host mode.
  mqtt_cidrs           = var.single_host ? var.mqtt_cidrs : []
  data_volume_size_gb  = var.data_volume_size_gb
  iam_instance_profile = module.backup_bucket.instance_profile_name
  ssh_host_key         = lookup(var.ssh_host_keys, each.key, null)
}

module "db_host" {
  source   = "../../modules/host"
  for_each = local.service_hosts

  name                = each.key
  environment         = local.environment
  subnet_id           = each.value.subnet_id
  instance_type       = each.value.instance_type
  ssh_key_name        = var.ssh_key_name
  admin_cidrs         = var.admin_cidrs
  mqtt_cidrs          = var.mqtt_cidrs
  data_volume_size_gb = each.value.data_volume_size_gb
  web                 = false
  ssh_host_key        = lookup(var.ssh_host_keys, each.key, null)
}

# The ddms hosts reach the service host's PostgreSQL (host tier) and broker; the load
# balancer's health checks reach the broker from inside the VPC.
resource "aws_vpc_security_group_ingress_rule" "service_from_ddms" {
  for_each = {
    for pair in setproduct(keys(local.service_hosts), keys(var.hosts), local.rds ? [8883] : [5432, 8883]) :
    "${pair[0]}:${pair[1]}:${pair[2]}" => { service = pair[0], client = pair[1], port = pair[2] }
  }
  security_group_id            = module.db_host[each.value.service].security_group_id
  description                  = "${each.value.port == 5432 ? "PostgreSQL" : "MQTT/TLS"} from ${each.value.client}"
  ip_protocol                  = "tcp"
  from_port                    = each.value.port
  to_port                      = each.value.port
  referenced_security_group_id = module.host[each.value.client].security_group_id
}

resource "aws_vpc_security_group_ingress_rule" "broker_health_checks" {
  for_each          = local.service_hosts
  security_group_id = module.db_host[each.key].security_group_id
  description       = "MQTT/TLS from the VPC (load balancer health checks)"
  ip_protocol       = "tcp"
  from_port         = 8883
  to_port           = 8883
  cidr_ipv4         = data.aws_vpc.this.cidr_block
}

module "database" {
  source = "../../modules/database"
  count  = local.rds ? 1 : 0

  name                      = "ddms-${local.environment}"
  environment               = local.environment
  vpc_id                    = data.aws_subnet.first.vpc_id
  subnet_ids                = var.database_subnet_ids
  client_security_group_ids = { for name, host in module.host : name => host.security_group_id }
  instance_class            = var.database_instance_class
  backup_retention_days     = 3
  # Staging can be torn down without a final snapshot.
  deletion_protection = false
}

module "load_balancer" {
  source = "../../modules/load_balancer"
  count  = var.single_host ? 0 : 1

  name               = "ddms-${local.environment}"
  environment        = local.environment
  vpc_id             = data.aws_subnet.first.vpc_id
  subnet_ids         = coalesce(var.load_balancer_subnet_ids, distinct([for host in var.hosts : host.subnet_id]))
  ddms_instance_ids  = { for name, host in module.host : name => host.instance_id }
  mqtt               = true
  broker_instance_id = module.db_host[local.service_host_name].instance_id
}
