"""`python -m supervise.workers`: the worker process entry point."""

from supervise.workers.runner import main

raise SystemExit(main())
