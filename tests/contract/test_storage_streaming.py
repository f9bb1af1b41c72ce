"""Large files stream through every backend with bounded memory: nothing holds more than a chunk or two."""

from __future__ import annotations

import hashlib
import tracemalloc
from pathlib import Path

import httpx
import pytest

from shared.storage import LocalStorage, Storage, SupabaseStorage
from tests.fixtures.storage import BUCKET, StorageTarget
from tests.real_storage.proxy import FaultProxy

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


async def round_trip_peak(storage: Storage, source: Path, destination: Path, bucket: str, path: str) -> int:
    tracemalloc.start()
    try:
        await storage.upload_file(bucket, path, source)
        await storage.download_to(bucket, path, destination)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak


@pytest.mark.slow
@pytest.mark.parametrize(("chunk_size", "patches"), [(SUPABASE_CHUNK, SIZE // SUPABASE_CHUNK + 1), (None, 1)])
async def test_a_200_mib_file_streams_through_supabase_storage_in_bounded_memory(
    chunk_size: int | None,
    patches: int,
    big_file: tuple[Path, str],
    storage_target: StorageTarget,
    storage_proxy: FaultProxy,
    storage_prefix: str,
    storage_http_client: httpx.AsyncClient,
    tmp_path: Path,
) -> None:
    source, digest = big_file
    storage = SupabaseStorage(
        storage_proxy.url,
        storage_target.service_key,
        storage_http_client,
        max_upload_bytes=SIZE,
        chunk_size=chunk_size,  # None: this loopback server's default, the whole body in one PATCH
    )
    path = f"{storage_prefix}/video.mp4"
    peak = await round_trip_peak(storage, source, tmp_path / "copy.mp4", storage_target.bucket, path)
    assert digest == sha256_of(tmp_path / "copy.mp4")
    assert peak < PEAK_LIMIT, f"peak {peak / 2**20:.1f} MiB"
    assert patches == storage_proxy.count("PATCH")


@pytest.mark.slow
async def test_a_200_mib_file_streams_through_local_storage_in_bounded_memory(
    big_file: tuple[Path, str], tmp_path: Path
) -> None:
    source, digest = big_file
    storage = LocalStorage(tmp_path / "root", signing_key="k" * 32, max_upload_bytes=SIZE)
    peak = await round_trip_peak(storage, source, tmp_path / "copy.mp4", BUCKET, "big/video.mp4")
    assert digest == sha256_of(tmp_path / "copy.mp4")
    assert peak < PEAK_LIMIT, f"peak {peak / 2**20:.1f} MiB"
