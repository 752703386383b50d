"""supervise.protocol."""
