output "bucket_name" {
  description = "Name of the backup bucket."
  value       = aws_s3_bucket.this.id
}

output "bucket_arn" {
  description = "ARN of the backup bucket."
  value       = aws_s3_bucket.this.arn
}

output "region" {
  description = "Region the bucket lives in."
  value       = data.aws_region.current.name
}

output "prefix" {
  description = "Key prefix ddms may write under."
  value       = var.prefix
}

output "role_arn" {
  description = "IAM role granting put/get/list on the prefix."
  value       = aws_iam_role.ddms.arn
}

output "policy_arn" {
  description = "The least-privilege policy, to attach to other principals if needed."
  value       = aws_iam_policy.ddms.arn
}

output "instance_profile_name" {
  description = "Instance profile wrapping the role, for the host module's iam_instance_profile."
  value       = aws_iam_instance_profile.ddms.name
}
