output "dns_name" {
  description = "The load balancer's DNS name (point the public names at it with a CNAME/alias)."
  value       = aws_lb.this.dns_name
}

output "zone_id" {
  description = "Route 53 zone id of the load balancer, for alias records."
  value       = aws_lb.this.zone_id
}

output "arn" {
  description = "ARN of the load balancer."
  value       = aws_lb.this.arn
}
