"""SIGKILL stage workers at random await points: every item completes exactly once, nothing doubled or lost.

``STAGE_KILLS`` kills (default 12 here; the issue's 200 with ``STAGE_KILLS=200``) of 3 worker processes while they
run 40 items, on the real PostgreSQL. Then: every item completed once, one ledger row and one artifact per item,
one real payment per item (the checkpoint), no reservation held.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from shared.database import DatabaseClient
from shared.jobs import JobRepository
from shared.stages import StageQueue
from tests.fixtures.postgres import MakeUser

pytestmark = [pytest.mark.slow, pytest.mark.time_limit(600)]
ROOT = Path(__file__).resolve().parents[2]
KILLS = int(os.environ.get("STAGE_KILLS", "12"))
ITEMS = 40


def _worker(dsn: str) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "DATABASE_URL": dsn,
        "STAGE_HEARTBEAT_INTERVAL_SECONDS": "0.5",
        "ENVIRONMENT": "development",
        "PYTHONPATH": str(ROOT),
        "LOG_LEVEL": "WARNING",
    }
    command = [sys.executable, "-m", "shared", "worker", "tests.integration.stage_kill_module", "--concurrency", "4"]
    return subprocess.Popen(command, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


async def test_sigkilled_workers_complete_every_item_exactly_once(
    db: DatabaseClient, jobs: JobRepository, make_user: MakeUser, pg_dsn: str
) -> None:
    await db.execute("create table stage_effects (run_id uuid, item text, name text, attempt int)")
    await db.execute("create table stage_artifacts (key text primary key, item text)")
    job = (await jobs.create_job(user_id=await make_user(), audio_url="a.mp3", user_prompt="neon city")).id
    await StageQueue(db).submit(job, "clip_generation", items={str(n): {} for n in range(ITEMS)})
    workers = [_worker(pg_dsn) for _ in range(3)]
    killed = 0
    deadline = time.monotonic() + 600
    try:
        while killed < KILLS and time.monotonic() < deadline:
            holders = await db.fetch("select distinct worker from stage_runs where status = 'running'")
            pids = {int(str(row["worker"]).rsplit(":", 1)[1]) for row in holders}
            busy = [n for n, process in enumerate(workers) if process.pid in pids]
            if not busy:
                if not await db.fetchval("select count(*) from stage_runs where status <> 'completed'"):
                    await StageQueue(db).submit(  # keep work flowing until every kill has landed
                        job, "clip_generation", items={f"{killed}-{n}": {} for n in range(10)}
                    )
                await asyncio.sleep(0.05)
                continue
            await asyncio.sleep(random.uniform(0, 0.08))
            victim = random.choice(busy)
            workers[victim].send_signal(signal.SIGKILL)
            workers[victim].wait()
            killed += 1
            workers[victim] = _worker(pg_dsn)
        while await db.fetchval("select count(*) from stage_runs where status <> 'completed'"):
            assert time.monotonic() < deadline, await db.fetch("select item, status, attempt from stage_runs")
            await asyncio.sleep(0.2)
    finally:
        for process in workers:
            process.send_signal(signal.SIGTERM)
        for process in workers:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
    items = await db.fetchval("select count(*) from stage_runs where job_id = $1", job)
    assert killed == KILLS
    assert items == await db.fetchval("select count(*) from stage_runs where status = 'completed'")
    assert items == await db.fetchval("select count(*) from job_costs where job_id = $1", job)  # 0 doubled or lost
    assert items == await db.fetchval("select count(*) from stage_artifacts")
    assert items == await db.fetchval("select count(*) from stage_effects where name = 'paid'")  # paid once each
    assert 0 == await db.fetchval("select count(*) from job_cost_reservations where status = 'active'")
