"""`python -m supervise.supervisor`: the supervise command."""

from supervise.supervisor.cli.main import main

main()
