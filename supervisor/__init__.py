"""supervise.supervisor."""
