"""The gateway worker of the memory soak (``benchmarks.soak_gateway``): the example app, traced by tracemalloc.

``shared.api.server.serve("benchmarks._soak_worker:traced_app", ..., workers=N, factory=True)`` makes each of the
N uvicorn worker processes import this module and call :func:`traced_app`, which starts ``tracemalloc`` (unless
``SOAK_TRACEMALLOC=0``; only in the first ``SOAK_TRACED_WORKERS`` workers to start, when set) before the app's
own modules are imported, and a thread that every ``SOAK_EVERY`` (60) seconds collects garbage and appends one
JSON line to ``$SOAK_OUT/worker-<pid>.jsonl``: RSS, the memory tracemalloc traces, tracemalloc's own bookkeeping
and the count of objects the collector tracks. From ``SOAK_WARMUP`` (120) seconds on, every ``SOAK_DUMP_EVERY``
(300) seconds and once more when ``$SOAK_OUT/final`` appears, it dumps a tracemalloc snapshot
(``snapshot-<pid>-<seconds>.snap``), compared afterwards by line and by traceback (:func:`compare_dumps`).

This module imports nothing of the project at import time: whatever the app imports is traced.
"""

from __future__ import annotations

import gc
import json
import os
import threading
import time
import tracemalloc
from pathlib import Path
from typing import Any

__all__ = ["compare_dumps", "rss_bytes", "traced_app"]

# The snapshot machinery's own allocations (linecache holds the source lines a traceback is formatted with).
_OWN = ("*/tracemalloc.py", "*/linecache.py", "*/benchmarks/_soak_worker.py")


def rss_bytes(pid: int | str = "self") -> int:
    """Return the resident set size of process ``pid`` (0 when it is gone)."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return 0
    return 0


def _filtered(snapshot: tracemalloc.Snapshot) -> tracemalloc.Snapshot:
    return snapshot.filter_traces([tracemalloc.Filter(inclusive=False, filename_pattern=own) for own in _OWN])


def _snapshots(out: Path, every: float, warm_up: float, dump_every: float) -> None:
    """Record one line every ``every`` seconds, and dump a snapshot every ``dump_every`` (a daemon thread).

    The line's figures are cheap (``tracemalloc.get_traced_memory``, ``/proc``); a snapshot is taken and dumped
    as it is (filtering and comparing traces is Python code that would hold the worker's GIL for tens of seconds
    on a busy host), and compared afterwards by :func:`compare_dumps`.
    """
    pid = os.getpid()
    lines = out / f"worker-{pid}.jsonl"
    started = time.monotonic()
    next_dump = warm_up
    while True:
        time.sleep(every - (time.monotonic() - started) % every)
        gc.collect()
        elapsed = time.monotonic() - started
        record: dict[str, Any] = {
            "pid": pid,
            "t": round(elapsed),
            "wall": time.time(),
            "rss": rss_bytes(),
            "objects": len(gc.get_objects()),
            "traced": 0,
            "tracemalloc_own": 0,
            "dump": None,
            "tracing": tracemalloc.is_tracing(),
            "role": os.environ.get("SOAK_ROLE", "gateway worker"),
        }
        if tracemalloc.is_tracing():
            record["traced"] = tracemalloc.get_traced_memory()[0]
            record["tracemalloc_own"] = tracemalloc.get_tracemalloc_memory()
            final = (out / "final").exists() and next_dump != float("inf")
            if elapsed >= next_dump or final:
                name = f"snapshot-{pid}-{round(elapsed):05d}.snap"
                tracemalloc.take_snapshot().dump(str(out / name))
                record["dump"] = name
                next_dump = float("inf") if final else elapsed + dump_every
        with lines.open("a") as file:
            file.write(json.dumps(record) + "\n")


def compare_dumps(baseline: Path, last: Path, count: int = 5, frames: int = 12) -> list[str]:
    """Return the source lines, then the tracebacks, whose memory grew most from ``baseline`` to ``last``."""
    before = _filtered(tracemalloc.Snapshot.load(str(baseline)))
    after = _filtered(tracemalloc.Snapshot.load(str(last)))
    lines = [f"by line: {stat}" for stat in after.compare_to(before, "lineno")[: count * 2]]
    for stat in after.compare_to(before, "traceback")[:count]:
        lines.append(f"{stat.size_diff / 1024:+.1f} KiB, {stat.count_diff:+d} blocks (now {stat.size / 1024:.1f} KiB):")
        lines += [f"    {line}" for line in stat.traceback.format(limit=frames, most_recent_first=True)]
    return lines


def _claim(out: Path, slots: int) -> bool:
    """Take one of ``slots`` tracing slots (a file each, created exclusively): the first workers to start trace."""
    for slot in range(slots):
        try:
            os.close(os.open(out / f"traced-{slot}", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            continue
        return True
    return False


def traced_app() -> Any:
    """Start tracemalloc and the snapshot thread, then build the example gateway (the uvicorn factory)."""
    frames = int(os.environ.get("SOAK_FRAMES", "8"))
    out = Path(os.environ["SOAK_OUT"])
    if os.environ.get("SOAK_TRACEMALLOC", "1") != "0" and _claim(out, int(os.environ.get("SOAK_TRACED_WORKERS", "64"))):
        tracemalloc.start(frames)
    every = float(os.environ.get("SOAK_EVERY", "60"))
    warm_up = float(os.environ.get("SOAK_WARMUP", "120"))
    dump_every = float(os.environ.get("SOAK_DUMP_EVERY", "300"))
    threading.Thread(
        target=_snapshots, args=(out, every, warm_up, dump_every), daemon=True, name="soak-snapshots"
    ).start()
    from examples.api import create_app  # noqa: PLC0415 - imported after tracemalloc starts, so it is traced
    from shared.telemetry import instrument_fastapi  # noqa: PLC0415

    app = create_app()
    instrument_fastapi(app)  # as a production gateway would: a no-op without OTEL_ENABLED
    return app


def stage_worker(argv: list[str]) -> int:
    """``python -m benchmarks._soak_worker worker module ...``: ``python -m shared worker`` traced the same way."""
    out = Path(os.environ["SOAK_OUT"])
    os.environ["SOAK_ROLE"] = "stage worker"
    tracemalloc.start(int(os.environ.get("SOAK_FRAMES", "8")))
    every = float(os.environ.get("SOAK_EVERY", "60"))
    warm_up = float(os.environ.get("SOAK_WARMUP", "120"))
    dump_every = float(os.environ.get("SOAK_DUMP_EVERY", "300"))
    threading.Thread(
        target=_snapshots, args=(out, every, warm_up, dump_every), daemon=True, name="soak-snapshots"
    ).start()
    from shared.cli import main  # noqa: PLC0415 - imported after tracemalloc starts, so it is traced

    return main(argv)


if __name__ == "__main__":
    import sys

    sys.exit(stage_worker(sys.argv[1:]))
