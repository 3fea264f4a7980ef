locals {
  tags = merge(var.tags, {
    Name        = var.name
    Environment = var.environment
    ManagedBy   = "terraform"
    Application = "ddms"
  })
}

resource "aws_db_subnet_group" "this" {
  name_prefix = "${var.name}-"
  subnet_ids  = var.subnet_ids
  tags        = local.tags
}

# Only the ddms hosts reach the database.
resource "aws_security_group" "this" {
  name_prefix = "${var.name}-"
  description = "ddms database ${var.name}: PostgreSQL from the ddms hosts only"
  vpc_id      = var.vpc_id
  tags        = local.tags

  lifecycle {
    create_before_destroy = true
  }
}

resource "aws_vpc_security_group_ingress_rule" "clients" {
  for_each                     = var.client_security_group_ids
  security_group_id            = aws_security_group.this.id
  description                  = "PostgreSQL from ${each.key}"
  ip_protocol                  = "tcp"
  from_port                    = 5432
  to_port                      = 5432
  referenced_security_group_id = each.value
}

# TLS is required of every client (ddms connects with sslmode=require).
resource "aws_db_parameter_group" "this" {
  name_prefix = "${var.name}-"
  family      = "postgres${var.engine_version}"
  tags        = local.tags

  parameter {
    name  = "rds.force_ssl"
    value = "1"
  }
}

resource "aws_db_instance" "this" {
  identifier_prefix      = "${var.name}-"
  engine                 = "postgres"
  engine_version         = var.engine_version
  instance_class         = var.instance_class
  allocated_storage      = var.allocated_storage_gb
  max_allocated_storage  = var.max_allocated_storage_gb
  storage_type           = "gp3"
  storage_encrypted      = true
  kms_key_id             = var.kms_key_id
  db_name                = var.database_name
  username               = var.username
  port                   = 5432
  db_subnet_group_name   = aws_db_subnet_group.this.name
  vpc_security_group_ids = [aws_security_group.this.id]
  parameter_group_name   = aws_db_parameter_group.this.name
  publicly_accessible    = false
  multi_az               = var.multi_az

  # The password is generated and kept by RDS in Secrets Manager (no random provider, never
  # in a tfvars file); the secret is read back below for the ddms hosts' database URL.
  manage_master_user_password = true

  backup_retention_period    = var.backup_retention_days
  backup_window              = "02:00-03:00"
  maintenance_window         = "sun:03:30-sun:04:30"
  copy_tags_to_snapshot      = true
  deletion_protection        = var.deletion_protection
  skip_final_snapshot        = !var.deletion_protection
  final_snapshot_identifier  = var.deletion_protection ? "${var.name}-final" : null
  auto_minor_version_upgrade = true
  apply_immediately          = !var.deletion_protection
  tags                       = local.tags
}

data "aws_secretsmanager_secret_version" "master" {
  secret_id = aws_db_instance.this.master_user_secret[0].secret_arn
}
