"""bench: supervise side by side with Circus and supervisord.

Run `python -m bench` (see bench/README.md). The package imports nothing but the
standard library at top level, so the peers' venv interpreter can import the
system modules (`bench.sys_circus`, `bench.sys_supervisord`) to run their agent.
"""
