"""Logs under stress (``python -m benchmarks log_safety``): hostile text through the redactor, and many processes
rotating one file.

1. Redaction of 40 KB of text shaped against each pattern (``eyJ-eyJ-...`` made the old JWT pattern quadratic),
   the median of 21 calls in milliseconds, and the old JWT pattern once on the same text. Target: < 10 ms.
2. 4 processes x 3,000 lines into one LOG_FILE with LOG_MAX_BYTES = 150,000 (about 13 rotations), against the
   same without rotation (LOG_MAX_BYTES = 0): lines per second from the first spawn to the last exit, and the
   lines lost, written twice and not valid JSON.
"""

from __future__ import annotations

import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson

from shared.logging import Redactor

__all__ = ["main"]

HOSTILE = {
    "eyJ- x 10,000 (JWT)": "eyJ-" * 10_000,
    "eyJa. x 8,000 (JWT)": "eyJa." * 8_000,
    "sk- x 13,000": "sk-" * 13_000,
    "Bearer x 6,000": "Bearer " * 6_000,
    "?token= x 6,000": "?token=" * 6_000,
    ":// a: x 8,000": "://a:" * 8_000,
}
OLD_JWT = re.compile(r"\beyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}")
PROCESSES = 4
LINES = 3_000
ROTATE_AT = 150_000

WORKER = """
import sys
from pathlib import Path
from shared.logging import LoggerFactory, get_logger

factory = LoggerFactory(
    level="INFO", stream=None, log_file=Path(sys.argv[1]), root="w", max_bytes=int(sys.argv[3]), backup_count=100
).start()
log = get_logger("w.stage")
for i in range(int(sys.argv[4])):
    log.info("clip %d generated", i, extra={"worker": int(sys.argv[2]), "index": i, "pad": "x" * 120})
factory.stop()
"""


def _median_ms(text: str, redact: Redactor) -> float:
    times = []
    for _ in range(21):
        started = time.perf_counter()
        redact(text)
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def _rotation(max_bytes: int) -> tuple[float, int, int, int, int]:
    """Return lines/s, files, lost, duplicated and invalid lines."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "app.jsonl"
        started = time.perf_counter()
        workers = [
            subprocess.Popen([sys.executable, "-c", WORKER, str(path), str(n), str(max_bytes), str(LINES)])
            for n in range(PROCESSES)
        ]
        for worker in workers:
            worker.wait()
        seconds = time.perf_counter() - started
        files = [file for file in Path(folder).iterdir() if not file.name.startswith(".")]
        keys, invalid = [], 0
        for file in files:
            for line in file.read_bytes().splitlines():
                try:
                    entry = orjson.loads(line)
                except orjson.JSONDecodeError:
                    invalid += 1
                    continue
                keys.append((entry["worker"], entry["index"]))
        lost = PROCESSES * LINES - len(set(keys))
        return PROCESSES * LINES / seconds, len(files), lost, len(keys) - len(set(keys)), invalid


def main() -> str:
    """Run both measurements and return a Markdown report."""
    redact = Redactor(["a-secret-value-0123"])
    rows = ["| 40 KB of hostile text | redaction, ms (median of 21) |", "|---|---:|"]
    rows += [f"| {name} | {_median_ms(text, redact):.2f} |" for name, text in HOSTILE.items()]
    started = time.perf_counter()
    OLD_JWT.sub("[REDACTED]", HOSTILE["eyJ- x 10,000 (JWT)"])
    rows.append(
        f"| the old JWT pattern (\\b, no possessive runs) on eyJ- x 10,000, once | "
        f"{(time.perf_counter() - started) * 1000:.0f} |"
    )
    rows += [
        "",
        f"| {PROCESSES} processes x {LINES:,} lines, one LOG_FILE | lines/s | files | lost | twice | invalid |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for label, max_bytes in (("LOG_MAX_BYTES = 0 (no rotation)", 0), (f"LOG_MAX_BYTES = {ROTATE_AT:,}", ROTATE_AT)):
        rate, files, lost, twice, invalid = min((_rotation(max_bytes) for _ in range(3)), key=lambda result: -result[0])
        rows.append(f"| {label} (best of 3) | {rate:,.0f} | {files} | {lost} | {twice} | {invalid} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(main())
