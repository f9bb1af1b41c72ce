"""pgqueuer, measured on the criteria of issue 19 (direct, and through pgbouncer in transaction mode).

``python -m benchmarks.queue_engines.pgqueuer_eval`` prints the figures; ``... worker DSN CACHE`` is one worker
process (the harness starts four).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from datetime import timedelta

import asyncpg

from benchmarks.queue_engines._common import (
    Report,
    dsn_for,
    max_overlap,
    pgbouncer,
    scratch_database,
    spans,
    spawn,
    stop_all,
    wait_until,
)

ENGINE = "pgqueuer"
MODULE = "benchmarks.queue_engines.pgqueuer_eval"
HEARTBEAT = timedelta(seconds=2)  # pgqueuer beats at half of it and re-picks a job whose beat is older
POLL = timedelta(seconds=0.5)  # dequeue_timeout: the poll interval when no NOTIFY arrives (a pooler)
WORKERS = 4
JOBS = int(os.environ.get("QUEUE_EVAL_JOBS", "2000"))


def available() -> bool:
    """Whether pgqueuer is importable here."""
    try:
        import pgqueuer  # noqa: F401
    except ImportError:
        return False
    return True


async def _connect(dsn: str, cache: int) -> asyncpg.Connection:
    return await asyncpg.connect(dsn, statement_cache_size=cache)


async def worker(dsn: str, cache: int) -> None:
    """One worker process: the entrypoints the criteria use, polling every POLL, heartbeat HEARTBEAT."""
    from pgqueuer import QueueManager
    from pgqueuer.db import AsyncpgDriver
    from pgqueuer.errors import RetryRequested
    from pgqueuer.models import Context, Job
    from pgqueuer.queries import Queries

    connection = await _connect(dsn, cache)
    app = await _connect(dsn, cache)
    lock = asyncio.Lock()
    manager = QueueManager(Queries(AsyncpgDriver(connection)))
    pid = os.getpid()

    async def event(job: Job, kind: str) -> None:
        async with lock:
            await app.execute("insert into events (job, kind, pid) values ($1, $2, $3)", str(job.id), kind, pid)

    @manager.entrypoint("noop")
    async def noop(job: Job) -> None:
        return None

    @manager.entrypoint("sleep")
    async def sleep(job: Job) -> None:
        await event(job, "start")
        await asyncio.sleep(float(job.payload or b"0"))
        await event(job, "end")

    @manager.entrypoint("limited", concurrency_limit=2)
    async def limited(job: Job) -> None:
        await sleep(job)

    @manager.entrypoint("flaky")
    async def flaky(job: Job) -> None:
        await event(job, "start")
        if job.attempts < 2:
            raise RetryRequested(delay=timedelta(0), reason="measured retry")

    @manager.entrypoint("cancellable", accepts_context=True)
    async def cancellable(job: Job, ctx: Context) -> None:
        await event(job, "start")
        with ctx.cancellation:
            await asyncio.sleep(60)
        await event(job, "cancelled" if ctx.cancellation.cancel_called else "end")

    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, manager.shutdown.set)
    await manager.run(dequeue_timeout=POLL, batch_size=10, heartbeat_timeout=HEARTBEAT)
    await connection.close()
    await app.close()


async def install(dsn: str) -> None:
    """Install pgqueuer's schema (``pgq install``'s SQL) into the database."""
    from pgqueuer.db import AsyncpgDriver
    from pgqueuer.queries import Queries

    connection = await asyncpg.connect(dsn)
    try:
        await Queries(AsyncpgDriver(connection)).install()
    finally:
        await connection.close()


async def enqueue(dsn: str, entrypoint: str, payloads: list[bytes | None], cache: int = 0) -> list[int]:
    from pgqueuer.db import AsyncpgDriver
    from pgqueuer.queries import Queries

    connection = await _connect(dsn, cache)
    try:
        queries = Queries(AsyncpgDriver(connection))
        ids: list[int] = []
        for start in range(0, len(payloads), 500):
            chunk = payloads[start : start + 500]
            ids += await queries.enqueue([entrypoint] * len(chunk), chunk, [0] * len(chunk))
        return ids
    finally:
        await connection.close()


async def same_transaction(dsn: str) -> str:
    """Complete job A, write a ledger row and enqueue job B in one transaction: rolled back, then committed."""
    import uuid

    from pgqueuer.db import AsyncpgDriver
    from pgqueuer.queries import EntrypointExecutionParameter, Queries
    from pgqueuer.types import QueueManagerId

    connection = await asyncpg.connect(dsn, statement_cache_size=0)
    try:
        queries = Queries(AsyncpgDriver(connection))
        await queries.enqueue("stage_a", b"a")
        (job,) = await queries.dequeue(
            batch_size=1,
            entrypoints={"stage_a": EntrypointExecutionParameter(concurrency_limit=0)},  # type: ignore[dict-item]
            queue_manager_id=QueueManagerId(uuid.uuid4()),
            global_concurrency_limit=None,
            heartbeat_timeout=HEARTBEAT,
        )

        async def hand_off(fail: bool) -> None:
            async with connection.transaction():
                await connection.execute("insert into ledger (key, amount) values ('a', 0.1)")
                await queries.enqueue("stage_b", b"b", dedupe_key=f"b-after-{job.id}")
                await queries.log_jobs([(job, "successful", None)])
                if fail:
                    raise RuntimeError("rolled back on purpose")

        with contextlib.suppress(RuntimeError):
            await hand_off(fail=True)
        after_rollback = await _hand_off_state(connection, job.id)
        await hand_off(fail=False)
        after_commit = await _hand_off_state(connection, job.id)
    finally:
        await connection.close()
    expected_rollback = {"ledger": 0, "next_queued": 0, "this_still_picked": 1}
    expected_commit = {"ledger": 1, "next_queued": 1, "this_still_picked": 0}
    verdict = "yes" if (after_rollback, after_commit) == (expected_rollback, expected_commit) else "NO"
    return f"{verdict} (after rollback {after_rollback}; after commit {after_commit})"


async def _hand_off_state(connection: asyncpg.Connection, job_id: int) -> dict[str, int]:
    row = await connection.fetchrow(
        """select (select count(*) from ledger) as ledger,
                  (select count(*) from pgqueuer where entrypoint = 'stage_b' and status = 'queued') as next_queued,
                  (select count(*) from pgqueuer where id = $1 and status = 'picked') as this_still_picked""",
        job_id,
    )
    if row is None:
        raise RuntimeError("the state query returned no row")
    return {key: int(value) for key, value in row.items()}


async def throughput(dsn: str, worker_dsn: str, cache: int, jobs: int = JOBS) -> float:
    """Jobs/s of WORKERS processes on ``jobs`` no-op jobs queued beforehand (first pick to last completion)."""
    admin = await asyncpg.connect(dsn)
    try:
        await admin.execute("truncate pgqueuer, pgqueuer_log")
        await enqueue(dsn, "noop", [None] * jobs)
        processes = [spawn(MODULE, ["worker", worker_dsn, str(cache)]) for _ in range(WORKERS)]
        try:
            await wait_until(admin, "select not exists (select from pgqueuer)", timeout=max(60.0, jobs / 20))
        finally:
            stop_all(processes)
        seconds = await admin.fetchval(
            """select extract(epoch from max(created) filter (where status = 'successful')
                                        - min(created) filter (where status = 'picked'))
               from pgqueuer_log"""
        )
        done = await admin.fetchval("select count(*) from pgqueuer_log where status = 'successful'")
    finally:
        await admin.close()
    if done != jobs:
        msg = f"{done} of {jobs} jobs completed"
        raise TimeoutError(msg)
    return jobs / float(seconds)


async def kill_and_rerun(dsn: str, worker_dsn: str, cache: int) -> str:
    """SIGKILL the worker running a job; time until another worker starts it again."""
    admin = await asyncpg.connect(dsn)
    processes = [spawn(MODULE, ["worker", worker_dsn, str(cache)]) for _ in range(2)]
    try:
        (job_id,) = await enqueue(dsn, "sleep", [b"30"])
        await wait_until(admin, f"select exists (select from events where job = '{job_id}')", timeout=30)
        pid = await admin.fetchval("select pid from events where job = $1", str(job_id))
        os.kill(pid, signal.SIGKILL)
        killed = time.time()
        await wait_until(
            admin, f"select count(*) = 2 from events where job = '{job_id}' and kind = 'start'", timeout=60
        )
        rerun = await admin.fetchval(
            "select extract(epoch from max(at)) from events where job = $1 and kind = 'start'", str(job_id)
        )
        attempts = await admin.fetchval("select attempts from pgqueuer where id = $1", job_id)
    finally:
        stop_all(processes)
        await admin.close()
    return (
        f"yes: re-run {float(rerun) - killed:.2f} s after SIGKILL (heartbeat_timeout {HEARTBEAT.total_seconds():g} s,"
        f" poll {POLL.total_seconds():g} s); attempts after the re-pick: {attempts} (a stale re-pick does not count)"
    )


async def retries(dsn: str, worker_dsn: str, cache: int) -> str:
    admin = await asyncpg.connect(dsn)
    processes = [spawn(MODULE, ["worker", worker_dsn, str(cache)]) for _ in range(2)]
    try:
        (job_id,) = await enqueue(dsn, "flaky", [None])
        await wait_until(admin, f"select not exists (select from pgqueuer where id = {job_id})", timeout=30)
        runs = await admin.fetchval("select count(*) from events where job = $1", str(job_id))
    finally:
        stop_all(processes)
        await admin.close()
    return f"yes: RetryRequested twice, then success: {runs} runs (attempts counted by pgqueuer; no max_attempts)"


async def cancellation(dsn: str, worker_dsn: str, cache: int) -> str:
    from pgqueuer.db import AsyncpgDriver
    from pgqueuer.models import JobId
    from pgqueuer.queries import Queries

    admin = await asyncpg.connect(dsn)
    processes = [spawn(MODULE, ["worker", worker_dsn, str(cache)]) for _ in range(2)]
    try:
        (job_id,) = await enqueue(dsn, "cancellable", [None])
        await wait_until(admin, f"select exists (select from events where job = '{job_id}')", timeout=30)
        sender = await asyncpg.connect(worker_dsn, statement_cache_size=cache)
        try:
            started = time.monotonic()
            await Queries(AsyncpgDriver(sender)).mark_job_as_cancelled([JobId(job_id)])
        finally:
            await sender.close()
        try:
            seen = await wait_until(
                admin, f"select exists (select from events where job = '{job_id}' and kind = 'cancelled')", timeout=10
            )
            result = f"yes: the running handler was cancelled {seen - started:.2f} s after mark_job_as_cancelled"
        except TimeoutError:
            result = "NO: the running handler was not cancelled within 10 s (cancellation travels by NOTIFY only)"
    finally:
        stop_all(processes)
        await admin.close()
    return result


async def concurrency_limit(dsn: str, worker_dsn: str, cache: int) -> str:
    admin = await asyncpg.connect(dsn)
    processes = [spawn(MODULE, ["worker", worker_dsn, str(cache)]) for _ in range(WORKERS)]
    try:
        ids = await enqueue(dsn, "limited", [b"0.3"] * 12)
        await wait_until(admin, "select not exists (select from pgqueuer where entrypoint = 'limited')", timeout=60)
        rows = await spans(admin, ids)
        pids = await admin.fetchval(
            "select count(distinct pid) from events where job = any($1::text[])", [str(i) for i in ids]
        )
    finally:
        stop_all(processes)
        await admin.close()
    peak = max_overlap(rows)
    verdict = "yes" if peak <= 2 else "NO"
    return f"{verdict}: limit 2 on 4 processes: peak {peak} running at once ({pids} processes ran them)"


async def prepared_statements_with_cache(dsn: str, worker_dsn: str) -> str:
    """Workers through the pooler with asyncpg's statement cache left on (100): do they still work?"""
    try:
        rate = await throughput(dsn, worker_dsn, 100, jobs=400)
    except TimeoutError as exc:
        return f"breaks: {exc}"
    return f"works even with the cache on ({rate:.0f} jobs/s)"


async def suite(report: Report, dsn: str, worker_dsn: str, where: str) -> None:
    cache = 0  # asyncpg's statement cache off: the rule of a transaction pooler
    report.add(
        f"throughput, {WORKERS} processes, {JOBS} no-op jobs ({where})",
        f"{await throughput(dsn, worker_dsn, cache):.0f} jobs/s",
    )
    report.add(f"SIGKILLed worker's job re-run ({where})", await kill_and_rerun(dsn, worker_dsn, cache))
    report.add(f"retries ({where})", await retries(dsn, worker_dsn, cache))
    report.add(f"cancellation of a running job ({where})", await cancellation(dsn, worker_dsn, cache))
    report.add(f"concurrency limit across workers ({where})", await concurrency_limit(dsn, worker_dsn, cache))


async def evaluate() -> Report:
    from importlib.metadata import version

    report = Report(ENGINE, version("pgqueuer"))
    async with scratch_database(ENGINE) as database:
        dsn = dsn_for(database)
        await install(dsn)
        report.add("enqueue next + complete this + ledger row in one transaction", await same_transaction(dsn))
        await suite(report, dsn, dsn, "direct")
        with pgbouncer() as port:
            pooled = dsn_for(database, port)
            report.add(
                "pooler: statement cache on (100) through pgbouncer", await prepared_statements_with_cache(dsn, pooled)
            )
            await suite(report, dsn, pooled, "pgbouncer transaction mode")
    return report


if __name__ == "__main__":
    if sys.argv[1:2] == ["worker"]:
        asyncio.run(worker(sys.argv[2], int(sys.argv[3])))
    else:
        print(json.dumps(asyncio.run(evaluate()).__dict__, indent=1))
