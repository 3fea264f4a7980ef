output "address" {
  description = "Host name of the database endpoint."
  value       = aws_db_instance.this.address
}

output "port" {
  description = "Port of the database endpoint."
  value       = aws_db_instance.this.port
}

output "database_name" {
  description = "Database ddms uses."
  value       = aws_db_instance.this.db_name
}

output "username" {
  description = "Master user (ddms connects as a role of its own, made with it)."
  value       = aws_db_instance.this.username
}

output "password" {
  description = "The generated password (from Secrets Manager)."
  value       = jsondecode(data.aws_secretsmanager_secret_version.master.secret_string)["password"]
  sensitive   = true
}

output "secret_arn" {
  description = "Secrets Manager secret holding the password (rotate there, then re-run provision)."
  value       = aws_db_instance.this.master_user_secret[0].secret_arn
}

output "security_group_id" {
  description = "Security group of the database."
  value       = aws_security_group.this.id
}
