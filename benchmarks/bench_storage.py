"""Storage benchmark (issue 5): a 1 GiB file up and down through LocalStorage and SupabaseStorage.

Baselines in the same run, on the same file: a plain file copy (``shutil.copyfile``) for LocalStorage, and a
raw httpx stream against the same real Supabase Storage server for SupabaseStorage (tests/real_storage: one
streamed TUS PATCH up, one streamed GET down). The server and its gateway are Node processes of their own, so
the figures are the client's alone. Peak RSS
growth is the process's high-water mark above its resident size before each operation (Linux
``/proc/self/clear_refs`` resets the mark); the target is at most 64 MiB. ``BENCH_STORAGE_MB`` sets the size.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import httpx

from shared.storage import LocalStorage, SupabaseStorage

__all__ = ["main"]

SIZE = int(os.environ.get("BENCH_STORAGE_MB", "1024")) * 1024 * 1024
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
    before = _reset_peak()
    started = time.perf_counter()
    await operation()
    elapsed = time.perf_counter() - started
    growth = max(0, _status_kib("VmHWM") * 1024 - before)
    return SIZE / elapsed / 2**20, growth


def _write_source(path: Path) -> None:
    block = os.urandom(1024 * 1024)
    with path.open("wb") as sink:
        for i in range(SIZE // len(block)):
            sink.write(i.to_bytes(8, "big") + block[8:])


async def _raw_httpx_upload(client: httpx.AsyncClient, url: str, key: str, source: Path) -> None:
    metadata = ",".join(
        f"{k} {base64.b64encode(v.encode()).decode()}" for k, v in (("bucketName", "media"), ("objectName", "raw"))
    )
    auth = {"apikey": key, "Authorization": f"Bearer {key}", "Tus-Resumable": "1.0.0", "x-upsert": "true"}
    created = await client.post(
        f"{url}/storage/v1/upload/resumable",
        headers={**auth, "Upload-Length": str(SIZE), "Upload-Metadata": metadata, "x-upsert": "true"},
    )
    created.raise_for_status()

    async def body() -> AsyncIterator[bytes]:
        with source.open("rb") as file:
            while chunk := file.read(1024 * 1024):
                yield chunk

    response = await client.patch(
        created.headers["location"],
        content=body(),
        headers={
            **auth,
            "Upload-Offset": "0",
            "Content-Length": str(SIZE),
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


def _row(name: str, ours: tuple[float, int], baseline: tuple[float, int], baseline_name: str) -> str:
    ratio = ours[0] / baseline[0] if baseline[0] else float("nan")
    verdict = "ok" if ours[1] <= RSS_TARGET else "OVER"
    return (
        f"| {name} | {ours[0]:.0f} | {baseline_name} {baseline[0]:.0f} | {ratio:.2f} | "
        f"{ours[1] / 2**20:.1f} ({verdict}) | {baseline[1] / 2**20:.1f} |"
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
        async with httpx.AsyncClient(timeout=httpx.Timeout(120.0)) as client:
            supabase = SupabaseStorage(url, key, client, max_upload_bytes=SIZE)
            await supabase.exists("media", "warm-up")
            raw_up = await _measure(lambda: _raw_httpx_upload(client, url, key, source))
            up = await _measure(lambda: supabase.upload_file("media", "video.bin", source))
            raw_down = await _measure(lambda: _raw_httpx_download(client, url, key, directory / "raw-out.bin"))
            down = await _measure(lambda: supabase.download_to("media", "video.bin", directory / "sb-out.bin"))
        rows.append(_row("SupabaseStorage upload (TUS, 6 MiB chunks)", up, raw_up, "raw httpx TUS"))
        rows.append(_row("SupabaseStorage download_to", down, raw_down, "raw httpx stream"))
    return rows


def main() -> str:
    """Run the storage benchmark and return its Markdown section."""
    with tempfile.TemporaryDirectory(prefix="bench-storage-") as directory:
        rows = asyncio.run(_run(Path(directory)))
    header = [
        f"File: {SIZE / 2**20:.0f} MiB. Throughput in MiB/s; ratio = ours / baseline (1.00 = as fast). "
        f"Peak RSS growth target: at most {RSS_TARGET // 2**20} MiB.",
        "",
        "| operation | ours MiB/s | baseline MiB/s | ratio | ours peak RSS growth MiB | baseline MiB |",
        "|---|---|---|---|---|---|",
    ]
    return "\n".join(header + rows)


if __name__ == "__main__":
    print(main())
