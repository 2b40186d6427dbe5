"""The egress gateway: the guest's only way out, with grants as capabilities."""
