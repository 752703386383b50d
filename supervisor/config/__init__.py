"""The config edge: TOML in, a frozen `Config` out.

Key tables and converters, `${VAR}` interpolation, schedule and trigger tables,
key positions for error messages, the reload diff, and locating a daemon's
endpoints from a config file. Imports the core, never the daemon.
"""
