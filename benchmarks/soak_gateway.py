"""Gateway memory soak: does a gateway worker's memory level off under steady traffic, and if not, what grows?

``python -m benchmarks soak --minutes 30`` (or ``python -m benchmarks.soak_gateway --minutes 30``; not part of
``make bench``) runs, on a scratch database, the machine's Redis and local storage:

- the example gateway (``examples.api``) through ``shared.api.server.serve`` with ``--workers`` (2) uvicorn
  worker processes under the project's supervisor, each with ``tracemalloc`` on (``--traced-workers 1``: the
  first to start only, the other an untraced control in the same run; ``--no-tracemalloc``: none) and a thread
  (``benchmarks._soak_worker``) that records memory every minute and dumps a snapshot every 5 minutes;
- telemetry on (``OTEL_ENABLED``, FastAPI instrumented, a Prometheus endpoint this script scrapes every 15 s as
  Prometheus would; ``--no-otel``: off);
- ``--stage-workers`` (2) ``python -m shared worker benchmarks.soak_stages`` processes running the stages the
  soak submits for each created job, and ``python -m shared maintain --every 20`` beside them;
- a client sending about ``--rate`` (20) requests a second: of every 20, 2 uploads (``POST /jobs``), 12 reads
  of a job by its owner (``GET /jobs/{id}``), 1 read of someone else's job and 1 of a missing one (404), 3 auth
  failures (no token, a token signed with another key, an expired token: 401) and 1 health check. At most 64
  requests are in flight: past that a request is counted as shed, not sent, so a gateway that falls behind
  shows as shed requests and not as a client queueing without bound.

Every 10 s the RSS of every process is sampled from ``/proc``. The report gives, per minute, each gateway
worker's RSS, traced memory and tracemalloc's own bookkeeping (RSS without it is what the worker would hold
untraced), the growth rate (least squares) in the first and last thirds after ``--warm-up``, and the source
lines and tracebacks that grew most from the first dumped snapshot to the last, and from the middle one to the
last. A plateau shows as a last third that grows far less than the first; ``--keep DIR`` keeps the snapshots,
the logs and the report.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt

from benchmarks._postgres import open_client, scratch_database
from benchmarks._soak_worker import compare_dumps, rss_bytes

__all__ = ["main"]

SUPABASE_URL = "http://127.0.0.1:9"
ROOT = Path(__file__).resolve().parents[1]
SAMPLE_EVERY = 10.0
IN_FLIGHT = 64  # requests the client keeps open at most; past it a request is shed (counted, not sent)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _children(pid: int) -> list[int]:
    found: list[int] = []
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            found += [int(child) for child in (task / "children").read_text().split()]
    return found


def _workers(supervisor: int) -> list[int]:
    """The supervisor's worker processes (not multiprocessing's resource tracker)."""
    found = []
    for pid in _children(supervisor):
        with contextlib.suppress(OSError):
            if b"resource_tracker" not in Path(f"/proc/{pid}/cmdline").read_bytes():
                found.append(pid)
    return found


def _cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _token(secret: str, user: uuid.UUID, *, expires_in: int = 3600) -> str:
    now = int(time.time())
    claims = {
        "iss": f"{SUPABASE_URL}/auth/v1",
        "aud": "authenticated",
        "sub": str(user),
        "role": "authenticated",
        "iat": now - 2 * 3600 if expires_in < 0 else now,
        "exp": now + expires_in,
    }
    return jwt.encode(claims, secret, algorithm="HS256")


class Load:
    """The client side: requests by kind and status, latencies per minute, stages submitted."""

    def __init__(self, port: int, secret: str, users: list[uuid.UUID], dsn: str) -> None:
        self.base = f"http://127.0.0.1:{port}"
        self.secret, self.users = secret, users
        self.tokens = [_token(secret, user) for user in users]
        self.tokens_made = time.monotonic()
        self.wrong_key = _token(secrets.token_urlsafe(32), users[0])
        self.expired = _token(secret, users[0], expires_in=-3600)
        self.dsn = dsn
        self.jobs: list[tuple[int, str]] = []  # (owner's index in users, job id)
        self.statuses: dict[str, int] = {}
        self.latencies: dict[int, list[float]] = {}
        self.started = time.monotonic()
        self.stages_submitted = 0

    async def run(self, seconds: float, rate: float) -> None:
        from shared.demo import generate_song  # noqa: PLC0415
        from shared.stages import StageQueue  # noqa: PLC0415

        song = generate_song(seconds=6, rate=16000)  # 192 KB: the client must keep up on a busy host
        mix = ["post"] * 2 + ["get"] * 12 + ["other"] + ["missing"] + ["anonymous", "wrong_key", "expired"] + ["health"]
        async with (
            open_client(self.dsn, db_pool_max_size=4) as db,
            httpx.AsyncClient(base_url=self.base, timeout=30, limits=httpx.Limits(max_connections=IN_FLIGHT)) as client,
        ):
            queue = StageQueue(db)

            async def one(kind: str) -> None:
                if time.monotonic() - self.tokens_made > 600:  # tokens live an hour, as Supabase's do
                    self.tokens = [_token(self.secret, user) for user in self.users]
                    self.tokens_made = time.monotonic()
                user = random.randrange(len(self.tokens))
                token = self.tokens[user]
                headers = {"Authorization": f"Bearer {token}"}
                begun = time.monotonic()
                try:
                    if kind == "post":
                        upload = {"audio": ("song.wav", song, "audio/wav")}
                        data = {"prompt": "a slow neon city at night"}
                        answer = await client.post("/jobs", headers=headers, files=upload, data=data)
                        if answer.status_code == 201:
                            job = answer.json()["id"]
                            self.jobs.append((user, job))
                            await queue.submit(
                                uuid.UUID(job), "audio_analysis", items={"a": {}, "b": {}}, then="scene_planning"
                            )
                            self.stages_submitted += 1
                    elif kind in {"get", "other"} and self.jobs:
                        owner, job = random.choice(self.jobs)
                        if kind == "other":
                            owner = (owner + 1) % len(self.tokens)
                        bearer = {"Authorization": f"Bearer {self.tokens[owner]}"}
                        answer = await client.get(f"/jobs/{job}", headers=bearer)
                    elif kind == "missing":
                        answer = await client.get(f"/jobs/{uuid.uuid4()}", headers=headers)
                    elif kind == "anonymous":
                        answer = await client.get(f"/jobs/{uuid.uuid4()}")
                    elif kind in {"wrong_key", "expired"}:
                        bad = self.wrong_key if kind == "wrong_key" else self.expired
                        answer = await client.get(f"/jobs/{uuid.uuid4()}", headers={"Authorization": f"Bearer {bad}"})
                    else:
                        kind = "health"  # also a read before any job exists
                        answer = await client.get("/health")
                    key = f"{kind} {answer.status_code}"
                except httpx.HTTPError as error:
                    key = f"{kind} {type(error).__name__}"
                minute = int((begun - self.started) // 60)
                self.latencies.setdefault(minute, []).append(time.monotonic() - begun)
                self.statuses[key] = self.statuses.get(key, 0) + 1

            pending: set[asyncio.Task[None]] = set()
            end = time.monotonic() + seconds
            tick = time.monotonic()
            while time.monotonic() < end:
                for kind in random.sample(mix, len(mix)):
                    tick += 1 / rate
                    if len(pending) >= IN_FLIGHT:
                        # The gateway is behind: count the request as shed rather than queue it in the client
                        # (thousands queued in httpx's pool made the client itself spin, and the load stopped).
                        self.statuses[f"{kind} shed"] = self.statuses.get(f"{kind} shed", 0) + 1
                        await asyncio.sleep(max(0.0, tick - time.monotonic()))
                        continue
                    task = asyncio.create_task(one(kind))
                    pending.add(task)
                    task.add_done_callback(pending.discard)
                    await asyncio.sleep(max(0.0, tick - time.monotonic()))
            await asyncio.gather(*pending)


async def _scrape(port: int, stop: asyncio.Event, found: dict[str, Any]) -> None:
    """Read /metrics every 15 s as Prometheus would; keep the count of scrapes, series and metric names."""
    async with httpx.AsyncClient(timeout=10) as client:
        while not stop.is_set():
            with contextlib.suppress(httpx.HTTPError):
                answer = await client.get(f"http://127.0.0.1:{port}/metrics")
                if answer.status_code == 200:
                    samples = [line for line in answer.text.splitlines() if line and not line.startswith("#")]
                    found["scrapes"] = found.get("scrapes", 0) + 1
                    found["series"] = len(samples)
                    found["bytes"] = len(answer.content)
                    found.setdefault("series_by_scrape", []).append(len(samples))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 15)


async def _sample(supervisor: int, others: dict[str, int], stop: asyncio.Event, out: list[dict[str, Any]]) -> None:
    """Every SAMPLE_EVERY seconds: the RSS and CPU seconds of each gateway worker and of the other processes."""
    started = time.monotonic()
    while not stop.is_set():
        row: dict[str, Any] = {"t": round(time.monotonic() - started), "load": os.getloadavg()[0], "rss": {}, "cpu": {}}
        for pid in _workers(supervisor):
            row["rss"][f"gateway {pid}"] = rss_bytes(pid)
            row["cpu"][f"gateway {pid}"] = _cpu_seconds(pid)
        row["rss"]["supervisor"] = rss_bytes(supervisor)
        for name, pid in others.items():
            row["rss"][name] = rss_bytes(pid)
        out.append(row)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), SAMPLE_EVERY)


@contextlib.contextmanager
def _processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    try:
        yield started
    finally:
        for process in started:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in started:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _slope(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (minute, MB) points, in MB a minute."""
    if len(points) < 2:
        return float("nan")
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    mean_x, mean_y = statistics.fmean(xs), statistics.fmean(ys)
    spread = sum((x - mean_x) ** 2 for x in xs)
    return sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / spread if spread else float("nan")


def _thirds(points: list[tuple[float, float]]) -> str:
    third = len(points) // 3
    if third < 2:
        return "too short for thirds"
    first, last = _slope(points[:third]), _slope(points[-third:])
    return (
        f"{first:+.3f} MB/min in the first third, {last:+.3f} MB/min in the last third, {_slope(points):+.3f} overall"
    )


def _report(folder: Path, samples: list[dict[str, Any]], load: Load, scrape: dict[str, Any], args: Any) -> str:
    lines: list[str] = []
    loads = [row["load"] for row in samples]
    lines.append(
        f"{args.minutes:g} min, {args.workers} gateway workers, {args.stage_workers} stage workers, maintain every"
        f" {args.maintain_every:g} s, ~{args.rate:g} requests/s, tracemalloc {'off' if args.no_tracemalloc else 'on'},"
        f" telemetry {'off' if args.no_otel else 'on'}; {os.cpu_count()} CPUs, load average (1 min) during the run"
        f" {min(loads):.1f}-{max(loads):.1f}, median {statistics.median(loads):.1f}"
    )
    total = sum(load.statuses.values())
    lines.append(
        f"\nrequests: {total} ({total / (args.minutes * 60):.1f}/s): {json.dumps(load.statuses, sort_keys=True)}"
    )
    lines.append(
        f"stage submissions: {load.stages_submitted}; Prometheus scrapes: {scrape.get('scrapes', 0)}, "
        f"series per scrape {min(scrape.get('series_by_scrape', [0]))}-{max(scrape.get('series_by_scrape', [0]))}"
    )
    latency = {m: sorted(v) for m, v in load.latencies.items()}
    lines.append(
        "latency per minute (p50/p95 ms): "
        + ", ".join(
            f"{m}: {v[len(v) // 2] * 1000:.0f}/{v[int(len(v) * 0.95)] * 1000:.0f}" for m, v in sorted(latency.items())
        )
    )
    workers: dict[int, list[dict[str, Any]]] = {}
    for path in sorted(folder.glob("worker-*.jsonl")):
        records = [json.loads(line) for line in path.read_text().splitlines()]
        if records:
            workers[records[0]["pid"]] = records
    for pid, records in workers.items():
        tracing = "tracemalloc on" if records[-1].get("tracing") else "tracemalloc off (the control)"
        lines.append(f"\n### {records[-1].get('role', 'gateway worker')} {pid}, {tracing}\n")
        lines.append("| min | RSS (MB) | traced (MB) | tracemalloc's own (MB) | RSS - own (MB) | gc objects |")
        lines.append("|---|---|---|---|---|---|")
        rss_points, traced_points, untraced_points, objects_points = [], [], [], []
        for record in records:
            minute = record["t"] / 60
            rss, traced, own = record["rss"] / 1e6, record["traced"] / 1e6, record["tracemalloc_own"] / 1e6
            lines.append(
                f"| {minute:.0f} | {rss:.1f} | {traced:.2f} | {own:.1f} | {rss - own:.1f} | {record['objects']} |"
            )
            if record["t"] >= args.warm_up:
                rss_points.append((minute, rss))
                traced_points.append((minute, traced))
                untraced_points.append((minute, rss - own))
                objects_points.append((minute, record["objects"] / 1e6))
        lines.append(f"\nRSS: {_thirds(rss_points)}")
        lines.append(f"traced: {_thirds(traced_points)}")
        lines.append(f"RSS without tracemalloc's own: {_thirds(untraced_points)}")
        lines.append(f"gc objects (millions): {_thirds(objects_points)}")
        dumps = [folder / record["dump"] for record in records if record.get("dump")]
        if len(dumps) >= 2:
            lines.append(f"\ngrowth from {dumps[0].name} to {dumps[-1].name} (tracemalloc):\n")
            lines += [f"    {line}" for line in compare_dumps(dumps[0], dumps[-1])]
        if len(dumps) >= 3:
            middle = dumps[len(dumps) // 2]
            lines.append(f"\ngrowth in the second half, from {middle.name} to {dumps[-1].name}:\n")
            lines += [f"    {line}" for line in compare_dumps(middle, dumps[-1], count=3)]
    lines.append("\n### RSS of every process, MB, each minute (10 s samples)\n")
    names = sorted({name for row in samples for name in row["rss"]})
    lines.append("| min | load | " + " | ".join(names) + " |")
    lines.append("|---|---|" + "---|" * len(names))
    for row in samples:
        if row["t"] % 60 < SAMPLE_EVERY:
            cells = [f"{row['rss'].get(name, 0) / 1e6:.1f}" if name in row["rss"] else "" for name in names]
            lines.append(f"| {row['t'] / 60:.0f} | {row['load']:.1f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


async def _soak(args: Any) -> str:
    async with scratch_database() as dsn:
        import asyncpg  # noqa: PLC0415

        connection = await asyncpg.connect(dsn)
        users = [uuid.uuid4() for _ in range(20)]
        await connection.executemany("insert into auth.users (id) values ($1)", [(user,) for user in users])
        await connection.close()
        secret = secrets.token_urlsafe(32)
        keep = Path(args.keep) if args.keep else None
        with tempfile.TemporaryDirectory(prefix="soak-") as scratch:
            folder = keep or Path(scratch)
            folder.mkdir(parents=True, exist_ok=True)
            port, metrics_port = _free_port(), _free_port()
            env = {
                **os.environ,
                "PYTHONPATH": str(ROOT),
                "ENVIRONMENT": "development",
                "DATABASE_URL": dsn,
                "DB_POOL_MAX_SIZE": "8",
                "JWT_SECRET_KEY": secret,
                "SUPABASE_URL": SUPABASE_URL,
                "STORAGE_BACKEND": "local",
                "STORAGE_LOCAL_ROOT": str(folder / "storage"),
                "LOG_FILE": str(folder / "pipeline.jsonl"),
                "LOG_MAX_BYTES": str(20 * 1024 * 1024),
                "LOG_BACKUP_COUNT": "3",
                "LOG_CONSOLE": "false",
                "API_WORKERS": str(args.workers),
                # tracemalloc slows imports several times; on this shared host a worker took over 60 s to start
                "API_WORKER_STARTUP_GRACE_SECONDS": "300",
                # A snapshot's dump holds the worker's GIL for seconds on a busy host; the supervisor's 5 s health
                # ping killed a traced worker during one in the 30-minute run.
                "API_WORKER_HEALTHCHECK_SECONDS": "60",
                "STARTUP_TIMEOUT_SECONDS": "120",  # the container's resources, opened in each worker's lifespan
                "STAGE_HEARTBEAT_INTERVAL_SECONDS": "5",
                "SOAK_OUT": str(folder),
                "SOAK_EVERY": str(args.every),
                "SOAK_WARMUP": str(args.warm_up),
                "SOAK_DUMP_EVERY": str(args.dump_every),
                "SOAK_TRACEMALLOC": "0" if args.no_tracemalloc else "1",
                "SOAK_TRACED_WORKERS": str(args.workers if args.traced_workers is None else args.traced_workers),
            }
            if not args.no_otel:
                env |= {
                    "OTEL_ENABLED": "true",
                    "OTEL_SERVICE_NAME": "soak",
                    "OTEL_EXPORTER_PROMETHEUS_PORT": str(metrics_port),
                }
            stop = asyncio.Event()
            samples: list[dict[str, Any]] = []
            scrape: dict[str, Any] = {}
            with _processes() as started:

                def start(argv: list[str], name: str) -> subprocess.Popen[bytes]:
                    log = (folder / f"{name}.stderr").open("wb")
                    # The Prometheus port is the gateway's: a stage worker started first would take it.
                    own = env if name == "gateway" else {k: v for k, v in env.items() if "PROMETHEUS" not in k}
                    process = subprocess.Popen([sys.executable, *argv], env=own, cwd=ROOT, stdout=log, stderr=log)
                    started.append(process)
                    return process

                gateway = start(["-m", "benchmarks.soak_gateway", "--serve", str(port)], "gateway")
                others = {
                    f"stage worker {n}": start(
                        [
                            "-m",
                            "benchmarks._soak_worker" if args.trace_stage_workers else "shared",
                            "worker",
                            "benchmarks.soak_stages",
                            "--concurrency",
                            "4",
                        ],
                        f"stage-{n}",
                    ).pid
                    for n in range(args.stage_workers)
                }
                if args.maintain_every > 0:
                    others["maintain"] = start(
                        ["-m", "shared", "maintain", "--every", str(args.maintain_every)], "maintain"
                    ).pid
                deadline = time.monotonic() + 360
                async with httpx.AsyncClient() as probe:
                    while True:
                        with contextlib.suppress(httpx.HTTPError):
                            if (await probe.get(f"http://127.0.0.1:{port}/health")).status_code < 500:
                                break
                        if gateway.poll() is not None or time.monotonic() > deadline:
                            raise RuntimeError((folder / "gateway.stderr").read_text()[-3000:])
                        await asyncio.sleep(0.5)
                load = Load(port, secret, users, dsn)
                tasks = [asyncio.create_task(_sample(gateway.pid, others, stop, samples))]
                if not args.no_otel:
                    tasks.append(asyncio.create_task(_scrape(metrics_port, stop, scrape)))
                try:
                    await load.run(args.minutes * 60, args.rate)
                    (folder / "final").touch()  # each worker dumps one last snapshot
                    await asyncio.sleep(args.every + 5)
                finally:
                    stop.set()
                    await asyncio.gather(*tasks)
                report = _report(folder, samples, load, scrape, args)
            (folder / "report.md").write_text(report)
            return report


def _serve(port: int) -> None:
    """The gateway process: the project's supervisor with API_WORKERS traced workers."""
    from shared.api.server import serve  # noqa: PLC0415
    from shared.config import Settings  # noqa: PLC0415

    serve("benchmarks._soak_worker:traced_app", Settings(), port=port, factory=True)


def _arguments(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks soak", description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=30.0, help="minutes of load (default 30)")
    parser.add_argument("--rate", type=float, default=20.0, help="requests a second (default 20)")
    parser.add_argument("--workers", type=int, default=2, help="gateway worker processes (default 2)")
    parser.add_argument("--stage-workers", type=int, default=2, help="python -m shared worker processes (default 2)")
    parser.add_argument("--maintain-every", type=float, default=20.0, help="maintain's period in s, 0: none")
    parser.add_argument("--every", type=float, default=60.0, help="seconds between memory records (default 60)")
    parser.add_argument("--dump-every", type=float, default=300.0, help="seconds between dumped snapshots")
    parser.add_argument("--warm-up", type=float, default=120.0, help="seconds before the baseline snapshot")
    parser.add_argument("--no-tracemalloc", action="store_true", help="RSS alone, without tracemalloc's cost")
    parser.add_argument(
        "--traced-workers",
        type=int,
        help="trace only the first N workers to start (default all); the others' RSS is the control without "
        "tracemalloc's own memory and slowdown",
    )
    parser.add_argument("--no-otel", action="store_true", help="telemetry off")
    parser.add_argument("--trace-stage-workers", action="store_true", help="the stage workers under tracemalloc too")
    parser.add_argument("--keep", help="keep the snapshots, logs and report in this folder")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> str:
    """Run the soak with ``argv``'s options and return its Markdown report."""
    return asyncio.run(_soak(_arguments(sys.argv[1:] if argv is None else argv)))


if __name__ == "__main__":
    if sys.argv[1:2] == ["--serve"]:
        _serve(int(sys.argv[2]))
    else:
        print(main())
