"""supervise.workers: what runs inside a worker process."""

from supervise.workers.context import JobContext as JobContext
from supervise.workers.context import RunContext as RunContext
from supervise.workers.registry import registry as registry
from supervise.workers.service import Service as Service

__all__ = ["JobContext", "RunContext", "Service", "registry"]
