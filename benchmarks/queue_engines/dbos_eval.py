"""DBOS Transact, measured on the criteria of issue 19 (direct, and through pgbouncer in transaction mode).

Not in the lock: ``python3.11 -m venv /tmp/qe_dbos && /tmp/qe_dbos/bin/pip install dbos asyncpg``, then from the
repository's root ``/tmp/qe_dbos/bin/python -m benchmarks.queue_engines.dbos_eval``.
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

ENGINE = "dbos"
MODULE = "benchmarks.queue_engines.dbos_eval"
WORKERS = 4
POLL = 0.5
JOBS = int(os.environ.get("QUEUE_EVAL_JOBS", "2000"))


def available() -> bool:
    try:
        import dbos  # noqa: F401
    except ImportError:
        return False
    return True


def _engine_kwargs() -> dict[str, Any]:
    # psycopg's server-side prepared statements off: a transaction pooler cannot keep them.
    return {"connect_args": {"prepare_threshold": None}}


def _sa_url(dsn: str) -> str:
    return dsn.replace("postgresql://", "postgresql+psycopg://", 1)


_EVENTS: list[Any] = []


def _event(job: str, kind: str) -> None:
    import psycopg

    dsn = os.environ["QUEUE_EVAL_EVENTS_DSN"]
    with psycopg.connect(dsn, autocommit=True, prepare_threshold=None) as connection:
        connection.execute("insert into events (job, kind, pid) values (%s, %s, %s)", (job, kind, os.getpid()))


def worker(dsn: str) -> None:
    """One worker process: DBOS launched on ``dsn`` (system database), queues polled every POLL s."""
    from dbos import DBOS

    DBOS(
        config={
            "name": "queue-eval",
            "system_database_url": dsn,
            "use_listen_notify": False,
            "db_engine_kwargs": _engine_kwargs(),
            "log_level": "WARNING",
        }
    )

    @DBOS.workflow(name="noop")
    async def noop() -> None:
        return None

    @DBOS.step(name="sleep_step")
    async def sleep_step(seconds: float) -> None:
        workflow = DBOS.workflow_id or ""
        await asyncio.to_thread(_event, workflow, "start")
        await asyncio.sleep(seconds)
        await asyncio.to_thread(_event, workflow, "end")

    @DBOS.workflow(name="sleep")
    async def sleep(seconds: float) -> None:
        await sleep_step(seconds)

    @DBOS.step(name="flaky_step", retries_allowed=True, max_attempts=5, interval_seconds=0.1, backoff_rate=1.0)
    async def flaky_step() -> None:
        await asyncio.to_thread(_event, DBOS.workflow_id or "", "start")
        _EVENTS.append(1)
        if len(_EVENTS) < 3:
            raise RuntimeError("measured retry")

    @DBOS.workflow(name="flaky")
    async def flaky() -> None:
        await flaky_step()

    stop = asyncio.Event()

    async def main() -> None:
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        DBOS.launch()
        await DBOS.register_queue_async("stages", worker_concurrency=10, polling_interval_sec=POLL)
        await DBOS.register_queue_async("limited", global_concurrency=2, polling_interval_sec=POLL)
        await stop.wait()
        DBOS.destroy(workflow_completion_timeout_sec=0)

    asyncio.run(main())


def _client(dsn: str) -> Any:
    from dbos import DBOSClient

    return (
        DBOSClient(system_database_url=dsn, db_engine_kwargs=_engine_kwargs())
        if False
        else DBOSClient(system_database_url=dsn)
    )


async def enqueue(dsn: str, workflow: str, args: list[tuple[Any, ...]], queue: str = "stages") -> list[str]:
    client = _client(dsn)
    try:
        ids = []
        for arguments in args:
            handle = await client.enqueue_async({"queue_name": queue, "workflow_name": workflow}, *arguments)
            ids.append(handle.get_workflow_id())
        return ids
    finally:
        client.destroy()


async def same_transaction(dsn: str) -> str:
    """A ledger row and the next workflow's enqueue in one SQLAlchemy transaction (enqueue_in_transaction)."""
    import sqlalchemy as sa

    client = _client(dsn)
    engine = sa.create_engine(_sa_url(dsn))
    try:

        def hand_off(fail: bool) -> None:
            with engine.begin() as connection:
                connection.execute(sa.text("insert into ledger (key, amount) values ('a', 0.1)"))
                client.enqueue_in_transaction(
                    connection, {"queue_name": "parked", "workflow_name": "stage_b", "workflow_id": "b-after-a"}
                )
                if fail:
                    raise RuntimeError("rolled back on purpose")

        def state() -> dict[str, int]:
            with engine.connect() as connection:
                ledger = connection.execute(sa.text("select count(*) from ledger")).scalar_one()
                queued = connection.execute(
                    sa.text("select count(*) from dbos.workflow_status where workflow_uuid = 'b-after-a'")
                ).scalar_one()
            return {"ledger": int(ledger), "next_queued": int(queued)}

        with contextlib.suppress(RuntimeError):
            await asyncio.to_thread(hand_off, True)  # noqa: FBT003 - to_thread passes it positionally
        after_rollback = await asyncio.to_thread(state)
        await asyncio.to_thread(hand_off, False)  # noqa: FBT003 - as above
        after_commit = await asyncio.to_thread(state)
    finally:
        client.destroy()
        engine.dispose()
    ok = (after_rollback, after_commit) == ({"ledger": 0, "next_queued": 0}, {"ledger": 1, "next_queued": 1})
    return (
        f"{'yes' if ok else 'NO'} for enqueue + ledger (after rollback {after_rollback}; after commit {after_commit});"
        " completing this step is DBOS's own checkpoint of the workflow, written after the step returns"
        " (a @transaction step of a DBOS data source records its output in its own transaction)"
    )


def _workers(dsn: str, worker_dsn: str, count: int) -> list[Any]:
    return [spawn(MODULE, ["worker", worker_dsn], env={"QUEUE_EVAL_EVENTS_DSN": dsn}) for _ in range(count)]


async def throughput(dsn: str, worker_dsn: str, jobs: int = JOBS) -> float:
    admin = await asyncpg.connect(dsn)
    processes = _workers(dsn, worker_dsn, WORKERS)
    try:
        await enqueue(dsn, "noop", [()] * jobs)
        await wait_until(
            admin,
            "select not exists (select from dbos.workflow_status where name = 'noop' and status <> 'SUCCESS')",
            timeout=max(120.0, jobs / 10),
        )
        seconds = await admin.fetchval(
            "select (max(updated_at) - min(started_at_epoch_ms)) / 1000.0 from dbos.workflow_status where name = 'noop'"
        )
        await admin.execute("delete from dbos.workflow_status where name = 'noop'")
    finally:
        stop_all(processes)
        await admin.close()
    return jobs / float(seconds)


async def kill_and_rerun(dsn: str, worker_dsn: str) -> str:
    admin = await asyncpg.connect(dsn)
    processes = _workers(dsn, worker_dsn, 2)
    try:
        (wid,) = await enqueue(dsn, "sleep", [(30,)])
        await wait_until(admin, f"select exists (select from events where job = '{wid}')", timeout=60)
        pid = await admin.fetchval("select pid from events where job = $1", wid)
        os.kill(pid, signal.SIGKILL)
        killed = time.time()
        query = f"select count(*) = 2 from events where job = '{wid}' and kind = 'start'"
        try:
            await wait_until(admin, query, timeout=20)
            by_live = "re-run by a live worker"
        except TimeoutError:
            by_live = "NOT re-run by the live worker within 20 s"
            started = time.time()
            processes += _workers(dsn, worker_dsn, 1)
            await wait_until(admin, query, timeout=60)
            by_live += f"; a new process (same executor id) re-ran it {time.time() - started:.2f} s after its start"
        rerun = await admin.fetchval("select extract(epoch from max(at)) from events where job = $1", wid)
    finally:
        stop_all(processes)
        await admin.close()
    return f"{by_live} ({float(rerun) - killed:.2f} s after SIGKILL); recovery runs at launch, no heartbeat"


async def retries(dsn: str, worker_dsn: str) -> str:
    admin = await asyncpg.connect(dsn)
    processes = _workers(dsn, worker_dsn, 1)
    try:
        (wid,) = await enqueue(dsn, "flaky", [()])
        await wait_until(
            admin,
            f"select exists (select from dbos.workflow_status where workflow_uuid = '{wid}' and status = 'SUCCESS')",
            timeout=60,
        )
        runs = await admin.fetchval("select count(*) from events where job = $1", wid)
    finally:
        stop_all(processes)
        await admin.close()
    return f"yes: a step with retries_allowed, max_attempts=5: failed twice then succeeded: {runs} runs"


async def cancellation(dsn: str, worker_dsn: str) -> str:
    admin = await asyncpg.connect(dsn)
    processes = _workers(dsn, worker_dsn, 1)
    client = _client(dsn)
    try:
        (wid,) = await enqueue(dsn, "sleep", [(8,)])
        await wait_until(admin, f"select exists (select from events where job = '{wid}')", timeout=60)
        started = time.monotonic()
        await client.cancel_workflow_async(wid)
        try:
            await wait_until(
                admin, f"select exists (select from events where job = '{wid}' and kind = 'end')", timeout=15
            )
            result = (
                f"partly: workflow marked CANCELLED at once, but the running step ran on to its end"
                f" ({time.monotonic() - started:.1f} s later); cancellation takes effect between steps"
            )
        except TimeoutError:
            result = "yes: the running step stopped"
    finally:
        client.destroy()
        stop_all(processes)
        await admin.close()
    return result


async def concurrency_limit(dsn: str, worker_dsn: str) -> str:
    admin = await asyncpg.connect(dsn)
    processes = _workers(dsn, worker_dsn, WORKERS)
    try:
        ids = await enqueue(dsn, "sleep", [(0.3,)] * 12, queue="limited")
        await wait_until(admin, f"select count(*) = 24 from events where job = any('{{{','.join(ids)}}}')", timeout=120)
        rows = await spans(admin, ids)
    finally:
        stop_all(processes)
        await admin.close()
    peak = max_overlap(rows)
    return f"{'yes' if peak <= 2 else 'NO'}: global_concurrency=2 on 4 processes: peak {peak}"


async def suite(report: Report, dsn: str, worker_dsn: str, where: str) -> None:
    report.add(
        f"throughput, {WORKERS} processes, {JOBS} no-op workflows ({where})",
        f"{await throughput(dsn, worker_dsn):.0f} jobs/s",
    )
    report.add(f"SIGKILLed worker's job re-run ({where})", await kill_and_rerun(dsn, worker_dsn))
    report.add(f"retries ({where})", await retries(dsn, worker_dsn))
    report.add(f"cancellation of a running job ({where})", await cancellation(dsn, worker_dsn))
    report.add(f"concurrency limit across workers ({where})", await concurrency_limit(dsn, worker_dsn))


async def evaluate(pooled_only: bool = False) -> Report:
    from importlib.metadata import version

    report = Report(ENGINE, f"{version('dbos')} (psycopg {version('psycopg')}, SQLAlchemy {version('sqlalchemy')})")
    async with scratch_database(ENGINE) as database:
        dsn = dsn_for(database)
        first = _workers(dsn, dsn, 1)  # DBOS.launch() creates the system schema; a client never does
        admin = await asyncpg.connect(dsn)
        try:
            await wait_until(admin, "select to_regclass('dbos.queues') is not null", timeout=60)
            await asyncio.sleep(1)
        finally:
            stop_all(first)
            await admin.close()
        report.add("enqueue next + complete this + ledger row in one transaction", await same_transaction(dsn))
        if not pooled_only:
            await suite(report, dsn, dsn, "direct")
        with pgbouncer() as port:
            await suite(report, dsn, dsn_for(database, port), "pgbouncer transaction mode")
    return report


if __name__ == "__main__":
    if sys.argv[1:2] == ["worker"]:
        worker(sys.argv[2])
    else:
        print(json.dumps(asyncio.run(evaluate()).__dict__, indent=1))
