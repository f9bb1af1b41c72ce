"""The stage engine (issue 19) side by side with pgqueuer's own minimal example, in one run.

- stages/s: ``JOBS`` no-op stage items, 4 worker processes (``python -m shared worker``), from the first claim to
  the last completion on the database's clock; pgqueuer's minimal example (bench_pgqueuer_baseline) in the same
  run, as the ratio (goal >= 0.8).
- claim-to-complete: one worker in this process, ``IN_PROCESS`` items at concurrency 1 and 50: the engine's own
  statements per item (claims and completions go in batches: 2 per item when idle, 2 per batch under load) and
  the client CPU per item, against pgqueuer's own dispatch of the same deliveries with an empty handler.
- death to re-run: a worker SIGKILLed while it runs an item; the seconds until another worker claims it, against
  the heartbeat interval (goal <= 2 x).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from benchmarks._postgres import open_client, scratch_database
from benchmarks.bench_pgqueuer_baseline import stages_per_second
from shared.database import DatabaseClient
from shared.jobs import JobRepository
from shared.stages import StageContext, StageQueue, Stages, StageWorker
from shared.testing.users import create_user

__all__ = ["main"]

JOBS = int(os.environ.get("BENCH_STAGES_JOBS", "2000"))
PROCESSES = 4
INTERVAL = 1.0
ROOT = Path(__file__).resolve().parents[1]

stages = Stages()


@stages.handler("clip_generation", max_attempts=5)
async def noop(ctx: StageContext) -> None:
    if ctx.payload.get("sleep"):
        await asyncio.sleep(float(ctx.payload["sleep"]) if ctx.attempt == 1 else 0)


def _start(dsn: str, concurrency: int = 50) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "DATABASE_URL": dsn,
        "ENVIRONMENT": "development",
        "STAGE_HEARTBEAT_INTERVAL_SECONDS": str(INTERVAL),
        "LOG_LEVEL": "WARNING",
    }
    command = [sys.executable, "-m", "shared", "worker", "benchmarks.bench_stages", "--concurrency", str(concurrency)]
    return subprocess.Popen(command, env=env, cwd=ROOT, stdout=subprocess.DEVNULL)


def _stop(processes: list[subprocess.Popen[bytes]]) -> None:
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    for process in processes:
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


async def _engine_rate(jobs: int) -> tuple[float, float]:
    async with scratch_database() as dsn, open_client(dsn) as db:
        job = (await JobRepository(db).create_job(user_id=await create_user(db), audio_url="a", user_prompt="b")).id
        items: dict[str, dict[str, object]] = {str(n): {} for n in range(jobs)}
        await StageQueue(db).submit(job, "clip_generation", items=items)
        workers = [_start(dsn) for _ in range(PROCESSES)]
        try:
            deadline = time.monotonic() + max(120.0, jobs / 10)
            while await db.fetchval("select count(*) from stage_runs where status <> 'completed'"):
                if time.monotonic() > deadline:
                    msg = "the stage workers left items undone"
                    raise TimeoutError(msg)
                await asyncio.sleep(0.1)
        finally:
            _stop(workers)
        seconds = await db.fetchval(
            "select extract(epoch from max(finished_at) - min(started_at))::float8 from stage_runs"
        )
        rerun = await _death_to_rerun(db, job)
    return jobs / float(seconds), rerun


async def _until(db: DatabaseClient, query: str) -> None:
    """Poll ``query`` until it is true (a benchmark's own loop: no event to wait on across processes)."""
    while True:
        if await db.fetchval(query):
            return
        await asyncio.sleep(0.02)


async def _death_to_rerun(db: DatabaseClient, job: uuid.UUID) -> float:
    await StageQueue(db).submit(job, "clip_generation", items={"slow": {"sleep": 30}})
    dsn = await db.fetchval("select 'postgresql://postgres@127.0.0.1:5432/' || current_database()")
    first = _start(dsn, 2)
    try:
        await _until(db, "select status = 'running' from stage_runs where item = 'slow'")
        second = _start(dsn, 2)
        await asyncio.sleep(3)  # the second worker is up and polling
        first.kill()
        first.wait()
        killed = await db.fetchval("select clock_timestamp()")
        await _until(db, "select attempt >= 2 from stage_runs where item = 'slow'")
        claimed = await db.fetchval("select clock_timestamp()")
        _stop([second])
    finally:
        _stop([first])
    return float((claimed - killed).total_seconds())


IN_PROCESS = int(os.environ.get("BENCH_STAGES_IN_PROCESS", "1000"))


async def _in_process(items: int, concurrency: int, *, engine: bool) -> tuple[float, float]:
    """Return (statements of the engine's own per item, client CPU ms per item) for one in-process worker."""
    async with scratch_database() as dsn, open_client(dsn) as db:
        job = (await JobRepository(db).create_job(user_id=await create_user(db), audio_url="a", user_prompt="b")).id
        await StageQueue(db).submit(job, "clip_generation", items={str(n): {} for n in range(items)})
        worker = StageWorker(
            stages, db=db, dsn=dsn, statement_cache_size=100, heartbeat_interval=INTERVAL, concurrency=concurrency
        )
        sent = 0
        delivered = 0
        all_delivered = asyncio.Event()

        def counted(send: Callable[[list[Any]], Awaitable[list[Any]]]) -> Callable[[list[Any]], Awaitable[list[Any]]]:
            async def count(batch: list[Any]) -> list[Any]:
                nonlocal sent
                sent += 1
                return await send(batch)

            return count

        worker._claim._send = counted(worker._claim._send)
        worker._complete_one._send = counted(worker._complete_one._send)
        if not engine:  # pgqueuer's dispatch alone: the delivery reaches our entry point, which returns

            async def nothing(spec: object, run_id: uuid.UUID) -> None:
                nonlocal delivered
                delivered += 1
                if delivered == items:
                    all_delivered.set()

            worker._deliver = nothing  # type: ignore[method-assign]
        task = asyncio.create_task(worker.run())
        cpu = time.process_time()
        if engine:
            await _until(db, "select not exists (select from stage_runs where status <> 'completed')")
        else:
            await all_delivered.wait()
        spent = time.process_time() - cpu
        worker.stop()
        await task
    return sent / items, 1000 * spent / items


def main() -> str:
    """Run both engines in this run and return the Markdown rows."""
    engine, rerun = asyncio.run(_engine_rate(JOBS))
    baseline = asyncio.run(stages_per_second(JOBS, PROCESSES))
    rows = []
    for concurrency in (1, 50):
        own, cpu = asyncio.run(_in_process(IN_PROCESS, concurrency, engine=True))
        _, dispatch = asyncio.run(_in_process(IN_PROCESS, concurrency, engine=False))
        rows.append(
            f"| claim-to-complete, 1 worker in process, concurrency {concurrency}: the engine's statements per item; "
            f"client CPU per item | {own:.2f}; {cpu:.3f} ms | pgqueuer's dispatch alone: {dispatch:.3f} ms "
            f"| {cpu / dispatch:.1f} x the CPU |"
        )
    return (
        "| measure | shared.stages | pgqueuer's minimal example | ratio / goal |\n|---|---|---|---|\n"
        f"| no-op stage items/s, {PROCESSES} processes, {JOBS} items | {engine:.0f} | {baseline:.0f} "
        f"| {engine / baseline:.2f} (goal >= 0.8) |\n"
        f"| SIGKILL to re-run on another worker (heartbeat interval {INTERVAL:g} s) | {rerun:.2f} s | | "
        f"{rerun / INTERVAL:.2f} x the interval (goal <= 2) |\n" + "\n".join(rows)
    )


if __name__ == "__main__":
    print(main())
