variable "region" {
  type        = string
  description = "AWS region of the environment."
  default     = "eu-central-1"
}

variable "hosts" {
  type = map(object({
    subnet_id     = string
    instance_type = optional(string, "t3.small")
  }))
  description = "ddms hosts by name; each is one VM with its own data volume. Deploys go host by host in name order."
}

variable "admin_cidrs" {
  type        = list(string)
  description = "CIDR blocks allowed to SSH into the hosts (the deploy runners and admins)."
}

variable "mqtt_cidrs" {
  type        = list(string)
  description = "CIDR blocks of devices allowed to reach MQTT over TLS (8883); empty keeps it closed."
  default     = []
}

variable "ssh_key_name" {
  type        = string
  description = "EC2 key pair whose public key the deploy key (DEPLOY_SSH_KEY) matches."
}

variable "data_volume_size_gb" {
  type        = number
  description = "Size of each host's data volume (/var/lib/ddms) in GiB."
  default     = 20
}

variable "backup_bucket_name" {
  type        = string
  description = "Globally unique name of the environment's backup bucket."
}

variable "backup_expiration_days" {
  type        = number
  description = "Days a backup is kept before it expires."
  default     = 14
}
