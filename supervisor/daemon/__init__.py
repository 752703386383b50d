"""The asyncio shell: the daemon that carries out the core's decisions.

`Supervisor` is the composition root; the parts it composes (worker pool,
scheduler, control server, observability, runtime changes) depend on the small
ports in `ports.py`, never on `Supervisor` itself.
"""
