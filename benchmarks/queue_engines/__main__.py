"""``python -m benchmarks.queue_engines [pgqueuer procrastinate dbos]``: each installed engine's figures, as JSON.

An engine this interpreter cannot import is reported as skipped (only pgqueuer is in the lock). The decision and
the figures of a full run, with the three engines each from its own scratch environment, are in
docs/decisions/queue-engine.md.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import sys

ENGINES = ("pgqueuer", "procrastinate", "dbos")


def main(names: list[str]) -> int:
    """Evaluate each named engine that is installed; print one JSON object per engine."""
    for name in names:
        module = importlib.import_module(f"benchmarks.queue_engines.{name}_eval")
        if not module.available():
            print(json.dumps({"engine": name, "skipped": "not installed in this interpreter"}))
            continue
        report = asyncio.run(module.evaluate())
        print(json.dumps({"engine": report.engine, "version": report.version, "rows": report.rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:] or list(ENGINES)))
