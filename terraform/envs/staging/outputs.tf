# The deploy tooling (`cargo xtask deploy --env staging`) and Ansible read these outputs
# (`terraform output -json`); `cargo xtask provision` turns them into a complete inventory.
# Keep their shape.

output "ddms_hosts" {
  description = "Inventory: one { name, address, ssh_user, ssh_port } per host, in name order."
  value = [for name, host in module.host : {
    name     = name
    address  = host.address
    ssh_user = host.ssh_user
    ssh_port = host.ssh_port
  }]
}

output "backup_bucket" {
  description = "Where ddms writes its backups: { name, region }."
  value = {
    name   = module.backup_bucket.bucket_name
    region = module.backup_bucket.region
  }
}

output "single_host" {
  description = "Whether PostgreSQL and Mosquitto run on the one ddms host."
  value       = var.single_host
}

output "service_hosts" {
  description = "Hosts that serve the ddms hosts: { name, address, ssh_user, ssh_port, groups } (Ansible groups: db = PostgreSQL and Mosquitto, mosquitto = the broker alone)."
  value = [for name, host in module.db_host : {
    name     = name
    address  = host.address
    ssh_user = host.ssh_user
    ssh_port = host.ssh_port
    groups   = local.rds ? ["mosquitto"] : ["db"]
  }]
}

output "private_addresses" {
  description = "Private (VPC) address of every host by name: what the hosts use among themselves."
  value = merge(
    { for name, host in module.host : name => host.private_ip },
    { for name, host in module.db_host : name => host.private_ip },
  )
}

output "ssh_host_keys" {
  description = "Pinned SSH host key (public) of every host by name, for known_hosts."
  value = merge(
    { for name, host in module.host : name => host.ssh_host_public_key },
    { for name, host in module.db_host : name => host.ssh_host_public_key },
  )
}

output "database" {
  description = "The database: { tier = host | rds | single_host, address, port, name, username }."
  value = {
    tier     = var.single_host ? "single_host" : var.database_tier
    address  = var.single_host ? "127.0.0.1" : local.rds ? module.database[0].address : module.db_host[local.service_host_name].private_ip
    port     = local.rds ? module.database[0].port : 5432
    name     = local.rds ? module.database[0].database_name : "ddms"
    username = local.rds ? module.database[0].username : "ddms"
  }
}

output "database_password" {
  description = "RDS's generated password (database_tier = \"rds\"); null otherwise (the inventory's own secret)."
  value       = local.rds ? module.database[0].password : null
  sensitive   = true
}

output "mqtt" {
  description = "The broker: { address (for the ddms hosts), port, public_address (for devices) }."
  value = {
    address        = var.single_host ? "127.0.0.1" : module.db_host[local.service_host_name].private_ip
    port           = 8883
    public_address = var.single_host ? values(module.host)[0].address : module.load_balancer[0].dns_name
  }
}

output "load_balancer" {
  description = "The load balancer in front of the ddms hosts: { dns_name, zone_id }; null in single-host mode."
  value = var.single_host ? null : {
    dns_name = module.load_balancer[0].dns_name
    zone_id  = module.load_balancer[0].zone_id
  }
}
