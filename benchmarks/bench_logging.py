"""Logging and start-up benchmarks, each side by side with its baseline in the same run.

1. JSON lines per second written to a file: our LoggerFactory (queue + writer thread, redaction on) against
   python-json-logger (a FileHandler with its JsonFormatter) and structlog at its fastest (native bound
   logger, orjson renderer, BytesLoggerFactory), on the same record. Rounds are interleaved (ABCABC...) so
   the machine's noise falls on every contender alike; the best round of each is reported.
2. The longest event-loop stall while 100,000 lines are logged from async code.
3. Start-up: ``python -c "import containers; containers.Container()"`` against
   ``python -c "import pydantic_settings"``.
"""

from __future__ import annotations

import asyncio
import logging
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
ROUNDS = 3
SECRETS = ["sb_secret_benchmark-secret-value", "sk-benchmark-key-0123456789"]


def ours(directory: Path) -> float:
    """Return lines/s through the LoggerFactory, until every line is flushed to the file."""
    factory = LoggerFactory(level="INFO", secrets=SECRETS, stream=None, log_file=directory / "ours.jsonl", root="b.o")
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


def main() -> str:
    """Run every logging and start-up measurement and return a Markdown report."""
    contenders: dict[str, Callable[[Path], float]] = {
        "videogen LoggerFactory": ours,
        "python-json-logger": python_json_logger,
        "structlog (orjson, BytesLogger)": structlog_fastest,
    }
    best = dict.fromkeys(contenders, 0.0)
    with tempfile.TemporaryDirectory() as folder:
        directory = Path(folder)
        for _ in range(ROUNDS):
            for name, run in contenders.items():
                best[name] = max(best[name], run(directory))
        stalls = [asyncio.run(_longest_stall(directory)) for _ in range(ROUNDS)]
        stall_max, stall_p999 = min(stalls)
    ours_rate = best["videogen LoggerFactory"]
    rows = [
        "| JSON lines to a file (100,000, best of 3 interleaved rounds) | lines/s | ours / it |",
        "|---|---:|---:|",
    ]
    rows += [f"| {name} | {rate:,.0f} | {ours_rate / rate:.2f} |" for name, rate in best.items()]
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
