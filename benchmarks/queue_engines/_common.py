"""What the engine evaluations share: a scratch database, a pgbouncer, worker processes, the report rows."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg

ADMIN_DSN = os.environ.get("BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
ROOT = Path(__file__).resolve().parents[2]

# The application's own tables in every evaluation database: the ledger a stage writes, and what handlers saw.
APP_DDL = """
create table ledger (key text primary key, amount numeric(12,4) not null, at timestamptz not null default now());
create table events (id bigserial primary key, job text not null, kind text not null, pid int not null,
                     at timestamptz not null default clock_timestamp());
"""


@dataclass
class Report:
    """One engine's figures: criterion -> (verdict, figure or note)."""

    engine: str
    version: str
    rows: dict[str, str] = field(default_factory=dict)

    def add(self, criterion: str, value: str) -> None:
        """Record a criterion and print it at once (a long run shows progress)."""
        self.rows[criterion] = value
        print(f"[{self.engine}] {criterion}: {value}", file=sys.stderr, flush=True)


def dsn_for(database: str, port: int | None = None) -> str:
    """Return ADMIN_DSN pointed at ``database`` (and at ``port`` when given: a pgbouncer)."""
    parts = urlsplit(ADMIN_DSN)
    netloc = parts.netloc if port is None else f"{parts.netloc.rsplit(':', 1)[0]}:{port}"
    return urlunsplit(parts._replace(netloc=netloc, path=f"/{database}"))


@contextlib.asynccontextmanager
async def scratch_database(engine: str) -> AsyncIterator[str]:
    """Create ``queue_eval_<engine>_<random>`` with the application tables, yield its name, drop it."""
    name = f"queue_eval_{engine}_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(ADMIN_DSN)
    try:
        await admin.execute(f'create database "{name}"')
        try:
            connection = await asyncpg.connect(dsn_for(name))
            try:
                await connection.execute(APP_DDL)
            finally:
                await connection.close()
            yield name
        finally:
            await admin.execute(f'drop database if exists "{name}" with (force)')
    finally:
        await admin.close()


def free_port() -> int:
    """Return a loopback port nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _wait_for_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"pgbouncer did not listen on 127.0.0.1:{port}")


@contextlib.contextmanager
def pgbouncer(pool_size: int = 4) -> Iterator[int]:
    """Run a pgbouncer in transaction mode in front of ADMIN_DSN's server; yield its port; stop it by pid."""
    binary = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
    folder = Path(tempfile.mkdtemp(prefix="queue-eval-bouncer-"))
    shutil.chown(folder, "postgres", "postgres")
    port = free_port()
    upstream = urlsplit(ADMIN_DSN).port or 5432
    (folder / "userlist.txt").write_text('"postgres" ""\n')
    (folder / "pgbouncer.ini").write_text(
        f"""
[databases]
* = host=127.0.0.1 port={upstream}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = trust
auth_file = {folder}/userlist.txt
pool_mode = transaction
default_pool_size = {pool_size}
max_client_conn = 400
ignore_startup_parameters = extra_float_digits,options
logfile = {folder}/pgbouncer.log
"""
    )
    for path in folder.iterdir():
        shutil.chown(path, "postgres", "postgres")
    process = subprocess.Popen(
        ["runuser", "-u", "postgres", "--", binary, str(folder / "pgbouncer.ini")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_for_port(port)
        yield port
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        shutil.rmtree(folder, ignore_errors=True)


def spawn(module: str, args: Sequence[str], *, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """Start ``python -m <module> <args>`` with this interpreter, from the repository's root."""
    return subprocess.Popen(
        [sys.executable, "-m", module, *args],
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        stdout=subprocess.DEVNULL,
        stderr=None if os.environ.get("QUEUE_EVAL_VERBOSE") else subprocess.DEVNULL,
    )


def stop_all(processes: Sequence[subprocess.Popen[bytes]]) -> None:
    """SIGTERM each (by pid), then SIGKILL what is still running after 10 s."""
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 10
    for process in processes:
        try:
            process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


async def wait_until(connection: asyncpg.Connection, query: str, *, timeout: float, every: float = 0.02) -> float:
    """Poll ``query`` until it returns true; return the monotonic time it first did (TimeoutError past it)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await connection.fetchval(query):
            return time.monotonic()
        await _sleep(every)
    raise TimeoutError(f"not true after {timeout} s: {query}")


async def _sleep(seconds: float) -> None:
    await asyncio.sleep(seconds)


async def spans(connection: asyncpg.Connection, jobs: Sequence[object]) -> list[tuple[float, float]]:
    """Return each job's (first event, last event) times from the ``events`` table, in epoch seconds."""
    rows = await connection.fetch(
        """select extract(epoch from min(at))::float8 as s, extract(epoch from max(at))::float8 as e
           from events where job = any($1::text[]) group by job""",
        [str(job) for job in jobs],
    )
    return [(row["s"], row["e"]) for row in rows]


def max_overlap(intervals: Sequence[tuple[float, float]]) -> int:
    """Return the largest number of intervals open at one instant."""
    points = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    best = current = 0
    for _, step in points:
        current += step
        best = max(best, current)
    return best
