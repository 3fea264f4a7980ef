# The deploy tooling (`cargo xtask deploy --env production`) and Ansible read these two outputs as
# their inventory (`terraform output -json`); keep their shape.

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
