locals {
  environment = "production"
}

module "backup_bucket" {
  source = "../../modules/backup_bucket"

  bucket_name                        = var.backup_bucket_name
  environment                        = local.environment
  role_name                          = "ddms-${local.environment}-backup"
  backup_expiration_days             = var.backup_expiration_days
  noncurrent_version_expiration_days = 30
  # Production backups survive a `terraform destroy`.
  force_destroy = false
}

module "host" {
  source   = "../../modules/host"
  for_each = var.hosts

  name                 = each.key
  environment          = local.environment
  subnet_id            = each.value.subnet_id
  instance_type        = each.value.instance_type
  ssh_key_name         = var.ssh_key_name
  admin_cidrs          = var.admin_cidrs
  mqtt_cidrs           = var.mqtt_cidrs
  data_volume_size_gb  = var.data_volume_size_gb
  iam_instance_profile = module.backup_bucket.instance_profile_name
}
