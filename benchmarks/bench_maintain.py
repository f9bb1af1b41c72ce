"""What a cron-started ``python -m shared maintain`` pays against one long-running ``maintain --every N``.

Issue 19: as a cron process, ``maintain`` cost 0.8-22 s of interpreter start-up on a loaded host for under 0.2 s
of SQL. Here, in a migrated database of this run's own (dropped after): ``BENCH_MAINTAIN_ROUNDS`` rounds (default
5), each timing one cron-style process from spawn to exit (A), then taking the next run of one
``maintain --every 0.5`` process started once before the rounds (B: the time of the run itself, as it prints
it). The medians and the ratio A / B are reported, with the SQL time the cron process itself reported.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

from benchmarks._postgres import scratch_database

__all__ = ["main"]

ROOT = Path(__file__).resolve().parent.parent
ROUNDS = int(os.environ.get("BENCH_MAINTAIN_ROUNDS", "5"))
_SECONDS = re.compile(r"batch\(es\) in ([0-9.]+) s")


def _env(dsn: str) -> dict[str, str]:
    return {**os.environ, "DATABASE_URL": dsn, "ENVIRONMENT": "development", "PYTHONUNBUFFERED": "1"}


def _cron(dsn: str) -> tuple[float, float]:
    """Run one ``python -m shared maintain``; return its wall time and the SQL time it printed."""
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "shared", "maintain"],
        cwd=ROOT,
        env=_env(dsn),
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    wall = time.perf_counter() - started
    match = _SECONDS.search(result.stdout)
    if match is None:
        msg = f"no timing in the output of maintain: {result.stdout!r}"
        raise RuntimeError(msg)
    return wall, float(match[1])


def _next_run(process: subprocess.Popen[str]) -> float:
    """Return the time of the long-running process's next run, as it printed it."""
    assert process.stdout is not None  # noqa: S101 - opened with stdout=PIPE
    for line in process.stdout:
        if line.startswith("run ") and (match := _SECONDS.search(line)):
            return float(match[1])
        if line.startswith("run "):
            msg = f"a maintenance run failed: {line.strip()}"
            raise RuntimeError(msg)
    msg = "the long-running maintain process ended"
    raise RuntimeError(msg)


def _start_daemon(dsn: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "shared", "maintain", "--every", "0.5"],
        cwd=ROOT,
        env=_env(dsn),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )


async def _measure() -> tuple[list[float], list[float], list[float]]:
    async with scratch_database() as dsn:
        daemon = _start_daemon(dsn)
        walls: list[float] = []
        cron_sql: list[float] = []
        runs: list[float] = []
        try:
            await asyncio.to_thread(_next_run, daemon)  # its first run opens what later runs reuse
            for _ in range(ROUNDS):
                wall, sql = await asyncio.to_thread(_cron, dsn)
                walls.append(wall)
                cron_sql.append(sql)
                runs.append(await asyncio.to_thread(_next_run, daemon))
        finally:
            daemon.send_signal(signal.SIGTERM)
            await asyncio.to_thread(daemon.communicate, timeout=30)
    return walls, cron_sql, runs


def main() -> str:
    """Measure and return the Markdown table."""
    walls, cron_sql, runs = asyncio.run(_measure())
    wall, sql, run = statistics.median(walls), statistics.median(cron_sql), statistics.median(runs)
    return (
        f"median of {ROUNDS} interleaved rounds\n\n"
        "| how maintain runs | time per run | of which SQL |\n|---|---|---|\n"
        f"| cron: `python -m shared maintain` (spawn to exit) | {wall:.3f} s | {sql:.3f} s |\n"
        f"| `python -m shared maintain --every 0.5` (one run) | {run:.3f} s | {run:.3f} s |\n"
        f"| ratio cron / long-running | {wall / run:.0f} x | |"
    )


if __name__ == "__main__":
    print(main())
