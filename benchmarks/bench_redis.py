"""Redis benchmark (issue 8), side by side with raw redis-py in the same run.

1. ``RedisClient.get``/``set`` of the same 10 KB value against raw ``redis.asyncio`` on an equivalent pool.
2. ``get_json(key, model=AudioAnalysis)``/``set_json`` of a 10 KB AudioAnalysis against raw redis-py doing the
   same work by hand: ``orjson.dumps(model.model_dump(mode="json"))`` to set, ``model_validate(orjson.loads())``
   to get.
3. ``get_many`` of 100 keys (one MGET) against 100 sequential ``get``s.
4. On a Redis Cluster of three private masters on loopback (started here, stopped by PID): ``get``/``set`` of
   10 KB and ``get_many`` of 100 keys across slots, against raw redis-py's cluster client (``mget_nonatomic``).

64 concurrent tasks, and 64 connections on each side, so that both measure the client and neither its pool's
queue; rounds in ABBA order so the machine's noise falls on both; the best round of each side and the median
of the paired ratios are reported. The machine's Redis is shared: every key lives under a prefix of this
run's own and is deleted at the end (never FLUSHDB).

The raw side's pool waits as long as it takes for a connection (``timeout=None``). With redis-py's default
(20 s) a loaded machine once failed ``make bench`` with "ConnectionError: No connection available.": that
error comes only from redis-py's BlockingConnectionPool, which only the raw side used, and its waiters are
woken unfairly (a task that releases a connection takes it straight back), so one waiter starved for 20 s.
RedisClient queues its callers first come first served on its own semaphore in front of a pool with a spare
connection, and would have turned such a wait into a miss, never an exception.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import signal
import socket
import statistics
import subprocess
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import orjson
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster

from shared.config import Settings
from shared.models import AudioAnalysis, ClipBoundary, Lyric, Mood, SongStructure
from shared.redis_client import RedisClient, build_client

__all__ = ["main"]

TASKS = 64
OPERATIONS = 20_000
ROUNDS = 6
URL = "redis://127.0.0.1:6379/0"


def analysis() -> AudioAnalysis:
    """Return an AudioAnalysis of about 10 KB as JSON."""
    duration = 240.0
    return AudioAnalysis(
        job_id=uuid.uuid4(),
        bpm=128.0,
        duration=duration,
        beat_timestamps=[round(i * 0.469, 3) for i in range(460)],
        song_structure=[
            SongStructure(type=kind, start=start, end=start + 30, energy=0.5)
            for kind, start in zip(
                ["intro", "verse", "chorus", "verse", "chorus", "bridge", "chorus", "outro"],
                range(0, 240, 30),
                strict=True,
            )
        ],
        lyrics=[
            Lyric(text=f"line {i} of the song, a little longer", start=i * 2.5, end=i * 2.5 + 2.0) for i in range(90)
        ],
        mood=Mood(primary="euphoric", secondary=["nostalgic"], energy_level="high", confidence=0.91),
        clip_boundaries=[ClipBoundary(start=i * 5.0, end=i * 5.0 + 5.0) for i in range(48)],
    )


async def _rate(operation: Callable[[int], Awaitable[object]]) -> tuple[float, float]:
    """Return operations per second of wall time and of this process's CPU time, TASKS tasks sharing OPERATIONS.

    The CPU figure is the client's own cost (Redis runs in another process): on a machine shared with other
    work it moves far less than the wall-clock one, which counts every time slice another process took.
    """
    per_task = OPERATIONS // TASKS

    async def worker(offset: int) -> None:
        for i in range(per_task):
            await operation(offset * per_task + i)

    started, cpu = time.perf_counter(), time.process_time()
    await asyncio.gather(*(worker(n) for n in range(TASKS)))
    count = per_task * TASKS
    return count / (time.perf_counter() - started), count / max(time.process_time() - cpu, 1e-9)


async def _compare(ours: Callable[[int], Awaitable[object]], raw: Callable[[int], Awaitable[object]]) -> str:
    best_ours, best_raw, ratios, cpu_ratios = 0.0, 0.0, [], []
    for round_ in range(ROUNDS):
        pair = (ours, raw) if round_ % 2 == 0 else (raw, ours)
        first, second = await _rate(pair[0]), await _rate(pair[1])
        (ours_rate, ours_cpu), (raw_rate, raw_cpu) = (first, second) if round_ % 2 == 0 else (second, first)
        best_ours, best_raw = max(best_ours, ours_rate), max(best_raw, raw_rate)
        ratios.append(ours_rate / raw_rate)
        cpu_ratios.append(ours_cpu / raw_cpu)
    return (
        f"{best_ours:,.0f} | {best_raw:,.0f} | {best_ours / best_raw:.3f} | {statistics.median(ratios):.2f} "
        f"| {statistics.median(cpu_ratios):.2f}"
    )


class _Outages(logging.Handler):
    """Count the client's outage warnings: a round with one measured misses, not Redis."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.count += "unavailable" in record.getMessage()


async def _run() -> str:
    outages = _Outages()
    logging.getLogger("shared.redis_client").addHandler(outages)
    prefix = f"bench:{uuid.uuid4().hex[:12]}:"
    settings = Settings(_env_file=None, redis_url=URL, redis_key_prefix=prefix, redis_max_connections=TASKS)
    cache: RedisClient = build_client(settings)
    raw = aioredis.Redis(
        connection_pool=aioredis.BlockingConnectionPool.from_url(URL, max_connections=TASKS, timeout=None)
    )
    model = analysis()
    blob = model.model_dump_json().encode()
    keys = [f"k{i}" for i in range(100)]
    try:
        await cache.set("blob", blob)
        await cache.set_json("model", model)
        await raw.set(f"{prefix}raw-model", orjson.dumps(model.model_dump(mode="json")))
        await cache.set_many(dict.fromkeys(keys, b"v" * 100))

        async def raw_get_model(_: int) -> AudioAnalysis:
            return AudioAnalysis.model_validate(orjson.loads(await raw.get(f"{prefix}raw-model")))  # type: ignore[arg-type]

        rows = [
            (
                "`set` 10 KB",
                await _compare(
                    lambda i: cache.set(f"s{i % 500}", blob), lambda i: raw.set(f"{prefix}s{i % 500}", blob)
                ),
            ),
            ("`get` 10 KB", await _compare(lambda _: cache.get("blob"), lambda _: raw.get(f"{prefix}blob"))),
            (
                "`set_json` AudioAnalysis",
                await _compare(
                    lambda i: cache.set_json(f"j{i % 500}", model),
                    lambda i: raw.set(f"{prefix}j{i % 500}", orjson.dumps(model.model_dump(mode="json"))),
                ),
            ),
            (
                "`get_json(model=AudioAnalysis)`",
                await _compare(lambda _: cache.get_json("model", model=AudioAnalysis), raw_get_model),
            ),
        ]
        many = []
        for _ in range(20):
            started = time.perf_counter()
            await cache.get_many(keys)
            middle = time.perf_counter()
            for key in keys:
                await cache.get(key)
            many.append((middle - started, time.perf_counter() - middle))
        one_call = min(m[0] for m in many) * 1000
        sequential = min(m[1] for m in many) * 1000
    finally:
        found = [key async for key in raw.scan_iter(match=f"{prefix}*")]
        if found:
            await raw.delete(*found)
        await raw.aclose()
        await cache.aclose()
        logging.getLogger("shared.redis_client").removeHandler(outages)
    size = len(blob)
    lines = [
        f"| {TASKS} tasks, {OPERATIONS:,} ops a round, {ROUNDS} ABBA rounds, value {size:,} bytes "
        "| RedisClient /s (best) | raw redis-py (+ orjson) /s (best) | ours / raw, best / best | median of pairs "
        "| per CPU second, median of pairs |",
        "|---|---:|---:|---:|---:|---:|",
        *(f"| {name} | {figures} |" for name, figures in rows),
        "",
        "| 100 keys | ms (best of 20) |",
        "|---|---:|",
        f"| `get_many` (one MGET) | {one_call:.2f} |",
        f"| 100 sequential `get`s | {sequential:.2f} ({sequential / one_call:.0f}x) |",
        "",
        f"Outages the client saw during the run: {outages.count} (a figure is only valid at 0: an outage turns calls "
        "into instant misses).",
        "Target: at least 0.85 of raw throughput.",
    ]
    return "\n".join(lines)


def _cluster_port() -> int:
    """Return a free loopback port whose cluster-bus port (+10000) is valid and free."""
    while True:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = int(probe.getsockname()[1])
        if port + 10000 <= 65535:
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port + 10000)) != 0:
                    return port


@contextlib.contextmanager
def _private_cluster() -> Iterator[str]:
    """Start three cluster-enabled redis-servers, join them as masters, yield a node's URL; kill them by PID."""
    folder = Path(tempfile.mkdtemp(prefix="vg-bench-cluster-"))
    servers: list[subprocess.Popen[bytes]] = []
    ports = [_cluster_port() for _ in range(3)]
    try:
        for port in ports:
            (folder / str(port)).mkdir()
            servers.append(
                subprocess.Popen(
                    [
                        *("redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", ""),
                        *("--appendonly", "no", "--dir", str(folder / str(port)), "--cluster-enabled", "yes"),
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        for port in ports:
            _wait(lambda port=port: _cli(port, "ping") is not None)  # type: ignore[misc]  # the default binds the loop's port
        subprocess.run(
            ["redis-cli", "--cluster", "create", *(f"127.0.0.1:{p}" for p in ports), "--cluster-yes"],
            capture_output=True,
            check=True,
            timeout=120,
        )
        _wait(lambda: all("cluster_state:ok" in (_cli(port, "cluster", "info") or "") for port in ports))
        yield f"redis://127.0.0.1:{ports[0]}/0"
    finally:
        for server in servers:
            server.send_signal(signal.SIGKILL)
            server.wait()
        shutil.rmtree(folder, ignore_errors=True)


def _cli(port: int, *command: str) -> str | None:
    """Return redis-cli's answer from the node on ``port``, or None when it does not answer."""
    result = subprocess.run(["redis-cli", "-p", str(port), *command], capture_output=True, text=True, check=False)
    return result.stdout if result.returncode == 0 else None


def _wait(ready: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline:
            raise TimeoutError("the private Redis Cluster did not come up")
        time.sleep(0.1)


async def _run_cluster(url: str) -> str:
    settings = Settings(_env_file=None, redis_url=url, redis_cluster=True, redis_max_connections=TASKS)
    cache = build_client(settings)
    raw = RedisCluster.from_url(url, max_connections=TASKS + 1)
    prefix = settings.redis_key_prefix
    blob = b"x" * 10_000
    keys = [f"k{i}" for i in range(100)]
    try:
        # Learn the slots before the first burst, as RedisClient does: 64 tasks on a fresh cluster client hit
        # a race in redis-py (AttributeError: 'NoneType' object has no attribute 'writelines').
        await raw.initialize()
        await cache.set("blob", blob)
        await cache.set_many(dict.fromkeys(keys, b"v" * 100))
        rows = [
            (
                "`set` 10 KB",
                await _compare(
                    lambda i: cache.set(f"s{i % 500}", blob), lambda i: raw.set(f"{prefix}s{i % 500}", blob)
                ),
            ),
            ("`get` 10 KB", await _compare(lambda _: cache.get("blob"), lambda _: raw.get(f"{prefix}blob"))),
            (
                "`get_many` 100 keys across slots",
                await _compare(
                    lambda _: cache.get_many(keys), lambda _: raw.mget_nonatomic([f"{prefix}{key}" for key in keys])
                ),
            ),
        ]
        outages = 0 if cache.available else 1
    finally:
        await raw.aclose()
        await cache.aclose()
    return "\n".join(
        [
            f"| Redis Cluster, 3 private masters, {TASKS} tasks, {ROUNDS} ABBA rounds | RedisClient /s (best) "
            "| raw RedisCluster /s (best) | ours / raw, best / best | median of pairs "
            "| per CPU second, median of pairs |",
            "|---|---:|---:|---:|---:|---:|",
            *(f"| {name} | {figures} |" for name, figures in rows),
            "",
            f"Cluster client down at the end of the run: {'yes' if outages else 'no'}.",
        ]
    )


def main() -> str:
    """Run the Redis benchmark and return its Markdown section."""
    single = asyncio.run(_run())
    if shutil.which("redis-server") is None or shutil.which("redis-cli") is None:
        return single + "\n\n(no redis-server/redis-cli: the cluster section was skipped)"
    with _private_cluster() as url:
        cluster = asyncio.run(_run_cluster(url))
    return single + "\n\n" + cluster
