"""Run the command line: ``python -m shared doctor | demo [--offline] | db migrate``."""

from shared.cli import main

raise SystemExit(main())
