"""The pure core: decisions as functions of time, no I/O.

State machine, restart policy, triggers and cron, overlap and catch-up policies,
runs, units, metric aggregation, dependency order, errors, and the `Clock` port
the shell reads time through. Modules here import only the standard library,
croniter and each other; no sockets, processes, files or event loop.
"""
