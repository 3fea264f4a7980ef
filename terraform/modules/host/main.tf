locals {
  tags = merge(var.tags, {
    Name        = var.name
    Environment = var.environment
    ManagedBy   = "terraform"
    Application = "ddms"
  })
  # EBS volumes appear as NVMe devices on Nitro instances, named after the volume id.
  data_device = "/dev/sdf"
}

data "aws_subnet" "this" {
  id = var.subnet_id
}

# Official Debian images are published by Debian's AWS account.
data "aws_ami" "debian" {
  count       = var.ami_id == null ? 1 : 0
  most_recent = true
  owners      = ["136693071363"]

  filter {
    name   = "name"
    values = ["debian-12-${var.architecture}-*"]
  }

  filter {
    name   = "virtualization-type"
    values = ["hvm"]
  }
}

resource "aws_security_group" "this" {
  name_prefix = "${var.name}-"
  description = "ddms ${var.name}: SSH from admins${var.web ? ", HTTP(S) from anywhere" : ""}, MQTT/TLS from devices"
  vpc_id      = data.aws_subnet.this.vpc_id
  tags        = local.tags

  lifecycle {
    create_before_destroy = true
  }
}

resource "aws_vpc_security_group_ingress_rule" "ssh" {
  for_each          = toset(var.admin_cidrs)
  security_group_id = aws_security_group.this.id
  description       = "SSH from ${each.value}"
  ip_protocol       = "tcp"
  from_port         = var.ssh_port
  to_port           = var.ssh_port
  cidr_ipv4         = each.value
}

resource "aws_vpc_security_group_ingress_rule" "web" {
  for_each          = var.web ? toset(["80", "443"]) : toset([])
  security_group_id = aws_security_group.this.id
  description       = "HTTP${each.value == "443" ? "S" : " (redirects to HTTPS, ACME)"} from anywhere"
  ip_protocol       = "tcp"
  from_port         = tonumber(each.value)
  to_port           = tonumber(each.value)
  cidr_ipv4         = "0.0.0.0/0"
}

resource "aws_vpc_security_group_ingress_rule" "mqtt" {
  for_each          = toset(var.mqtt_cidrs)
  security_group_id = aws_security_group.this.id
  description       = "MQTT over TLS from ${each.value}"
  ip_protocol       = "tcp"
  from_port         = 8883
  to_port           = 8883
  cidr_ipv4         = each.value
}

resource "aws_vpc_security_group_egress_rule" "all" {
  security_group_id = aws_security_group.this.id
  description       = "Outbound (packages, S3, ACME)"
  ip_protocol       = "-1"
  cidr_ipv4         = "0.0.0.0/0"
}

resource "aws_ebs_volume" "data" {
  availability_zone = data.aws_subnet.this.availability_zone
  size              = var.data_volume_size_gb
  type              = var.data_volume_type
  encrypted         = true
  kms_key_id        = var.kms_key_id
  tags              = merge(local.tags, { Name = "${var.name}-data" })
}

resource "aws_instance" "this" {
  ami                    = coalesce(var.ami_id, one(data.aws_ami.debian[*].id))
  instance_type          = var.instance_type
  subnet_id              = var.subnet_id
  key_name               = var.ssh_key_name
  vpc_security_group_ids = [aws_security_group.this.id]
  iam_instance_profile   = var.iam_instance_profile
  user_data = templatefile("${path.module}/cloud-init.yaml.tftpl", {
    hostname    = var.name
    ssh_port    = var.ssh_port
    volume_id   = aws_ebs_volume.data.id
    data_device = local.data_device
    # Private key material in user_data: readable through IMDSv2 from the instance itself
    # (anyone there could read the key file anyway) and kept in the Terraform state, which
    # holds secrets already and is encrypted in S3 (backend.hcl.example).
    ssh_host_private_key = var.ssh_host_key == null ? "" : trimspace(var.ssh_host_key.private_key)
    ssh_host_public_key  = var.ssh_host_key == null ? "" : trimspace(var.ssh_host_key.public_key)
  })
  user_data_replace_on_change = false

  metadata_options {
    http_endpoint = "enabled"
    http_tokens   = "required"
  }

  root_block_device {
    volume_size = var.root_volume_size_gb
    volume_type = "gp3"
    encrypted   = true
    kms_key_id  = var.kms_key_id
  }

  tags        = local.tags
  volume_tags = local.tags

  lifecycle {
    # A newer Debian AMI must not replace a running host; rebuild hosts deliberately.
    ignore_changes = [ami]
  }
}

resource "aws_volume_attachment" "data" {
  device_name = local.data_device
  volume_id   = aws_ebs_volume.data.id
  instance_id = aws_instance.this.id
}

# A stable public address for DNS and the deploy inventory.
resource "aws_eip" "this" {
  domain   = "vpc"
  instance = aws_instance.this.id
  tags     = local.tags
}
