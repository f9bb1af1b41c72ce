"""Gateway memory soak: does a worker's memory level off under steady traffic, and if not, what grows?

``python -m benchmarks.soak_gateway [SECONDS]`` (default 540; not part of ``make bench``): the example gateway
(``examples.api``) in one uvicorn worker, on a scratch database, the machine's Redis and local storage, with
``tracemalloc`` on (``SOAK_TRACEMALLOC=0``: off, RSS alone). A client sends about 20 requests a second
(2 uploads of a 6 s song, 15 reads of a job, 3 health checks). Every 30 s the worker collects garbage and
records its RSS, the memory tracemalloc traces, and the ten source lines whose traced memory grew most since
the first snapshot after a minute of warm-up.
The report is the trend per minute after warm-up, first half against second half: a plateau shows as a second
half that grows far less than the first.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import random
import secrets
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
import uuid
from pathlib import Path
from typing import cast

import httpx
import jwt

from benchmarks._postgres import scratch_database

__all__ = ["main"]

SUPABASE_URL = "http://127.0.0.1:9"
WARM_UP = 60.0
EVERY = 30.0


def _rss_bytes() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def _snapshots(out: Path) -> None:
    """Record RSS, traced memory and the top growers every EVERY seconds (a thread of the worker)."""
    started = time.monotonic()
    baseline: tracemalloc.Snapshot | None = None
    while True:
        time.sleep(EVERY)
        gc.collect()
        if not tracemalloc.is_tracing():
            with out.open("a") as file:
                record = {"t": round(time.monotonic() - started), "rss": _rss_bytes(), "traced": 0, "top": []}
                file.write(json.dumps(record) + "\n")
            continue
        own = tracemalloc.Filter(inclusive=False, filename_pattern=tracemalloc.__file__)
        snapshot = tracemalloc.take_snapshot().filter_traces([own])
        elapsed = time.monotonic() - started
        top: list[str] = []
        if baseline is None and elapsed >= WARM_UP:
            baseline = snapshot
        elif baseline is not None:
            top = [str(stat) for stat in snapshot.compare_to(baseline, "lineno")[:10]]
            for stat in snapshot.compare_to(baseline, "traceback")[:3]:
                top.append(f"{stat.size_diff:+d} B, {stat.count_diff:+d} blocks, allocated at:")
                top += [f"        {line}" for line in stat.traceback.format(limit=6)]
        record = {
            "t": round(elapsed),
            "rss": _rss_bytes(),
            "traced": tracemalloc.get_traced_memory()[0],
            "top": top,
        }
        with out.open("a") as file:
            file.write(json.dumps(record) + "\n")


def serve_worker(port: int, out: Path) -> None:
    """Run the gateway in this process with tracemalloc and the snapshot thread."""
    if os.environ.get("SOAK_TRACEMALLOC", "1") != "0":  # 0: RSS alone, without tracemalloc's own growth
        tracemalloc.start(6)  # six frames: enough to tell who allocates inside the loop's C code
    threading.Thread(target=_snapshots, args=(out,), daemon=True).start()
    from containers import Container  # noqa: PLC0415 - imported after tracemalloc starts, so it is traced
    from examples.api import create_app  # noqa: PLC0415
    from shared.api.server import serve  # noqa: PLC0415

    container = Container()
    serve(create_app(container), container.settings(), port=port)


def _token(secret: str, user: uuid.UUID) -> str:
    now = int(time.time())
    claims = {
        "iss": f"{SUPABASE_URL}/auth/v1",
        "aud": "authenticated",
        "sub": str(user),
        "role": "authenticated",
        "iat": now,
        "exp": now + 24 * 3600,
    }
    return jwt.encode(claims, secret, algorithm="HS256")


async def _drive(port: int, seconds: float, tokens: list[str]) -> dict[str, int]:
    """Send about 20 requests a second for ``seconds``; return the count of each status."""
    from shared.demo import generate_song  # noqa: PLC0415

    song = generate_song(seconds=6)
    jobs: list[tuple[str, str]] = []
    statuses: dict[str, int] = {}
    base = f"http://127.0.0.1:{port}"
    async with httpx.AsyncClient(base_url=base, timeout=30) as client:

        async def one(kind: str) -> None:
            token = random.choice(tokens)
            headers = {"Authorization": f"Bearer {token}"}
            try:
                if kind == "post":
                    upload = {"audio": ("song.wav", song, "audio/wav")}
                    answer = await client.post("/jobs", headers=headers, files=upload, data={"prompt": "x" * 20})
                    if answer.status_code == 201:
                        jobs.append((token, answer.json()["id"]))
                elif kind == "get" and jobs:
                    owner, job = random.choice(jobs)
                    answer = await client.get(f"/jobs/{job}", headers={"Authorization": f"Bearer {owner}"})
                else:
                    answer = await client.get("/health")
                key = f"{kind} {answer.status_code}"
            except httpx.HTTPError as error:
                key = f"{kind} {type(error).__name__}"
            statuses[key] = statuses.get(key, 0) + 1

        pending: set[asyncio.Task[None]] = set()
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            for kind in ["post"] * 2 + ["get"] * 15 + ["health"] * 3:
                task = asyncio.create_task(one(kind))
                pending.add(task)
                task.add_done_callback(pending.discard)
                await asyncio.sleep(1 / 20)
        await asyncio.gather(*pending)
    return statuses


def _report(records: list[dict[str, object]], statuses: dict[str, int]) -> str:
    after = [record for record in records if float(str(record["t"])) >= WARM_UP]
    lines = ["| t (s) | RSS (MB) | traced (MB) |", "|---|---|---|"]
    lines += [
        f"| {record['t']} | {int(str(record['rss'])) / 1e6:.1f} | {int(str(record['traced'])) / 1e6:.2f} |"
        for record in records
    ]
    if len(after) >= 3:
        middle = len(after) // 2
        for name in ("rss", "traced"):
            first = (int(str(after[middle][name])) - int(str(after[0][name]))) / 1e6
            second = (int(str(after[-1][name])) - int(str(after[middle][name]))) / 1e6
            minutes = (float(str(after[-1]["t"])) - float(str(after[middle]["t"]))) / 60
            lines.append(f"\n{name}: first half +{first:.2f} MB, second half +{second:.2f} MB ({minutes:.1f} min each)")
    lines.append(f"\nrequests: {json.dumps(statuses, sort_keys=True)}")
    if after and after[-1]["top"]:
        lines.append("\ntop growth since warm-up (tracemalloc, by line):\n")
        lines += [f"    {line}" for line in cast("list[str]", after[-1]["top"])]
    return "\n".join(lines)


async def _soak(seconds: float) -> str:
    async with scratch_database() as dsn:
        import asyncpg  # noqa: PLC0415

        connection = await asyncpg.connect(dsn)
        users = [uuid.uuid4() for _ in range(20)]
        await connection.executemany("insert into auth.users (id) values ($1)", [(user,) for user in users])
        await connection.close()
        secret = secrets.token_urlsafe(32)
        with tempfile.TemporaryDirectory() as folder:
            out = Path(folder) / "snapshots.jsonl"
            env = {
                **os.environ,
                "DATABASE_URL": dsn,
                "JWT_SECRET_KEY": secret,
                "SUPABASE_URL": SUPABASE_URL,
                "STORAGE_BACKEND": "local",
                "STORAGE_LOCAL_ROOT": str(Path(folder) / "storage"),
                "LOG_FILE": str(Path(folder) / "gateway.jsonl"),
                "LOG_CONSOLE": "false",
            }
            port = 18000 + random.randrange(1000)
            worker = subprocess.Popen(  # noqa: ASYNC220 - started once, before the load; not on a hot path
                [sys.executable, "-m", "benchmarks.soak_gateway", "--serve", str(port), str(out)], env=env
            )
            try:
                deadline = time.monotonic() + 60
                async with httpx.AsyncClient() as probe:
                    while time.monotonic() < deadline:
                        try:
                            await probe.get(f"http://127.0.0.1:{port}/health")
                            break
                        except httpx.HTTPError:
                            await asyncio.sleep(0.2)
                statuses = await _drive(port, seconds, [_token(secret, user) for user in users])
                await asyncio.sleep(EVERY + 2)  # one snapshot after the load stops
            finally:
                worker.terminate()
                worker.wait(timeout=30)
            records = [json.loads(line) for line in out.read_text().splitlines()]
    return _report(records, statuses)


def main(seconds: float = 540.0) -> str:
    """Run the soak and return its Markdown report."""
    return asyncio.run(_soak(seconds))


if __name__ == "__main__":
    if sys.argv[1:2] == ["--serve"]:
        serve_worker(int(sys.argv[2]), Path(sys.argv[3]))
    else:
        print(main(float(sys.argv[1]) if len(sys.argv) > 1 else 540.0))
