"""Self-hosted SMTP relay and deliverability gateway."""
