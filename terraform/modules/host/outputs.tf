output "name" {
  description = "Host name, as given."
  value       = var.name
}

output "instance_id" {
  description = "EC2 instance id."
  value       = aws_instance.this.id
}

output "address" {
  description = "Public address the deploy tooling connects to (the Elastic IP)."
  value       = aws_eip.this.public_ip
}

output "private_ip" {
  description = "Private address inside the VPC."
  value       = aws_instance.this.private_ip
}

output "ssh_user" {
  description = "SSH login user."
  value       = var.ssh_user
}

output "ssh_port" {
  description = "SSH port."
  value       = var.ssh_port
}

output "security_group_id" {
  description = "Security group of the host (add rules to it, e.g. for a database)."
  value       = aws_security_group.this.id
}

output "data_volume_id" {
  description = "EBS volume mounted at /var/lib/ddms."
  value       = aws_ebs_volume.data.id
}

output "ssh_host_public_key" {
  description = "The host's pinned SSH host key (public), for known_hosts; null when none was given."
  # The public half only; the variable is sensitive for the private one.
  value = nonsensitive(var.ssh_host_key == null ? null : trimspace(var.ssh_host_key.public_key))
}
