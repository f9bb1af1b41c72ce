"""One contract for every Storage: SupabaseStorage (over the local Storage API server), LocalStorage, FakeStorage."""

from __future__ import annotations

import io
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from shared.errors import (
    PipelineError,
    StorageConflictError,
    StorageNotFoundError,
    StoragePermissionError,
    ValidationError,
)
from shared.storage import LocalStorage, Storage, SupabaseStorage
from shared.storage._errors import error_from_response
from shared.testing.storage import FakeStorage
from tests.fixtures.storage import BUCKET, CHUNK, MAX_UPLOAD, MISSING_BUCKET, Clock
from tests.storage_server import StorageApiServer

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64
MP4 = b"\x00\x00\x00\x18ftypmp42\x00\x00\x00\x00mp42isom" + b"\x01" * 64


@dataclass
class Subject:
    """A backend under test, with the ways the contract observes it from outside."""

    name: str
    storage: Storage
    fetch_signed: Callable[[str], Awaitable[bytes]]
    stored_type: Callable[[str], str | None]
    request_count: Callable[[], int]


@pytest.fixture(params=["supabase", "local", "fake"])
def subject(request: pytest.FixtureRequest, clock: Clock) -> Subject:
    """Each implementation of the Storage protocol, in turn."""
    if request.param == "supabase":
        supabase: SupabaseStorage = request.getfixturevalue("supabase_storage")
        server: StorageApiServer = request.getfixturevalue("storage_api")
        client: httpx.AsyncClient = request.getfixturevalue("storage_http_client")

        async def fetch_supabase(url: str) -> bytes:
            response = await client.get(url)
            if response.status_code != 200:
                raise error_from_response(
                    response.status_code, response.content, response.headers, bucket=None, path=None
                )
            return response.content

        def type_on_server(path: str) -> str | None:
            stored = server.state.objects.get((BUCKET, path))
            return stored.content_type if stored else None

        return Subject("supabase", supabase, fetch_supabase, type_on_server, lambda: len(server.state.requests))
    if request.param == "local":
        local: LocalStorage = request.getfixturevalue("local_storage")

        async def fetch_local(url: str) -> bytes:
            granted = local.verify_signed_url(url)
            return await local.download_file(granted.bucket, granted.path)

        return Subject("local", local, fetch_local, lambda _: None, lambda: 0)
    fake: FakeStorage = request.getfixturevalue("fake_storage")

    async def fetch_fake(url: str) -> bytes:
        granted = fake.verify_signed_url(url)
        return fake.objects[granted.bucket, granted.path].data

    def type_in_fake(path: str) -> str | None:
        stored = fake.objects.get((BUCKET, path))
        return stored.content_type if stored else None

    return Subject("fake", fake, fetch_fake, type_in_fake, lambda: len(fake.calls))


def payload(size: int) -> bytes:
    return os.urandom(size)


def chunks_of(data: bytes, size: int = 10_000) -> Callable[[], AsyncIterator[bytes]]:
    async def factory() -> AsyncIterator[bytes]:
        for start in range(0, len(data), size):
            yield data[start : start + size]

    return factory


class Unseekable(io.RawIOBase):
    """A pipe-like binary stream that cannot seek."""

    def __init__(self, data: bytes) -> None:
        self._stream = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]  # RawIOBase's stub is wider
        data = self._stream.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


def test_every_backend_satisfies_the_protocol(subject: Subject) -> None:
    assert isinstance(subject.storage, Storage)


async def test_bytes_round_trip_and_upload_returns_the_path(subject: Subject) -> None:
    data = payload(1000)
    assert "jobs/1/a.bin" == await subject.storage.upload_file(BUCKET, "jobs/1/a.bin", data)
    assert data == await subject.storage.download_file(BUCKET, "jobs/1/a.bin")


@pytest.mark.parametrize("size", [0, 1, CHUNK, CHUNK + 1, 3 * CHUNK + 17])
async def test_sizes_around_the_chunk_boundary_round_trip(subject: Subject, size: int) -> None:
    """At most one chunk goes through storage3's multipart upload, more through TUS chunks."""
    data = payload(size)
    await subject.storage.upload_file(BUCKET, f"sizes/{size}", data)
    assert data == await subject.storage.download_file(BUCKET, f"sizes/{size}")


async def test_a_path_on_disk_uploads_its_content(subject: Subject, tmp_path: Path) -> None:
    data = payload(2 * CHUNK + 5)
    source = tmp_path / "clip.mp4"
    source.write_bytes(data)
    await subject.storage.upload_file(BUCKET, "clips/clip.mp4", source)
    assert data == await subject.storage.download_file(BUCKET, "clips/clip.mp4")


async def test_a_file_object_uploads_from_its_current_position(subject: Subject) -> None:
    data = payload(CHUNK + 100)
    stream = io.BytesIO(b"HEADER" + data)
    stream.seek(6)
    await subject.storage.upload_file(BUCKET, "io/body", stream)
    assert data == await subject.storage.download_file(BUCKET, "io/body")


async def test_an_unseekable_stream_uploads_whole(subject: Subject) -> None:
    data = payload(CHUNK + 3)
    await subject.storage.upload_file(BUCKET, "io/pipe", io.BufferedReader(Unseekable(data)))
    assert data == await subject.storage.download_file(BUCKET, "io/pipe")


async def test_a_chunk_factory_uploads_whole(subject: Subject) -> None:
    data = payload(2 * CHUNK + 9)
    await subject.storage.upload_file(BUCKET, "gen/audio.wav", chunks_of(data))
    assert data == await subject.storage.download_file(BUCKET, "gen/audio.wav")


async def test_a_second_upload_without_upsert_is_a_conflict_and_keeps_the_first(subject: Subject) -> None:
    await subject.storage.upload_file(BUCKET, "dup.bin", b"first")
    with pytest.raises(StorageConflictError) as caught:
        await subject.storage.upload_file(BUCKET, "dup.bin", b"second")
    assert (BUCKET, "dup.bin") == (caught.value.bucket, caught.value.path)
    assert b"first" == await subject.storage.download_file(BUCKET, "dup.bin")


async def test_upsert_replaces_an_object(subject: Subject) -> None:
    await subject.storage.upload_file(BUCKET, "up.bin", b"first")
    await subject.storage.upload_file(BUCKET, "up.bin", b"second", upsert=True)
    assert b"second" == await subject.storage.download_file(BUCKET, "up.bin")


async def test_upsert_replaces_a_large_object_through_the_resumable_path(subject: Subject) -> None:
    await subject.storage.upload_file(BUCKET, "big.bin", payload(CHUNK + 1))
    with pytest.raises(StorageConflictError):
        await subject.storage.upload_file(BUCKET, "big.bin", payload(CHUNK + 1))
    replacement = payload(2 * CHUNK)
    await subject.storage.upload_file(BUCKET, "big.bin", replacement, upsert=True)
    assert replacement == await subject.storage.download_file(BUCKET, "big.bin")


@pytest.mark.parametrize(
    "call",
    [
        lambda s: s.download_file(BUCKET, "missing.bin"),
        lambda s: s.download_to(BUCKET, "missing.bin", Path("/nonexistent-dir-for-test/x")),
        lambda s: s.get_signed_url(BUCKET, "missing.bin"),
    ],
    ids=["download_file", "download_to", "get_signed_url"],
)
async def test_a_missing_object_is_not_found(subject: Subject, call: Callable[[Storage], Awaitable[object]]) -> None:
    with pytest.raises(StorageNotFoundError) as caught:
        await call(subject.storage)
    assert (BUCKET, "missing.bin") == (caught.value.bucket, caught.value.path)
    assert caught.value.__cause__ is not None or subject.name != "supabase"


@pytest.mark.parametrize(
    "call",
    [
        lambda s: s.upload_file(MISSING_BUCKET, "a.bin", b"x"),
        lambda s: s.download_file(MISSING_BUCKET, "a.bin"),
        lambda s: s.exists(MISSING_BUCKET, "a.bin"),
        lambda s: s.delete_file(MISSING_BUCKET, "a.bin"),
    ],
    ids=["upload_file", "download_file", "exists", "delete_file"],
)
async def test_a_missing_bucket_is_not_found(subject: Subject, call: Callable[[Storage], Awaitable[object]]) -> None:
    with pytest.raises(StorageNotFoundError):
        await call(subject.storage)


async def test_exists_and_delete_follow_the_object(subject: Subject) -> None:
    assert not await subject.storage.exists(BUCKET, "life/cycle.bin")
    await subject.storage.upload_file(BUCKET, "life/cycle.bin", b"data")
    assert await subject.storage.exists(BUCKET, "life/cycle.bin")
    assert await subject.storage.delete_file(BUCKET, "life/cycle.bin")
    assert not await subject.storage.exists(BUCKET, "life/cycle.bin")
    assert not await subject.storage.delete_file(BUCKET, "life/cycle.bin")
    with pytest.raises(StorageNotFoundError):
        await subject.storage.download_file(BUCKET, "life/cycle.bin")


async def test_a_folder_prefix_is_not_an_object(subject: Subject) -> None:
    await subject.storage.upload_file(BUCKET, "folder/inner.bin", b"data")
    assert not await subject.storage.exists(BUCKET, "folder")
    with pytest.raises(StorageNotFoundError):
        await subject.storage.download_file(BUCKET, "folder")


async def test_download_to_writes_the_whole_object_atomically(subject: Subject, tmp_path: Path) -> None:
    data = payload(3 * CHUNK + 11)
    await subject.storage.upload_file(BUCKET, "dl/clip.bin", data)
    destination = tmp_path / "out" / "clip.bin"
    assert len(data) == await subject.storage.download_to(BUCKET, "dl/clip.bin", destination)
    assert data == destination.read_bytes()
    assert ["clip.bin"] == [p.name for p in destination.parent.iterdir()]


async def test_download_to_of_a_missing_object_leaves_the_destination_untouched(
    subject: Subject, tmp_path: Path
) -> None:
    destination = tmp_path / "keep.bin"
    destination.write_bytes(b"previous")
    with pytest.raises(StorageNotFoundError):
        await subject.storage.download_to(BUCKET, "missing.bin", destination)
    assert b"previous" == destination.read_bytes()
    assert ["keep.bin"] == [p.name for p in tmp_path.iterdir()]


async def test_a_signed_url_reads_the_object_until_it_expires(subject: Subject, clock: Clock) -> None:
    await subject.storage.upload_file(BUCKET, "signed/a b.png", PNG)
    url = await subject.storage.get_signed_url(BUCKET, "signed/a b.png", expires_in=60)
    assert PNG == await subject.fetch_signed(url)
    clock.now += 61
    with pytest.raises(StoragePermissionError):
        await subject.fetch_signed(url)


async def test_a_tampered_signed_url_is_refused(subject: Subject) -> None:
    await subject.storage.upload_file(BUCKET, "signed/one.bin", b"one")
    await subject.storage.upload_file(BUCKET, "signed/two.bin", b"two")
    url = await subject.storage.get_signed_url(BUCKET, "signed/one.bin")
    with pytest.raises(StoragePermissionError):
        await subject.fetch_signed(url.replace("one.bin", "two.bin"))
    flipped = url[:-3] + ("A" if url[-3] != "A" else "B") + url[-2:]
    with pytest.raises(StoragePermissionError):
        await subject.fetch_signed(flipped)


async def test_content_type_is_detected_from_content_before_the_extension(subject: Subject) -> None:
    await subject.storage.upload_file(BUCKET, "types/image.bin", PNG)
    await subject.storage.upload_file(BUCKET, "types/clip", MP4)
    await subject.storage.upload_file(BUCKET, "types/notes.txt", b"plain words")
    await subject.storage.upload_file(BUCKET, "types/given", b"{}", "application/json")
    if subject.name == "local":
        pytest.skip("the local backend serves files as they are and stores no content type")
    assert ["image/png", "video/mp4", "text/plain", "application/json"] == [
        subject.stored_type(p) for p in ("types/image.bin", "types/clip", "types/notes.txt", "types/given")
    ]


async def test_too_large_an_upload_is_refused_before_anything_is_sent(subject: Subject) -> None:
    before = subject.request_count()
    with pytest.raises(ValidationError, match="limit"):
        await subject.storage.upload_file(BUCKET, "huge.bin", b"\0" * (MAX_UPLOAD + 1))
    with pytest.raises(ValidationError, match="limit"):
        await subject.storage.upload_file(BUCKET, "huge.bin", chunks_of(b"\0" * (MAX_UPLOAD + 1), 1 << 20))
    assert before == subject.request_count()
    assert not await subject.storage.exists(BUCKET, "huge.bin")


@pytest.mark.parametrize("path", ["", "/abs", "a//b", "a/./b", "../x", "a\\b", "nul\0", "tab\tname", "x" * 1025])
async def test_a_bad_path_is_refused_before_any_io(subject: Subject, path: str) -> None:
    before = subject.request_count()
    for call in (
        subject.storage.upload_file(BUCKET, path, b"x"),
        subject.storage.download_file(BUCKET, path),
        subject.storage.exists(BUCKET, path),
        subject.storage.delete_file(BUCKET, path),
        subject.storage.get_signed_url(BUCKET, path),
    ):
        with pytest.raises(ValidationError):
            await call
    assert before == subject.request_count()


@pytest.mark.parametrize(
    "call",
    [
        lambda s: s.upload_file(".hidden", "a", b"x"),
        lambda s: s.upload_file(BUCKET, "a", "text, not bytes"),
        lambda s: s.upload_file(BUCKET, "a", 42),
        lambda s: s.upload_file(BUCKET, "a", b"x", "not a type"),
        lambda s: s.upload_file(BUCKET, "a", Path("/nonexistent/file.bin")),
        lambda s: s.get_signed_url(BUCKET, "a", expires_in=0),
    ],
    ids=["bucket", "str-data", "int-data", "content-type", "missing-file", "expires_in"],
)
async def test_bad_arguments_are_validation_errors(
    subject: Subject, call: Callable[[Storage], Awaitable[object]]
) -> None:
    with pytest.raises(ValidationError):
        await call(subject.storage)


async def test_a_factory_yielding_text_is_refused(subject: Subject) -> None:
    async def words() -> AsyncIterator[str]:
        yield "text"

    with pytest.raises(ValidationError, match="bytes"):
        await subject.storage.upload_file(BUCKET, "a", words)  # type: ignore[arg-type]  # the point of the test


async def test_every_error_is_a_pipeline_error(subject: Subject) -> None:
    with pytest.raises(PipelineError):
        await subject.storage.download_file(BUCKET, "nothing-here")


async def test_health_check_reports_ok(subject: Subject) -> None:
    health = await subject.storage.health_check()
    assert ("storage", "ok") == (health.name, health.status)
    assert health.latency_ms >= 0


@pytest.mark.parametrize("path", ["x" * 300, f"jobs/{'y' * 300}/clip.mp4", "/".join(["z" * 250] * 4)])
async def test_a_long_name_is_stored_whole_or_refused_as_a_validation_error(
    subject: Subject, path: str, tmp_path: Path
) -> None:
    """S3 keys allow 1024 bytes in any segment; a file system 255 per name. Never a raw OSError."""
    data = payload(100)
    if subject.name == "local" and max(len(name) for name in path.split("/")) > 255:
        for call in (
            subject.storage.upload_file(BUCKET, path, data),
            subject.storage.download_file(BUCKET, path),
            subject.storage.download_to(BUCKET, path, tmp_path / "copy"),
            subject.storage.exists(BUCKET, path),
            subject.storage.delete_file(BUCKET, path),
            subject.storage.get_signed_url(BUCKET, path),
        ):
            with pytest.raises(ValidationError) as caught:
                await call
            assert "path" == caught.value.field
        assert not (tmp_path / "copy").exists()
        return
    await subject.storage.upload_file(BUCKET, path, data)
    assert data == await subject.storage.download_file(BUCKET, path)
    assert await subject.storage.exists(BUCKET, path)
    assert data == await subject.fetch_signed(await subject.storage.get_signed_url(BUCKET, path))
    assert await subject.storage.delete_file(BUCKET, path)
    assert not await subject.storage.exists(BUCKET, path)
