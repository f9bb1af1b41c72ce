"""Large files stream through every backend with bounded memory: nothing holds more than a chunk or two."""

from __future__ import annotations

import hashlib
import tracemalloc
from pathlib import Path

import httpx
import pytest

from shared.storage import LocalStorage, Storage, SupabaseStorage
from tests.fixtures.storage import BUCKET
from tests.storage_server import StorageApiServer

SIZE = 200 * 1024 * 1024
SUPABASE_CHUNK = 6 * 1024 * 1024
PEAK_LIMIT = 40 * 1024 * 1024  # a fifth of the file: a backend that buffers the object fails


@pytest.fixture(scope="module")
def big_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """Write a 200 MiB file of varied content once, and return it with its SHA-256."""
    path = tmp_path_factory.mktemp("big") / "video.mp4"
    digest = hashlib.sha256()
    block = bytes(range(256)) * 4096  # 1 MiB
    with path.open("wb") as sink:
        for i in range(SIZE // len(block)):
            piece = i.to_bytes(4, "big") + block[4:]
            digest.update(piece)
            sink.write(piece)
    return path, digest.hexdigest()


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as source:
        while chunk := source.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


async def round_trip_peak(storage: Storage, source: Path, destination: Path) -> int:
    tracemalloc.start()
    try:
        await storage.upload_file(BUCKET, "big/video.mp4", source)
        await storage.download_to(BUCKET, "big/video.mp4", destination)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak


@pytest.mark.slow
async def test_a_200_mib_file_streams_through_supabase_storage_in_bounded_memory(
    big_file: tuple[Path, str], storage_api: StorageApiServer, storage_http_client: httpx.AsyncClient, tmp_path: Path
) -> None:
    source, digest = big_file
    storage = SupabaseStorage(
        storage_api.url, storage_api.key, storage_http_client, max_upload_bytes=SIZE, chunk_size=SUPABASE_CHUNK
    )
    peak = await round_trip_peak(storage, source, tmp_path / "copy.mp4")
    assert digest == sha256_of(tmp_path / "copy.mp4")
    assert peak < PEAK_LIMIT, f"peak {peak / 2**20:.1f} MiB"
    patches = [r for r in storage_api.state.requests if r["method"] == "PATCH"]
    assert SIZE // SUPABASE_CHUNK + 1 == len(patches)


@pytest.mark.slow
async def test_a_200_mib_file_streams_through_local_storage_in_bounded_memory(
    big_file: tuple[Path, str], tmp_path: Path
) -> None:
    source, digest = big_file
    storage = LocalStorage(tmp_path / "root", signing_key="k" * 32, max_upload_bytes=SIZE)
    peak = await round_trip_peak(storage, source, tmp_path / "copy.mp4")
    assert digest == sha256_of(tmp_path / "copy.mp4")
    assert peak < PEAK_LIMIT, f"peak {peak / 2**20:.1f} MiB"
