"""Run every benchmark (`make bench`) and print its figures; `python -m benchmarks logging redis` runs some."""

from __future__ import annotations

import importlib
import sys
import time

BENCHMARKS = (
    "logging",
    "database",
    "cost_tracking",
    "stage_step",
    "redis",
    "storage",
    "local_storage",
    "validation",
    "startup",
    "pgqueuer_baseline",
    "stages",
    "maintain",
    "paid",
    "operator",
    "log_safety",
    "doctor",
    "telemetry",
)


def run(names: list[str]) -> int:
    """Run the named benchmarks in order and print their Markdown reports."""
    failed = 0
    for name in names:
        started = time.perf_counter()
        print(f"\n## {name}\n", flush=True)
        try:
            module = importlib.import_module(f"benchmarks.bench_{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"benchmarks.bench_{name}":
                raise
            print(f"(no benchmarks/bench_{name}.py yet)")
            continue
        try:
            print(module.main(), flush=True)
        except Exception as exc:  # one failing benchmark must not hide the others. figures
            failed += 1
            print(f"FAILED: {type(exc).__name__}: {exc}", flush=True)
        print(f"\n({time.perf_counter() - started:.0f} s)", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["soak"]:  # the gateway memory soak (not in make bench): python -m benchmarks soak --minutes 30
        from benchmarks.soak_gateway import main as soak

        print(soak(sys.argv[2:]), flush=True)
        sys.exit(0)
    sys.exit(run(sys.argv[1:] or list(BENCHMARKS)))
