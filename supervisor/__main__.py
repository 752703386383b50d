"""`python -m supervise.supervisor`: the supervise command."""

from supervise.supervisor.cli import main

main()
