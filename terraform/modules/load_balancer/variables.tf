variable "name" {
  type        = string
  description = "Name of the load balancer (at most 26 characters: target groups append \"-https\")."

  validation {
    condition     = length(var.name) <= 26
    error_message = "name must be at most 26 characters (target group names are limited to 32)."
  }
}

variable "environment" {
  type        = string
  description = "Environment (staging, production); tagged on every resource."
}

variable "vpc_id" {
  type        = string
  description = "VPC of the targets."
}

variable "subnet_ids" {
  type        = list(string)
  description = "Public subnets of the load balancer, at most one per availability zone."
}

variable "ddms_instance_ids" {
  type        = map(string)
  description = "Instance ids of the ddms hosts by name: targets of 443 and 80."
}

variable "mqtt" {
  type        = bool
  description = "Forward 8883 (MQTT over TLS) to broker_instance_id. A flag of its own: the instance id is unknown until apply, and count must be known at plan."
  default     = false
}

variable "broker_instance_id" {
  type        = string
  description = "Instance id of the MQTT broker host (target of 8883) when mqtt is true."
  default     = null
}

variable "deregistration_delay" {
  type        = number
  description = "Seconds a deregistered target keeps its connections (nginx drains long streams)."
  default     = 30
}

variable "deletion_protection" {
  type        = bool
  description = "Refuse to delete the load balancer (production)."
  default     = false
}

variable "tags" {
  type        = map(string)
  description = "Extra tags for every resource."
  default     = {}
}
