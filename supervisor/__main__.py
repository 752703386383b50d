"""`python -m supervise.supervisor`: the supervise command."""

from supervise.supervisor.cli.fast import main

main()
