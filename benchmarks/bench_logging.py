"""Logging and start-up benchmarks, each side by side with its baseline in the same run.

1. JSON lines per second written to a file: our LoggerFactory (queue + writer thread, redaction on), as it
   runs by default (``lean``: its own caller lookup for ``module``) and with the standard library's
   findCaller (``lean=False``), against python-json-logger (a FileHandler with its JsonFormatter) and
   structlog at its fastest (native bound logger, orjson renderer, BytesLoggerFactory), on the same record.
   Rounds are interleaved (ABCD ABCD...) so the machine's noise falls on every contender alike; the best
   round of each and the median of the per-round ratios against structlog are reported. A profile of the
   ``lean=False`` run shows what findCaller costs.
2. The longest event-loop stall while 100,000 lines are logged from async code.
3. Start-up: ``python -c "import containers; containers.Container()"`` against
   ``python -c "import pydantic_settings"``.
"""

from __future__ import annotations

import asyncio
import cProfile
import functools
import logging
import pstats
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import orjson
import structlog
from pythonjsonlogger.json import JsonFormatter as PythonJsonFormatter

from shared.logging import LoggerFactory, job_context

__all__ = ["main"]

LINES = 100_000
ROUNDS = 5
SECRETS = ["sb_secret_benchmark-secret-value", "sk-benchmark-key-0123456789"]


def ours(directory: Path, *, lean: bool = True) -> float:
    """Return lines/s through the LoggerFactory, until every line is flushed to the file."""
    factory = LoggerFactory(
        level="INFO", secrets=SECRETS, stream=None, log_file=directory / "ours.jsonl", root="b.o", lean=lean
    )
    factory.start()
    log = factory.get_logger("b.o.stage")
    started = time.perf_counter()
    with job_context(job_id="2b0c3e9e-3f4d-4c1e-9a55-6f7d8e9a0b1c", stage="clip_generation"):
        for i in range(LINES):
            log.info("clip generated", extra={"clip_index": i, "duration": 4.5})
    factory.stop()
    return LINES / (time.perf_counter() - started)


def python_json_logger(directory: Path) -> float:
    """Return lines/s through python-json-logger on a plain FileHandler."""
    log = logging.getLogger("b.pjl")
    log.propagate = False
    log.setLevel(logging.INFO)
    handler = logging.FileHandler(directory / "pjl.jsonl")
    handler.setFormatter(PythonJsonFormatter("%(asctime)s %(levelname)s %(name)s %(module)s %(message)s"))
    log.addHandler(handler)
    started = time.perf_counter()
    for i in range(LINES):
        log.info(
            "clip generated",
            extra={
                "clip_index": i,
                "duration": 4.5,
                "job_id": "2b0c3e9e-3f4d-4c1e-9a55-6f7d8e9a0b1c",
                "stage": "clip_generation",
            },
        )
    handler.close()
    log.removeHandler(handler)
    return LINES / (time.perf_counter() - started)


def structlog_fastest(directory: Path) -> float:
    """Return lines/s through structlog configured as its docs recommend for speed."""
    with (directory / "structlog.jsonl").open("wb") as sink:
        structlog.configure(
            cache_logger_on_first_use=True,
            wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
            processors=[
                structlog.contextvars.merge_contextvars,
                structlog.processors.add_log_level,
                structlog.processors.TimeStamper(fmt="iso", utc=True),
                structlog.processors.JSONRenderer(serializer=orjson.dumps),
            ],
            logger_factory=structlog.BytesLoggerFactory(sink),
        )
        log = structlog.get_logger("b.structlog")
        structlog.contextvars.bind_contextvars(job_id="2b0c3e9e-3f4d-4c1e-9a55-6f7d8e9a0b1c", stage="clip_generation")
        started = time.perf_counter()
        for i in range(LINES):
            log.info("clip generated", clip_index=i, duration=4.5)
        elapsed = time.perf_counter() - started
        structlog.contextvars.clear_contextvars()
        structlog.reset_defaults()
    return LINES / elapsed


async def _longest_stall(directory: Path) -> tuple[float, float]:
    """Log LINES lines from a coroutine while a ticker measures the longest gap between its turns."""
    factory = LoggerFactory(level="INFO", secrets=SECRETS, stream=None, log_file=directory / "stall.jsonl", root="b.s")
    factory.start()
    log = factory.get_logger("b.s.stage")
    gaps: list[float] = []
    done = asyncio.Event()

    async def ticker() -> None:
        last = time.perf_counter()
        while not done.is_set():
            await asyncio.sleep(0)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    async def producer() -> None:
        with job_context(job_id="stall-test", stage="clip_generation"):
            for i in range(LINES):
                log.info("clip generated", extra={"clip_index": i})
                if i % 10 == 0:
                    await asyncio.sleep(0)
        done.set()

    task = asyncio.create_task(ticker())
    await producer()
    await task
    factory.stop()
    return max(gaps) * 1000, statistics.quantiles(gaps, n=1000)[-1] * 1000


def _startup(code: str, runs: int = 7) -> float:
    """Return the median wall time of a fresh interpreter running ``code``."""
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def _caller_share(directory: Path) -> tuple[float, float]:
    """Return the shares of a ``lean=False`` run's time spent in findCaller and in LogRecord's constructor."""
    profile = cProfile.Profile()
    profile.runcall(ours, directory, lean=False)
    stats = pstats.Stats(profile).stats  # type: ignore[attr-defined]  # filled by the constructor, not in the stub
    total = max(entry[3] for entry in stats.values())  # the cumulative time of the outermost call
    find = sum(entry[3] for (_, _, name), entry in stats.items() if name == "findCaller")
    record = sum(entry[3] for (file, _, name), entry in stats.items() if name == "__init__" and "logging" in file)
    return find / total, record / total


STRUCTLOG = "structlog (orjson, BytesLogger)"
OURS = "videogen LoggerFactory (default, lean)"


def main() -> str:
    """Run every logging and start-up measurement and return a Markdown report."""
    contenders: dict[str, Callable[[Path], float]] = {
        OURS: ours,
        "videogen LoggerFactory (lean=False: stdlib findCaller)": functools.partial(ours, lean=False),
        "python-json-logger": python_json_logger,
        STRUCTLOG: structlog_fastest,
    }
    rates: dict[str, list[float]] = {name: [] for name in contenders}
    with tempfile.TemporaryDirectory() as folder:
        directory = Path(folder)
        for _ in range(ROUNDS):
            for name, run in contenders.items():
                rates[name].append(run(directory))
        stalls = [asyncio.run(_longest_stall(directory)) for _ in range(ROUNDS)]
        stall_max, stall_p999 = min(stalls)
        find_share, record_share = _caller_share(directory)
    structlog_rates = rates[STRUCTLOG]
    rows = [
        f"| JSON lines to a file (100,000; {ROUNDS} interleaved rounds) | lines/s (best) | / structlog, best / best "
        "| / structlog, median of rounds |",
        "|---|---:|---:|---:|",
    ]
    rows += [
        f"| {name} | {max(rate):,.0f} | {max(rate) / max(structlog_rates):.2f} "
        f"| {statistics.median(a / b for a, b in zip(rate, structlog_rates, strict=True)):.2f} |"
        for name, rate in rates.items()
    ]
    rows += [
        "",
        f"Profile of the `lean=False` run: the standard library's findCaller (for the `module` field) takes "
        f"{find_share:.0%} of the time and LogRecord's constructor {record_share:.0%}. The default (`lean`) "
        "builds records with a constructor that does only what a line uses and finds the caller by comparing "
        "code objects' file names (shared._lean_records._LeanRecord). Target: at least 0.7 x structlog.",
    ]
    rows += [
        "",
        "| Event loop while 100,000 lines are logged from a coroutine | ms |",
        "|---|---:|",
        f"| longest stall (best of {ROUNDS} rounds; other processes on the 2 cores add to it) | {stall_max:.2f} |",
        f"| 99.9th percentile gap | {stall_p999:.3f} |",
    ]
    light = "import containers; containers.Container()"
    no_web = "import sys; sys.modules.update(fastapi=None, starlette=None, werkzeug=None); " + light
    baseline = _startup("import pydantic_settings")
    with_web, without_web = _startup(light), _startup(no_web)
    rows += [
        "",
        "| Start-up (median of 7 fresh interpreters) | s | / pydantic_settings |",
        "|---|---:|---:|",
        f"| `import pydantic_settings` | {baseline:.3f} | 1.00 |",
        f"| `import containers; containers.Container()` (dev venv) | {with_web:.3f} | {with_web / baseline:.2f} |",
        f"| the same without FastAPI installed (a worker) | {without_web:.3f} | {without_web / baseline:.2f} |",
    ]
    return "\n".join(rows)


if __name__ == "__main__":
    print(main())
