variable "bucket_name" {
  type        = string
  description = "Globally unique S3 bucket name for ddms backups."
}

variable "environment" {
  type        = string
  description = "Environment the bucket belongs to (staging, production); tagged on every resource."
}

variable "prefix" {
  type        = string
  description = "Key prefix ddms writes its backups under; its IAM role may touch nothing else."
  default     = "ddms/"

  validation {
    condition     = can(regex("^[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*/$", var.prefix))
    error_message = "prefix must be a relative key prefix ending in \"/\", e.g. \"ddms/\"."
  }
}

variable "backup_expiration_days" {
  type        = number
  description = "Days after which a backup object under the prefix expires (becomes noncurrent)."
  default     = 90
}

variable "noncurrent_version_expiration_days" {
  type        = number
  description = "Days a noncurrent (overwritten or deleted) version is kept before it is removed."
  default     = 30
}

variable "kms_key_arn" {
  type        = string
  description = "KMS key for server-side encryption (SSE-KMS); null uses SSE-S3 (AES256)."
  default     = null
}

variable "force_destroy" {
  type        = bool
  description = "Allow `terraform destroy` to delete a bucket that still holds backups."
  default     = false
}

variable "role_name" {
  type        = string
  description = "Name of the IAM role (and instance profile) ddms hosts assume to write backups."
}

variable "tags" {
  type        = map(string)
  description = "Extra tags for every resource."
  default     = {}
}
