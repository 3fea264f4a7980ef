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

variable "single_host" {
  type        = bool
  description = "A small site: PostgreSQL and Mosquitto on the one ddms host (exactly one entry in hosts), no load balancer, no db_host."
  default     = false
}

variable "database_tier" {
  type        = string
  description = "\"host\": PostgreSQL on db_host through the Ansible postgresql role (the default); \"rds\": an RDS instance (modules/database), db_host runs only Mosquitto."
  default     = "host"

  validation {
    condition     = contains(["host", "rds"], var.database_tier)
    error_message = "database_tier must be \"host\" or \"rds\"."
  }
}

variable "db_host" {
  type = object({
    subnet_id           = string
    instance_type       = optional(string, "t3.small")
    data_volume_size_gb = optional(number, 20)
  })
  description = "The database/broker host (PostgreSQL and Mosquitto, or Mosquitto alone with RDS); required unless single_host."
  default     = null
}

variable "database_subnet_ids" {
  type        = list(string)
  description = "Private subnets (two availability zones at least) for RDS; database_tier = \"rds\" only."
  default     = []
}

variable "database_instance_class" {
  type        = string
  description = "RDS instance class; database_tier = \"rds\" only."
  default     = "db.t4g.micro"
}

variable "load_balancer_subnet_ids" {
  type        = list(string)
  description = "Public subnets of the load balancer (one per availability zone); null: the ddms hosts' subnets."
  default     = null
}

variable "ssh_host_keys" {
  type = map(object({
    private_key = string
    public_key  = string
  }))
  description = "ed25519 SSH host key of every host by name; `cargo xtask provision` generates them and passes them as TF_VAR_ssh_host_keys. Empty by default so that `terraform console` can list the hosts before any key exists; the plan refuses a host without one."
  sensitive   = true
  default     = {}
}
