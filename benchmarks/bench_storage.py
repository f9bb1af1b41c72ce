"""Storage benchmark (issue 5): a 1 GiB file up and down through LocalStorage and SupabaseStorage.

Baselines in the same run, on the same file: a plain file copy (``shutil.copyfile``) for LocalStorage, and a
raw httpx against the same real Supabase Storage server for SupabaseStorage (tests/real_storage). Uploads
run at the chunk size this (self-hosted, loopback) server gets by default, the whole body in one PATCH
(``BENCH_STORAGE_CHUNK_MB`` sets another, as ``STORAGE_TUS_CHUNK_MB`` would), against a raw TUS in one
PATCH (the target: at least 0.9) and a raw TUS with the same chunks (what the wrapper adds); and at the
6 MiB that Supabase's platform gets, against a raw TUS with 6 MiB chunks. Downloads against a streamed GET.
The server and its gateway are Node processes of their own, so RSS and CPU are the client's alone. The
server's speed varies a lot on a shared machine, so the SupabaseStorage figures are
``BENCH_STORAGE_ROUNDS`` (default 3) interleaved rounds, ours and the baselines back to back in each, and
the ratio is the median of the rounds' paired ratios. Peak RSS
growth is the process's high-water mark above its resident size before each operation (Linux
``/proc/self/clear_refs`` resets the mark); the target is at most 64 MiB. ``BENCH_STORAGE_MB`` sets the size.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import httpx

from shared.storage import LocalStorage, SupabaseStorage
from shared.storage._supabase import tus_chunk_size

__all__ = ["main"]

SIZE = int(os.environ.get("BENCH_STORAGE_MB", "1024")) * 1024 * 1024
ROUNDS = int(os.environ.get("BENCH_STORAGE_ROUNDS", "3"))
HOSTED_CHUNK = 6 * 1024 * 1024
CHUNK = int(os.environ["BENCH_STORAGE_CHUNK_MB"]) * 1024 * 1024 if os.environ.get("BENCH_STORAGE_CHUNK_MB") else None
RSS_TARGET = 64 * 1024 * 1024


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def _reset_peak() -> int:
    """Reset the RSS high-water mark (Linux) and return the resident size now, in bytes."""
    with contextlib.suppress(OSError):  # not Linux: the figure then includes earlier peaks
        Path("/proc/self/clear_refs").write_text("5")
    return _status_kib("VmRSS") * 1024


async def _measure(operation: Callable[[], Awaitable[object]]) -> tuple[float, int]:
    """Return (MiB/s, peak RSS growth in bytes) of one run of ``operation``."""
    speed, growth, _ = await _measure_cpu(operation)
    return speed, growth


async def _measure_cpu(operation: Callable[[], Awaitable[object]]) -> tuple[float, int, float]:
    """Return (MiB/s, peak RSS growth in bytes, client CPU seconds) of one run of ``operation``."""
    before = _reset_peak()
    started, cpu = time.perf_counter(), time.process_time()
    await operation()
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    growth = max(0, _status_kib("VmHWM") * 1024 - before)
    return SIZE / elapsed / 2**20, growth, cpu


def _write_source(path: Path) -> None:
    block = os.urandom(1024 * 1024)
    with path.open("wb") as sink:
        for i in range(SIZE // len(block)):
            sink.write(i.to_bytes(8, "big") + block[8:])


async def _raw_httpx_upload(client: httpx.AsyncClient, url: str, key: str, source: Path, chunk: int = SIZE) -> None:
    """TUS by hand: create, then PATCHes of ``chunk`` bytes (one PATCH by default), each streamed from the file."""
    metadata = ",".join(
        f"{k} {base64.b64encode(v.encode()).decode()}" for k, v in (("bucketName", "media"), ("objectName", "raw"))
    )
    auth = {"apikey": key, "Authorization": f"Bearer {key}", "Tus-Resumable": "1.0.0", "x-upsert": "true"}
    created = await client.post(
        f"{url}/storage/v1/upload/resumable",
        headers={**auth, "Upload-Length": str(SIZE), "Upload-Metadata": metadata, "x-upsert": "true"},
    )
    created.raise_for_status()
    with source.open("rb") as file:
        for offset in range(0, SIZE, chunk):
            length = min(chunk, SIZE - offset)

            async def body(length: int = length) -> AsyncIterator[bytes]:
                left = length
                while left:
                    piece = file.read(min(1024 * 1024, left))
                    left -= len(piece)
                    yield piece

            response = await client.patch(
                created.headers["location"],
                content=body(),
                headers={
                    **auth,
                    "Upload-Offset": str(offset),
                    "Content-Length": str(length),
                    "Content-Type": "application/offset+octet-stream",
                },
            )
            response.raise_for_status()


async def _raw_httpx_download(client: httpx.AsyncClient, url: str, key: str, destination: Path) -> None:
    headers = {"apikey": key, "Authorization": f"Bearer {key}"}
    async with client.stream("GET", f"{url}/storage/v1/object/media/raw", headers=headers) as response:
        response.raise_for_status()
        with destination.open("wb") as sink:
            async for chunk in response.aiter_bytes(1024 * 1024):
                sink.write(chunk)


def _paired_row(
    name: str, ours: list[tuple[float, int, float]], baseline: list[tuple[float, int, float]], baseline_name: str
) -> str:
    """A row of medians over the rounds; the ratio is the median of the rounds' own ratios."""
    ratio = statistics.median(o[0] / b[0] for o, b in zip(ours, baseline, strict=True))
    growth = max(o[1] for o in ours)
    verdict = "ok" if growth <= RSS_TARGET else "OVER"
    return (
        f"| {name} | {statistics.median(o[0] for o in ours):.0f} | {baseline_name} "
        f"{statistics.median(b[0] for b in baseline):.0f} | {ratio:.2f} | {growth / 2**20:.1f} ({verdict}) | "
        f"{max(b[1] for b in baseline) / 2**20:.1f} | {statistics.median(o[2] for o in ours):.2f} / "
        f"{statistics.median(b[2] for b in baseline):.2f} |"
    )


def _row(name: str, ours: tuple[float, int], baseline: tuple[float, int], baseline_name: str) -> str:
    ratio = ours[0] / baseline[0] if baseline[0] else float("nan")
    verdict = "ok" if ours[1] <= RSS_TARGET else "OVER"
    return (
        f"| {name} | {ours[0]:.0f} | {baseline_name} {baseline[0]:.0f} | {ratio:.2f} | "
        f"{ours[1] / 2**20:.1f} ({verdict}) | {baseline[1] / 2**20:.1f} | |"
    )


async def _run(directory: Path) -> list[str]:
    source = directory / "source.bin"
    await asyncio.to_thread(_write_source, source)
    rows: list[str] = []

    local = LocalStorage(directory / "local", signing_key="b" * 32, max_upload_bytes=SIZE)
    copy = await _measure(lambda: asyncio.to_thread(shutil.copyfile, source, directory / "copy.bin"))
    (directory / "copy.bin").unlink()
    up = await _measure(lambda: local.upload_file("media", "video.bin", source))
    down = await _measure(lambda: local.download_to("media", "video.bin", directory / "local-out.bin"))
    rows.append(_row("LocalStorage upload", up, copy, "file copy"))
    rows.append(_row("LocalStorage download_to", down, copy, "file copy"))
    shutil.rmtree(directory / "local")
    (directory / "local-out.bin").unlink()

    # The real server, started once before any timing (tests/real_storage builds it once per machine).
    from tests.real_storage import running_server  # noqa: PLC0415 - the benchmarks share the tests' harness

    with running_server() as server:
        server.create_bucket("media")
        url, key = server.url, server.service_key
        chunk = tus_chunk_size(url, CHUNK) or SIZE  # what the container gives this server, unless set
        async with httpx.AsyncClient(timeout=httpx.Timeout(120.0)) as client:
            ours = SupabaseStorage(url, key, client, max_upload_bytes=SIZE, chunk_size=CHUNK)
            hosted = SupabaseStorage(url, key, client, max_upload_bytes=SIZE, chunk_size=HOSTED_CHUNK)
            await ours.exists("media", "warm-up")
            runs: dict[str, list[tuple[float, int, float]]] = {}

            async def timed(name: str, operation: Callable[[], Awaitable[object]]) -> None:
                runs.setdefault(name, []).append(await _measure_cpu(operation))

            for _ in range(ROUNDS):
                await timed("raw single", lambda: _raw_httpx_upload(client, url, key, source))
                await timed("ours", lambda: ours.upload_file("media", "video.bin", source, upsert=True))
                if chunk < SIZE:
                    await timed("raw same", lambda: _raw_httpx_upload(client, url, key, source, chunk))
                await timed("raw 6", lambda: _raw_httpx_upload(client, url, key, source, HOSTED_CHUNK))
                await timed("ours 6", lambda: hosted.upload_file("media", "video.bin", source, upsert=True))
                await timed("raw down", lambda: _raw_httpx_download(client, url, key, directory / "raw-out.bin"))
                await timed("ours down", lambda: ours.download_to("media", "video.bin", directory / "sb-out.bin"))
        default = "one PATCH" if chunk >= SIZE else f"{chunk // 2**20} MiB chunks"
        upload = f"SupabaseStorage upload (TUS, {default}: this server's default)"
        single = "raw httpx TUS, one PATCH" + (" (= same chunk)" if chunk >= SIZE else "")
        rows.append(_paired_row(upload, runs["ours"], runs["raw single"], single))
        if chunk < SIZE:
            rows.append(_paired_row(upload, runs["ours"], runs["raw same"], f"raw httpx TUS, {default}"))
        hosted_name = "SupabaseStorage upload (TUS, 6 MiB chunks: Supabase's platform)"
        rows.append(_paired_row(hosted_name, runs["ours 6"], runs["raw 6"], "raw httpx TUS, 6 MiB chunks"))
        rows.append(_paired_row(hosted_name, runs["ours 6"], runs["raw single"], "raw httpx TUS, one PATCH"))
        rows.append(_paired_row("SupabaseStorage download_to", runs["ours down"], runs["raw down"], "raw httpx stream"))
    return rows


def main() -> str:
    """Run the storage benchmark and return its Markdown section."""
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="bench-storage-") as directory:
        rows = asyncio.run(_run(Path(directory)))
    header = [
        f"File: {SIZE / 2**20:.0f} MiB; load average (1 min) {load_before:.2f} before, {os.getloadavg()[0]:.2f} after. "
        "Throughput in MiB/s; ratio = ours / baseline (1.00 = as fast). "
        f"Peak RSS growth target: at most {RSS_TARGET // 2**20} MiB.",
        "",
        f"SupabaseStorage rows: medians of {ROUNDS} interleaved rounds against the real Storage server; the ratio is "
        "the median of the paired ratios; the last column is the client's CPU seconds, ours / baseline.",
        "",
        "| operation | ours MiB/s | baseline MiB/s | ratio | ours peak RSS growth MiB | baseline MiB | CPU s |",
        "|---|---|---|---|---|---|---|",
    ]
    return "\n".join(header + rows)


if __name__ == "__main__":
    print(main())
