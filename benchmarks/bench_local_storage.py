"""LocalStorage against a file copy, interleaved in one run (issue 24).

A ``BENCH_LOCAL_MB`` (default 256) MiB file: ``upload_file`` from its path and ``download_to`` a path, each
against ``shutil.copyfile`` followed by the fsync and rename that make a copy durable and atomic (what both
operations promise), and against the plain copy. ``BENCH_LOCAL_ROUNDS`` (default 3) rounds, the order reversed
every other round; the best round of each is reported, and the median of the rounds' paired ratios.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from shared.storage import LocalStorage

__all__ = ["main"]

SIZE_MB = int(os.environ.get("BENCH_LOCAL_MB", "256"))
ROUNDS = int(os.environ.get("BENCH_LOCAL_ROUNDS", "3"))


def _copy_fsync(source: Path, target: Path) -> None:
    temp = target.with_suffix(".part")
    shutil.copyfile(source, temp)
    with temp.open("rb+") as file:
        os.fsync(file.fileno())
    temp.replace(target)


async def _run(directory: Path) -> dict[str, list[float]]:
    source = directory / "source.bin"
    with source.open("wb") as file:
        for _ in range(SIZE_MB):
            file.write(os.urandom(1024 * 1024))
    local = LocalStorage(directory / "local", signing_key="b" * 32, max_upload_bytes=SIZE_MB * 1024 * 1024)
    await local.upload_file("bench", "clip.bin", source, "application/octet-stream", upsert=True)
    contenders: dict[str, Callable[[], Awaitable[object]]] = {
        "upload": lambda: local.upload_file("bench", "clip.bin", source, "application/octet-stream", upsert=True),
        "download_to": lambda: local.download_to("bench", "clip.bin", directory / "down.bin"),
        "copy + fsync": lambda: asyncio.to_thread(_copy_fsync, source, directory / "copy.bin"),
        "copy": lambda: asyncio.to_thread(shutil.copyfile, source, directory / "plain.bin"),
    }
    results: dict[str, list[float]] = {name: [] for name in contenders}
    order = list(contenders)
    for _ in range(ROUNDS):
        for name in order:
            started = time.perf_counter()
            await contenders[name]()
            results[name].append(SIZE_MB / (time.perf_counter() - started))
        order.reverse()
    return results


def main() -> str:
    """Measure and return a Markdown report."""
    with tempfile.TemporaryDirectory(prefix="vg_bench_local_") as folder:
        results = asyncio.run(_run(Path(folder)))
    rows = [
        f"| LocalStorage, {SIZE_MB} MiB, {ROUNDS} ABBA rounds | MiB/s (best) | / copy + fsync (best; median of "
        "pairs) | / copy (best; median of pairs) |",
        "|---|---:|---:|---:|",
    ]
    for name in ("upload", "download_to", "copy + fsync", "copy"):
        cells = []
        for baseline in ("copy + fsync", "copy"):
            best = max(results[name]) / max(results[baseline])
            paired = statistics.median(a / b for a, b in zip(results[name], results[baseline], strict=True))
            cells.append(f"{best:.2f}; {paired:.2f}")
        rows.append(f"| {name} | {max(results[name]):,.0f} | {cells[0]} | {cells[1]} |")
    rows.append("\nTarget: upload and download_to >= 0.8 x each baseline.")
    return "\n".join(rows)


if __name__ == "__main__":
    print(main())
