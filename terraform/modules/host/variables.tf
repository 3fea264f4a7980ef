variable "name" {
  type        = string
  description = "Host name (also the inventory name ddms' deploy tooling reports), e.g. \"ddms-staging-1\"."
}

variable "environment" {
  type        = string
  description = "Environment the host belongs to (staging, production); tagged on every resource."
}

variable "subnet_id" {
  type        = string
  description = "Subnet the instance runs in; the data volume is created in the subnet's availability zone."
}

variable "instance_type" {
  type        = string
  description = "EC2 instance type."
  default     = "t3.small"
}

variable "ami_id" {
  type        = string
  description = "AMI to boot; null picks the newest official Debian 12 (bookworm) AMI for var.architecture."
  default     = null
}

variable "architecture" {
  type        = string
  description = "CPU architecture of the default AMI: \"amd64\" or \"arm64\" (match the instance type)."
  default     = "amd64"

  validation {
    condition     = contains(["amd64", "arm64"], var.architecture)
    error_message = "architecture must be \"amd64\" or \"arm64\"."
  }
}

variable "ssh_key_name" {
  type        = string
  description = "Name of the EC2 key pair installed for var.ssh_user (the deploy key)."
}

variable "ssh_user" {
  type        = string
  description = "Login user of the image (\"admin\" on the official Debian AMIs)."
  default     = "admin"
}

variable "ssh_port" {
  type        = number
  description = "Port sshd listens on; cloud-init reconfigures sshd when it is not 22."
  default     = 22
}

variable "admin_cidrs" {
  type        = list(string)
  description = "CIDR blocks allowed to reach SSH (deploy runners, bastions, admins)."

  validation {
    condition     = length(var.admin_cidrs) > 0
    error_message = "admin_cidrs must name at least one CIDR block: SSH is closed to everyone else."
  }
}

variable "mqtt_cidrs" {
  type        = list(string)
  description = "CIDR blocks allowed to reach MQTT over TLS (8883); empty keeps the port closed."
  default     = []
}

variable "root_volume_size_gb" {
  type        = number
  description = "Size of the root volume in GiB (OS and /opt/ddms releases)."
  default     = 16
}

variable "data_volume_size_gb" {
  type        = number
  description = "Size of the EBS data volume mounted at /var/lib/ddms, in GiB."
  default     = 50
}

variable "data_volume_type" {
  type        = string
  description = "EBS volume type of the data volume."
  default     = "gp3"
}

variable "kms_key_id" {
  type        = string
  description = "KMS key ARN for the root and data volumes; null uses the account's default EBS key."
  default     = null
}

variable "iam_instance_profile" {
  type        = string
  description = "Instance profile to attach (e.g. the backup_bucket module's, for backups to S3); null for none."
  default     = null
}

variable "tags" {
  type        = map(string)
  description = "Extra tags for every resource."
  default     = {}
}
