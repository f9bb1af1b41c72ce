"""pgqueuer's own minimal example as the baseline for the stage worker (issue 19): no-op jobs, 4 processes.

Each process is pgqueuer's README example: one asyncpg connection, ``QueueManager`` with one no-op entrypoint,
``run()`` with its defaults (LISTEN/NOTIFY on, batch of 10). ``JOBS`` jobs (default 2,000) are queued first; the
figure is jobs per second from the first pick to the last completion, both read from pgqueuer's log table (the
database's clock, so process start-up is not counted). The database is one of this run's own, dropped after.

:func:`stages_per_second` returns the figure, so that the stage worker's benchmark can run it side by side.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from importlib.metadata import version
from urllib.parse import urlsplit, urlunsplit

import asyncpg
from pgqueuer import QueueManager
from pgqueuer.db import AsyncpgDriver
from pgqueuer.models import Job
from pgqueuer.queries import Queries

from benchmarks._postgres import ADMIN_DSN

__all__ = ["main", "stages_per_second"]

JOBS = int(os.environ.get("BENCH_PGQUEUER_JOBS", "2000"))
PROCESSES = 4
MODULE = "benchmarks.bench_pgqueuer_baseline"


async def _worker(dsn: str) -> None:
    """pgqueuer's minimal example: a QueueManager with a no-op entrypoint; SIGTERM stops it."""
    connection = await asyncpg.connect(dsn)
    manager = QueueManager(Queries(AsyncpgDriver(connection)))

    @manager.entrypoint("noop")
    async def noop(job: Job) -> None:
        return None

    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, manager.shutdown.set)
    await manager.run()
    await connection.close()


async def _wait_empty(connection: asyncpg.Connection, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while await connection.fetchval("select exists (select from pgqueuer)"):
        if time.monotonic() > deadline:
            msg = f"pgqueuer's workers left jobs queued after {timeout} s"
            raise TimeoutError(msg)
        await asyncio.sleep(0.05)


def _start(dsn: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", MODULE, "worker", dsn], stdout=subprocess.DEVNULL)


def _stop(processes: list[subprocess.Popen[bytes]]) -> None:
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    for process in processes:
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


async def stages_per_second(jobs: int = JOBS, processes: int = PROCESSES, admin_dsn: str = ADMIN_DSN) -> float:
    """Return pgqueuer's own no-op jobs/s with ``processes`` worker processes, in a database of this run's own."""
    name = f"vg_bench_pgq_{uuid.uuid4().hex[:10]}"
    dsn = urlunsplit(urlsplit(admin_dsn)._replace(path=f"/{name}"))
    admin = await asyncpg.connect(admin_dsn)
    try:
        await admin.execute(f'create database "{name}"')
        connection = await asyncpg.connect(dsn)
        try:
            queries = Queries(AsyncpgDriver(connection))
            await queries.install()
            for start in range(0, jobs, 500):
                count = min(500, jobs - start)
                await queries.enqueue(["noop"] * count, [None] * count, [0] * count)
            workers = [_start(dsn) for _ in range(processes)]
            try:
                await _wait_empty(connection, timeout=max(60.0, jobs / 20))
            finally:
                _stop(workers)
            seconds = await connection.fetchval(
                """select extract(epoch from max(created) filter (where status = 'successful')
                                            - min(created) filter (where status = 'picked'))::float8
                   from pgqueuer_log"""
            )
        finally:
            await connection.close()
    finally:
        await admin.execute(f'drop database if exists "{name}" with (force)')
        await admin.close()
    return jobs / float(seconds)


def main() -> str:
    """Run the baseline and return its Markdown row."""
    rate = asyncio.run(stages_per_second())
    return (
        "| baseline | pgqueuer | processes | jobs | stages/s |\n|---|---|---|---|---|\n"
        f"| pgqueuer's minimal example (no-op entrypoint, `run()` defaults) | {version('pgqueuer')} "
        f"| {PROCESSES} | {JOBS} | {rate:.0f} |"
    )


if __name__ == "__main__":
    if sys.argv[1:2] == ["worker"]:
        asyncio.run(_worker(sys.argv[2]))
    else:
        print(main())
