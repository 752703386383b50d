"""supervise.workers."""
