"""The gateway worker of the memory soak (``benchmarks.soak_gateway``): the example app, traced by tracemalloc.

``shared.api.server.serve("benchmarks._soak_worker:traced_app", ..., workers=N, factory=True)`` makes each of the
N uvicorn worker processes import this module and call :func:`traced_app`, which starts ``tracemalloc`` (unless
``SOAK_TRACEMALLOC=0``) before the app's own modules are imported, and a thread that every ``SOAK_EVERY`` seconds
collects garbage and appends one JSON line to ``$SOAK_OUT/worker-<pid>.jsonl``: RSS, the memory tracemalloc
traces, tracemalloc's own bookkeeping, the count of objects the collector tracks, and the source lines that
grew most since the first snapshot after ``SOAK_WARMUP`` seconds (and since the previous snapshot). The baseline
snapshot and the latest one are dumped (``baseline-<pid>.snap``, ``last-<pid>.snap``) so that they can be
compared grouped by traceback afterwards (:func:`compare_dumps`).

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


def _top(snapshot: tracemalloc.Snapshot, since: tracemalloc.Snapshot, key: str, count: int) -> list[str]:
    return [str(stat) for stat in snapshot.compare_to(since, key)[:count]]


def _snapshots(out: Path, every: float, warm_up: float) -> None:
    """Record one line every ``every`` seconds (a daemon thread of the worker)."""
    pid = os.getpid()
    lines = out / f"worker-{pid}.jsonl"
    started = time.monotonic()
    baseline: tracemalloc.Snapshot | None = None
    previous: tracemalloc.Snapshot | None = None
    while True:
        time.sleep(every)
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
            "top": [],
            "top_minute": [],
        }
        if tracemalloc.is_tracing():
            snapshot = _filtered(tracemalloc.take_snapshot())
            record["traced"] = sum(stat.size for stat in snapshot.statistics("filename"))
            record["tracemalloc_own"] = tracemalloc.get_tracemalloc_memory()
            if baseline is None and elapsed >= warm_up:
                baseline = snapshot
                snapshot.dump(str(out / f"baseline-{pid}.snap"))
            elif baseline is not None:
                record["top"] = _top(snapshot, baseline, "lineno", 12)
                if previous is not None:
                    record["top_minute"] = _top(snapshot, previous, "lineno", 5)
                snapshot.dump(str(out / f"last-{pid}.snap.tmp"))
                os.replace(out / f"last-{pid}.snap.tmp", out / f"last-{pid}.snap")
            previous = snapshot
        with lines.open("a") as file:
            file.write(json.dumps(record) + "\n")


def compare_dumps(baseline: Path, last: Path, count: int = 5, frames: int = 12) -> list[str]:
    """Return the ``count`` tracebacks whose memory grew most from ``baseline`` to ``last``, formatted."""
    before = tracemalloc.Snapshot.load(str(baseline))
    after = tracemalloc.Snapshot.load(str(last))
    lines: list[str] = []
    for stat in after.compare_to(before, "traceback")[:count]:
        lines.append(f"{stat.size_diff / 1024:+.1f} KiB, {stat.count_diff:+d} blocks (now {stat.size / 1024:.1f} KiB):")
        lines += [f"    {line}" for line in stat.traceback.format(limit=frames, most_recent_first=True)]
    return lines


def traced_app() -> Any:
    """Start tracemalloc and the snapshot thread, then build the example gateway (the uvicorn factory)."""
    frames = int(os.environ.get("SOAK_FRAMES", "8"))
    if os.environ.get("SOAK_TRACEMALLOC", "1") != "0":
        tracemalloc.start(frames)
    out = Path(os.environ["SOAK_OUT"])
    every = float(os.environ.get("SOAK_EVERY", "60"))
    warm_up = float(os.environ.get("SOAK_WARMUP", "120"))
    threading.Thread(target=_snapshots, args=(out, every, warm_up), daemon=True, name="soak-snapshots").start()
    from examples.api import create_app  # noqa: PLC0415 - imported after tracemalloc starts, so it is traced
    from shared.telemetry import instrument_fastapi  # noqa: PLC0415

    app = create_app()
    instrument_fastapi(app)  # as a production gateway would: a no-op without OTEL_ENABLED
    return app
