variable "name" {
  type        = string
  description = "Name prefix of the database's resources, e.g. \"ddms-staging\"."
}

variable "environment" {
  type        = string
  description = "Environment (staging, production); tagged on every resource."
}

variable "vpc_id" {
  type        = string
  description = "VPC of the database."
}

variable "subnet_ids" {
  type        = list(string)
  description = "Private subnets for the DB subnet group, in at least two availability zones (RDS refuses fewer)."
}

variable "client_security_group_ids" {
  type        = map(string)
  description = "Security groups allowed to connect (the ddms hosts'), by a name for the rule."
}

variable "engine_version" {
  type        = string
  description = "PostgreSQL major version (the parameter group family follows it)."
  default     = "15"
}

variable "instance_class" {
  type        = string
  description = "RDS instance class."
  default     = "db.t4g.small"
}

variable "allocated_storage_gb" {
  type        = number
  description = "Initial storage in GiB."
  default     = 20
}

variable "max_allocated_storage_gb" {
  type        = number
  description = "Storage autoscaling ceiling in GiB."
  default     = 200
}

variable "database_name" {
  type        = string
  description = "Database ddms uses."
  default     = "ddms"
}

variable "username" {
  type        = string
  description = "Master user: Ansible makes ddms' own role (ddms_app) with it; ddms never connects as it."
  default     = "ddms"
}

variable "backup_retention_days" {
  type        = number
  description = "Days of automated backups (point-in-time recovery); at least 1."
  default     = 7

  validation {
    condition     = var.backup_retention_days >= 1
    error_message = "backups must be on (at least 1 day)."
  }
}

variable "multi_az" {
  type        = bool
  description = "A standby in another availability zone."
  default     = false
}

variable "deletion_protection" {
  type        = bool
  description = "Refuse deletion, and take a final snapshot when it is deleted after all."
  default     = true
}

variable "kms_key_id" {
  type        = string
  description = "KMS key ARN for storage encryption; null uses the account's RDS key."
  default     = null
}

variable "tags" {
  type        = map(string)
  description = "Extra tags for every resource."
  default     = {}
}
