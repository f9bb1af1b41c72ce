"""Saturation: 4 processes drive a fake provider at many times its limits for 60 s; the limits hold throughout.

The limiter's Redis is frozen (SIGSTOP) for 4 s and later killed and restarted empty during the run: no call is
admitted while it is down (fail closed), and none for a window after it came back empty.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path

import pytest

from shared.database import DatabaseClient
from shared.jobs import JobRepository
from tests.fixtures.postgres import MakeUser
from tests.fixtures.redis import RedisServer
from tests.fixtures.servers import free_port, wait_for_port
from tests.integration.paid_saturation_parts import CONCURRENCY, RPM, RPS, TPM

ROOT = Path(__file__).resolve().parents[2]
SECONDS = 60
WORKERS = 4
TASKS = 10  # per worker: 40 callers against 4 slots, 8 per second


def most_in_window(times: list[int], weights: list[int], width: int) -> int:
    """Return the largest sum of weights of grants within any half-open window [t, t + width) starting at a grant."""
    best = 0
    j = 0
    total = 0
    for i in range(len(times)):
        while j < len(times) and times[j] < times[i] + width:
            total += weights[j]
            j += 1
        best = max(best, total)
        total -= weights[i]
    return best


@pytest.mark.slow
async def test_limits_hold_under_saturation_with_the_store_frozen_and_killed(
    tmp_path: Path, pg_dsn: str, db: DatabaseClient, make_user: MakeUser, redis_server: Callable[[], RedisServer]
) -> None:
    job = await JobRepository(db).create_job(
        user_id=await make_user(), audio_url="a.mp3", user_prompt="p", budget_limit=Decimal(1000)
    )
    store = redis_server()
    fake_port = free_port()
    fake_log = tmp_path / "fake.jsonl"
    fake = subprocess.Popen(
        [sys.executable, "-m", "tests.integration.paid_saturation_parts", "fake", str(fake_port), str(fake_log)],
        cwd=ROOT,
    )
    workers: list[subprocess.Popen[bytes]] = []
    try:
        wait_for_port(fake_port)
        outs = [tmp_path / f"worker{n}.jsonl" for n in range(WORKERS)]
        for out in outs:
            config = {
                "dsn": pg_dsn,
                "redis": store.url,
                "job": str(job.id),
                "fake": f"http://127.0.0.1:{fake_port}",
                "seconds": SECONDS,
                "tasks": TASKS,
                "out": str(out),
            }
            workers.append(
                subprocess.Popen(
                    [sys.executable, "-m", "tests.integration.paid_saturation_parts", "worker", json.dumps(config)],
                    cwd=ROOT,
                )
            )
        # The timeline starts once calls flow (the workers' start-up takes 2-10 s on this shared machine).
        for _ in range(600):
            if fake_log.exists() and len(fake_log.read_text().splitlines()) >= 10:
                break
            await asyncio.sleep(0.1)
        await asyncio.sleep(5)
        frozen_at = time.time()
        store.freeze()
        await asyncio.sleep(4)
        store.thaw()
        thawed_at = time.time()
        await asyncio.sleep(30)
        killed_at = time.time()
        store.kill()
        await asyncio.sleep(2)
        store.start()  # the same port, empty
        for worker in workers:
            await asyncio.to_thread(worker.wait, SECONDS + 60)
        assert [0] * WORKERS == [worker.returncode for worker in workers]
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
        fake.terminate()
        fake.wait()

    events = [json.loads(line) for out in outs for line in out.read_text().splitlines()]
    grants = sorted((e["granted"], e["tokens"]) for e in events if "granted" in e)
    times = [at for at, _ in grants]
    assert len(grants) > RPM * 0.6  # the run admitted calls, enough for the minute's limit to bind
    assert most_in_window(times, [1] * len(times), 1000) <= RPS
    assert most_in_window(times, [1] * len(times), 60_000) <= RPM
    assert most_in_window(times, [tokens for _, tokens in grants], 60_000) <= TPM

    calls = [json.loads(line) for line in fake_log.read_text().splitlines()]
    assert max(call["inflight"] for call in calls) <= CONCURRENCY
    refused = sum(1 for call in calls if call["status"] == 429)
    assert refused <= 0.01 * len(calls), f"{refused} of {len(calls)} calls were refused with 429"

    # Fail closed: no grant while frozen (after the client's time bound), none after the kill (empty store: held).
    assert not [at for at in times if frozen_at + 1.1 < at / 1000 < thawed_at - 0.05]
    assert not [at for at in times if at / 1000 > killed_at]
    downs = [e["down"] for e in events if "down" in e]
    assert [d for d in downs if frozen_at < d < thawed_at + 1]
    assert [d for d in downs if d > killed_at]

    active = await db.fetchval(
        "select count(*) from job_cost_reservations where job_id = $1 and status = 'active'", job.id
    )
    assert 0 == active
    costs = await db.fetchval("select count(*) from job_costs where job_id = $1 and usage is not null", job.id)
    assert costs == sum(1 for e in events if "cost" in e)
