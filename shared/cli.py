"""The command line: ``python -m shared doctor | status | job <id> | demo [--offline] | db migrate | maintain``.

Every command loads the settings first, so a bad configuration is reported once, every problem listed, with
exit status 2. ``doctor`` exits 1 when a service is down; any other failure is a PipelineError, printed with
what to do, exit status 1.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import logging
import signal
import sys
from collections.abc import Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, TextIO
from uuid import UUID

from shared.config import Settings
from shared.errors import ConfigError, PipelineError

if TYPE_CHECKING:
    from shared.database import Database
    from shared.maintenance import MaintenancePolicy

__all__ = ["main"]

EXIT_OK, EXIT_FAILED, EXIT_CONFIG = 0, 1, 2
_log = logging.getLogger(__name__)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m shared", description="videogen-shared tools")
    commands = parser.add_subparsers(dest="command", required=True)
    doctor = commands.add_parser("doctor", help="load the settings and check every service, with latency")
    doctor.add_argument(
        "--timeout", type=float, default=5.0, help="seconds each check may take before it is reported down"
    )
    doctor.add_argument(
        "--processes",
        type=int,
        default=1,
        help="processes that each open a pool of DB_POOL_MAX_SIZE (API workers, stage workers, maintain), for the "
        "connection budget check",
    )
    doctor.add_argument(
        "--container",
        default="shared.container:Container",
        help="module:Class of the container whose declared services are checked (a module's own adds its services)",
    )
    commands.add_parser(
        "status", help="queues, running and stuck stages, holds, spend today per API, top failure reasons (read only)"
    )
    job = commands.add_parser("job", help="one job's timeline: stages, attempts, costs, holds, errors, trace id")
    job.add_argument("job_id", type=UUID, help="the job's id")
    demo = commands.add_parser("demo", help="run one simulated job end to end through every component")
    demo.add_argument("--offline", action="store_true", help="run on the in-memory fakes instead of the services")
    db = commands.add_parser("db", help="database commands")
    db_commands = db.add_subparsers(dest="db_command", required=True)
    migrate = db_commands.add_parser("migrate", help="apply pending migrations from supabase/migrations")
    migrate.add_argument(
        "--include-all",
        action="store_true",
        help="also apply files older than the newest applied migration (as `supabase db push --include-all`)",
    )
    maintain = commands.add_parser(
        "maintain", help="fail silent jobs, release expired reservations, prune old ones (safe to run anywhere)"
    )
    maintain.add_argument("--batch-size", type=int, help="rows per statement (default MAINTENANCE_BATCH_SIZE)")
    maintain.add_argument(
        "--every",
        type=_seconds,
        metavar="SECONDS",
        help="run again every SECONDS in this one process (SIGTERM stops it between runs; a failed run is logged)",
    )
    worker = commands.add_parser("worker", help="run a module's stage handlers (SIGTERM drains, then exits)")
    worker.add_argument("module", help="module[:attribute] holding a shared.stages.Stages (default attribute: stages)")
    worker.add_argument("--concurrency", type=int, default=4, help="items this process runs at once (default 4)")
    worker.add_argument("--ready-file", help="write the worker's name to this file once it takes work")
    return parser


def _seconds(text: str) -> float:
    """Parse ``--every``: a positive number of seconds."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        msg = f"expected a positive number of seconds, got {text!r}"
        raise argparse.ArgumentTypeError(msg)
    return value


def main(argv: Sequence[str] | None = None, *, out: TextIO | None = None) -> int:
    """Run one command and return its exit status."""
    stream = out or sys.stdout
    args = _parser().parse_args(argv)
    try:
        settings = Settings()
    except ConfigError as error:
        print(error.message, file=stream)
        return EXIT_CONFIG
    try:
        if args.command == "doctor":
            from shared.doctor import load_container, run_doctor  # noqa: PLC0415 - each command loads what it uses

            container = load_container(args.container)
            return asyncio.run(
                run_doctor(settings, out=stream, timeout=args.timeout, processes=args.processes, container=container)
            )
        if args.command == "demo":
            from shared.demo import run_demo  # noqa: PLC0415

            return asyncio.run(run_demo(settings, out=stream, offline=args.offline))
        if args.command in {"status", "job"}:
            return asyncio.run(_operator_view(settings, stream, args.job_id if args.command == "job" else None))
        if args.command == "worker":
            from shared.stages import run_worker  # noqa: PLC0415

            asyncio.run(run_worker(settings, args.module, concurrency=args.concurrency, ready_file=args.ready_file))
            return EXIT_OK
        if args.command == "maintain":
            return asyncio.run(_maintain(settings, stream, args.batch_size, every=args.every))
        return asyncio.run(_migrate(settings, stream, include_all=args.include_all))
    except PipelineError as error:
        print(f"error: {error}", file=stream)
        return EXIT_FAILED


async def _migrate(settings: Settings, out: TextIO, *, include_all: bool = False) -> int:
    from shared.migrations import apply_migrations, ensure_database  # noqa: PLC0415 - asyncpg loads only here

    if settings.environment == "development" and await ensure_database(settings.database_dsn):
        print("created the database", file=out)
    report = await apply_migrations(settings.database_dsn, include_all=include_all)
    if report.waited:
        print("waited for another `db migrate` run that was applying migrations", file=out)
    for skipped in report.compat_skipped:
        print(f"compatibility script skipped: {skipped}", file=out)
    if report.applied:
        print(f"applied {len(report.applied)} migration(s): {', '.join(report.applied)}", file=out)
    else:
        print("the database is up to date", file=out)
    return EXIT_OK


async def _operator_view(settings: Settings, out: TextIO, job_id: UUID | None) -> int:
    from shared.database import init_database  # noqa: PLC0415 - asyncpg loads only for this command
    from shared.operator_view import print_job, print_status, read_job, read_status  # noqa: PLC0415

    # One connection: the view reads, it must not take a worker's share of the pool.
    quick = settings.model_copy(update={"db_pool_min_size": 1, "db_pool_max_size": 1})
    async with contextlib.aclosing(init_database(quick)) as opened:  # closed even when the job is not found
        async for db in opened:
            if job_id is not None:
                print_job(await read_job(db, job_id), out)
            else:
                stuck_after = timedelta(seconds=settings.stage_heartbeat_timeout_seconds)
                print_status(await read_status(db, stuck_after=stuck_after), out)
    return EXIT_OK


async def _maintain(settings: Settings, out: TextIO, batch_size: int | None, *, every: float | None = None) -> int:
    from shared.database import init_database  # noqa: PLC0415 - asyncpg loads only for this command
    from shared.maintenance import MaintenancePolicy, maintain  # noqa: PLC0415

    policy = MaintenancePolicy.from_settings(settings)
    if batch_size is not None:
        policy = dataclasses.replace(policy, batch_size=batch_size)
    async for db in init_database(settings):
        if every is None:
            print((await maintain(db, policy)).summary(), file=out)
        else:
            await _maintain_every(db, policy, every, out)
    return EXIT_OK


async def _maintain_every(db: Database, policy: MaintenancePolicy, every: float, out: TextIO) -> None:
    """Run maintenance every ``every`` seconds until SIGTERM or SIGINT, which take effect between runs.

    One long-running process instead of a cron job: the interpreter, the imports and the pool are paid once.
    A run that raises a PipelineError is logged (with its traceback) and printed; the next run goes on.
    """
    from shared.maintenance import maintain  # noqa: PLC0415 - loaded by _maintain already

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    print(f"maintenance every {every:g} s; SIGTERM stops it between runs", file=out, flush=True)
    runs = 0
    try:
        while not stop.is_set():
            runs += 1
            try:
                summary = (await maintain(db, policy)).summary().replace("\n", "; ")
            except PipelineError as error:
                _log.error("maintenance run %d failed: %s", runs, error, exc_info=True)
                print(f"run {runs} failed: {error}", file=out, flush=True)
            else:
                print(f"run {runs}: {summary}", file=out, flush=True)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=every)
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
    print(f"stopped after {runs} run(s)", file=out, flush=True)
