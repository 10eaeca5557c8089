"""End-to-end tests against a real AWS account, in ephemeral Pulumi stacks (opt-in)."""
