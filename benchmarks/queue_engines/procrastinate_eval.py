"""procrastinate, measured on the criteria of issue 19 (direct, and through pgbouncer in transaction mode).

Not in the lock: run it from a scratch environment, e.g. ``python3.11 -m venv /tmp/qe_procrastinate &&
/tmp/qe_procrastinate/bin/pip install procrastinate psycopg-binary asyncpg``, then from the repository's root
``/tmp/qe_procrastinate/bin/python -m benchmarks.queue_engines.procrastinate_eval``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from typing import Any

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

ENGINE = "procrastinate"
MODULE = "benchmarks.queue_engines.procrastinate_eval"
WORKERS = 4
CONCURRENCY = 10  # async jobs per worker process (pgqueuer's batch of 10)
POLL = 0.5  # fetch_job_polling_interval with listen_notify off (a pooler)
HEARTBEAT = 1.0  # update_heartbeat_interval; a worker is stalled after STALLED s without one
STALLED = 2.0
JOBS = int(os.environ.get("QUEUE_EVAL_JOBS", "2000"))


def available() -> bool:
    """Whether procrastinate (and psycopg) are importable here."""
    try:
        import procrastinate  # noqa: F401
    except ImportError:
        return False
    return True


def make_app(dsn: str, *, prepare: bool = False) -> Any:
    """An App on psycopg; ``prepare=False`` turns psycopg's server-side prepared statements off (a pooler)."""
    import procrastinate

    kwargs: dict[str, Any] = {} if prepare else {"prepare_threshold": None}
    return procrastinate.App(
        connector=procrastinate.PsycopgConnector(conninfo=dsn, kwargs=kwargs, min_size=1, max_size=4)
    )


async def worker(dsn: str, prepare: bool) -> None:
    """One worker process: the tasks the criteria use, polling (listen_notify off)."""
    from procrastinate import RetryStrategy

    app = make_app(dsn, prepare=prepare)
    events = await asyncpg.connect(dsn, statement_cache_size=0)
    lock = asyncio.Lock()
    pid = os.getpid()

    async def event(job_id: int, kind: str) -> None:
        async with lock:
            await events.execute("insert into events (job, kind, pid) values ($1, $2, $3)", str(job_id), kind, pid)

    @app.task(name="noop")
    async def noop() -> None:
        return None

    @app.task(name="sleep", pass_context=True)
    async def sleep(context: Any, seconds: float) -> None:
        await event(context.job.id, "start")
        await asyncio.sleep(seconds)
        await event(context.job.id, "end")

    @app.task(name="flaky", pass_context=True, retry=RetryStrategy(max_attempts=5))
    async def flaky(context: Any) -> None:
        await event(context.job.id, "start")
        if context.job.attempts < 2:
            raise RuntimeError("measured retry")

    @app.task(name="cancellable", pass_context=True)
    async def cancellable(context: Any) -> None:
        await event(context.job.id, "start")
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            await event(context.job.id, "cancelled")
            raise

    async with app.open_async():
        await app.run_worker_async(
            concurrency=CONCURRENCY,
            listen_notify=False,
            fetch_job_polling_interval=POLL,
            abort_job_polling_interval=POLL,
            update_heartbeat_interval=HEARTBEAT,
            stalled_worker_timeout=STALLED,
        )
    await events.close()


async def install(dsn: str) -> None:
    app = make_app(dsn)
    async with app.open_async():
        await app.schema_manager.apply_schema_async()


async def defer(dsn: str, task: str, kwargs: list[dict[str, Any]], **options: Any) -> list[int]:
    app = make_app(dsn)
    async with app.open_async():
        deferrer = app.configure_task(name=task, **options)
        ids: list[int] = []
        for start in range(0, len(kwargs), 500):
            ids += await deferrer.batch_defer_async(*kwargs[start : start + 500])
        return ids


async def same_transaction(dsn: str) -> str:
    """Finish job A, write a ledger row and defer job B in one psycopg transaction (its SQL functions)."""
    import psycopg

    (job_id,) = await defer(dsn, "stage_a", [{}])
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True, prepare_threshold=None) as connection:
        await connection.execute(
            "update procrastinate_jobs set status = 'doing' where id = %s", (job_id,)
        )  # what fetch_job does

        async def hand_off(fail: bool) -> None:
            async with connection.transaction():
                await connection.execute("insert into ledger (key, amount) values ('a', 0.1)")
                await connection.execute(
                    "select procrastinate_defer_jobs_v1(array[row('default', 'stage_b', 0, null, %s, '{}', null)"
                    "::procrastinate_job_to_defer_v1])",
                    (f"b-after-{job_id}",),
                )
                await connection.execute("select procrastinate_finish_job_v1(%s, 'succeeded', false)", (job_id,))
                if fail:
                    raise RuntimeError("rolled back on purpose")

        with contextlib.suppress(RuntimeError):
            await hand_off(fail=True)
        after_rollback = await _state(connection, job_id)
        await hand_off(fail=False)
        after_commit = await _state(connection, job_id)
    expected = (
        {"ledger": 0, "next_queued": 0, "this_still_doing": 1},
        {"ledger": 1, "next_queued": 1, "this_still_doing": 0},
    )
    verdict = "yes, by calling its SQL functions" if (after_rollback, after_commit) == expected else "NO"
    return f"{verdict} (after rollback {after_rollback}; after commit {after_commit}; no Python API takes a connection)"


async def _state(connection: Any, job_id: int) -> dict[str, int]:
    cursor = await connection.execute(
        """select (select count(*) from ledger),
                  (select count(*) from procrastinate_jobs where task_name = 'stage_b' and status = 'todo'),
                  (select count(*) from procrastinate_jobs where id = %s and status = 'doing')""",
        (job_id,),
    )
    row = await cursor.fetchone()
    return dict(zip(("ledger", "next_queued", "this_still_doing"), map(int, row), strict=True))


def _workers(worker_dsn: str, count: int, prepare: bool = False) -> list[Any]:
    return [spawn(MODULE, ["worker", worker_dsn, "1" if prepare else "0"]) for _ in range(count)]


async def throughput(dsn: str, worker_dsn: str, jobs: int = JOBS, prepare: bool = False) -> float:
    admin = await asyncpg.connect(dsn)
    try:
        await admin.execute("truncate procrastinate_jobs cascade")
        await defer(dsn, "noop", [{}] * jobs)
        processes = _workers(worker_dsn, WORKERS, prepare)
        try:
            await wait_until(
                admin,
                "select not exists (select from procrastinate_jobs where status <> 'succeeded')",
                timeout=max(60.0, jobs / 20),
            )
        finally:
            stop_all(processes)
        seconds = await admin.fetchval(
            """select extract(epoch from max(at) filter (where type = 'succeeded')
                                        - min(at) filter (where type = 'started'))
               from procrastinate_events"""
        )
    finally:
        await admin.close()
    return jobs / float(seconds)


async def kill_and_rerun(dsn: str, worker_dsn: str) -> str:
    """SIGKILL the worker running a job; the documented recipe (get_stalled_jobs + retry_job every POLL s)."""
    app = make_app(dsn)
    admin = await asyncpg.connect(dsn)
    processes = _workers(worker_dsn, 2)
    try:
        async with app.open_async():
            (job_id,) = await defer(dsn, "sleep", [{"seconds": 30}])
            await wait_until(admin, f"select exists (select from events where job = '{job_id}')", timeout=30)
            pid = await admin.fetchval("select pid from events where job = $1", str(job_id))
            os.kill(pid, signal.SIGKILL)
            killed = time.time()
            deadline = time.monotonic() + 60
            while not await admin.fetchval(
                "select count(*) = 2 from events where job = $1 and kind = 'start'", str(job_id)
            ):
                if time.monotonic() > deadline:
                    raise TimeoutError("not re-run within 60 s")
                for stalled in await app.job_manager.get_stalled_jobs(seconds_since_heartbeat=STALLED):
                    await app.job_manager.retry_job(stalled)
                await asyncio.sleep(POLL)
        rerun = await admin.fetchval(
            "select extract(epoch from max(at)) from events where job = $1 and kind = 'start'", str(job_id)
        )
    finally:
        stop_all(processes)
        await admin.close()
    return (
        f"yes, with a loop of our own: re-run {float(rerun) - killed:.2f} s after SIGKILL (heartbeat {HEARTBEAT:g} s,"
        f" stalled after {STALLED:g} s, recipe every {POLL:g} s); nothing re-runs it by itself"
    )


async def retries(dsn: str, worker_dsn: str) -> str:
    admin = await asyncpg.connect(dsn)
    processes = _workers(worker_dsn, 2)
    try:
        (job_id,) = await defer(dsn, "flaky", [{}])
        await wait_until(
            admin,
            f"select exists (select from procrastinate_jobs where id = {job_id} and status = 'succeeded')",
            timeout=30,
        )
        runs = await admin.fetchval("select count(*) from events where job = $1", str(job_id))
    finally:
        stop_all(processes)
        await admin.close()
    return f"yes: RetryStrategy(max_attempts=5), failed twice then succeeded: {runs} runs"


async def cancellation(dsn: str, worker_dsn: str) -> str:
    app = make_app(dsn)
    admin = await asyncpg.connect(dsn)
    processes = _workers(worker_dsn, 2)
    try:
        (job_id,) = await defer(dsn, "cancellable", [{}])
        await wait_until(admin, f"select exists (select from events where job = '{job_id}')", timeout=30)
        async with app.open_async():
            started = time.monotonic()
            await app.job_manager.cancel_job_by_id_async(job_id, abort=True)
        try:
            seen = await wait_until(
                admin, f"select exists (select from events where job = '{job_id}' and kind = 'cancelled')", timeout=10
            )
            result = (
                f"yes: the running async job was cancelled {seen - started:.2f} s after abort (polled every {POLL:g} s)"
            )
        except TimeoutError:
            result = "NO: not cancelled within 10 s"
    finally:
        stop_all(processes)
        await admin.close()
    return result


async def concurrency_limit(dsn: str, worker_dsn: str) -> str:
    admin = await asyncpg.connect(dsn)
    processes = _workers(worker_dsn, WORKERS)
    try:
        ids = await defer(dsn, "sleep", [{"seconds": 0.3}] * 8, lock="one-at-a-time")
        await wait_until(
            admin,
            f"select count(*) = 8 from procrastinate_jobs where id in ({','.join(map(str, ids))})"
            " and status = 'succeeded'",
            timeout=60,
        )
        rows = await spans(admin, ids)
    finally:
        stop_all(processes)
        await admin.close()
    peak = max_overlap(rows)
    return f"only 1 (a `lock`): peak {peak} running at once on 4 processes; no limit of N > 1 across workers"


async def prepared_statements(dsn: str, worker_dsn: str) -> str:
    try:
        rate = await throughput(dsn, worker_dsn, jobs=400, prepare=True)
    except TimeoutError as exc:
        return f"breaks with psycopg's default prepare_threshold (5): {exc}"
    return f"works with psycopg's default prepare_threshold ({rate:.0f} jobs/s)"


async def suite(report: Report, dsn: str, worker_dsn: str, where: str) -> None:
    report.add(
        f"throughput, {WORKERS} processes, {JOBS} no-op jobs ({where})",
        f"{await throughput(dsn, worker_dsn):.0f} jobs/s",
    )
    report.add(f"SIGKILLed worker's job re-run ({where})", await kill_and_rerun(dsn, worker_dsn))
    report.add(f"retries ({where})", await retries(dsn, worker_dsn))
    report.add(f"cancellation of a running job ({where})", await cancellation(dsn, worker_dsn))
    report.add(f"concurrency limit across workers ({where})", await concurrency_limit(dsn, worker_dsn))


async def evaluate() -> Report:
    from importlib.metadata import version

    import procrastinate

    report = Report(ENGINE, f"{version('procrastinate')} (psycopg {version('psycopg')})")
    async with scratch_database(ENGINE) as database:
        dsn = dsn_for(database)
        await install(dsn)
        report.add("enqueue next + complete this + ledger row in one transaction", await same_transaction(dsn))
        await suite(report, dsn, dsn, "direct")
        with pgbouncer() as port:
            pooled = dsn_for(database, port)
            report.add(
                "pooler: server-side prepared statements on (psycopg default)", await prepared_statements(dsn, pooled)
            )
            await suite(report, dsn, pooled, "pgbouncer transaction mode")
    del procrastinate
    return report


if __name__ == "__main__":
    if sys.argv[1:2] == ["worker"]:
        asyncio.run(worker(sys.argv[2], sys.argv[3] == "1"))
    else:
        print(json.dumps(asyncio.run(evaluate()).__dict__, indent=1))
