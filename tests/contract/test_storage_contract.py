"""One contract for every Storage: SupabaseStorage (over the local Storage API server), LocalStorage, FakeStorage."""

from __future__ import annotations

import asyncio
import io
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

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
from tests.fixtures.storage import BUCKET, CHUNK, LIMITED, MAX_UPLOAD, MISSING_BUCKET, Clock, StorageTarget
from tests.real_storage.proxy import FaultProxy

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64
MP4 = b"\x00\x00\x00\x18ftypmp42\x00\x00\x00\x00mp42isom" + b"\x01" * 64


@dataclass
class Subject:
    """A backend under test, with the ways the contract observes it from outside."""

    name: str
    storage: Storage
    bucket: str
    key: Callable[[str], str]
    fetch_signed: Callable[[str], Awaitable[bytes]]
    stored_type: Callable[[str], Awaitable[str | None]]
    request_count: Callable[[], int]
    expire: Callable[[int], Awaitable[None]]


@pytest.fixture(params=["supabase", "local", "fake"])
def subject(request: pytest.FixtureRequest, clock: Clock) -> Subject:
    """Each implementation of the Storage protocol, in turn (SupabaseStorage on the real server)."""
    if request.param == "supabase":
        supabase: SupabaseStorage = request.getfixturevalue("supabase_storage")
        target: StorageTarget = request.getfixturevalue("storage_target")
        proxy: FaultProxy = request.getfixturevalue("storage_proxy")
        prefix: str = request.getfixturevalue("storage_prefix")
        client: httpx.AsyncClient = request.getfixturevalue("storage_http_client")

        async def fetch_supabase(url: str) -> bytes:
            response = await client.get(url)
            if response.status_code != 200:
                raise error_from_response(
                    response.status_code, response.content, response.headers, bucket=None, path=None, signed_url=True
                )
            return response.content

        async def type_on_server(path: str) -> str | None:
            quoted = "/".join(quote(segment, safe="") for segment in path.split("/"))
            info = await client.get(
                f"{target.url}/storage/v1/object/info/{target.bucket}/{quoted}", headers=target.headers()
            )
            return str(info.json()["content_type"]) if info.status_code == 200 else None

        async def wait_out(seconds: int) -> None:
            await asyncio.sleep(seconds + 1.5)  # the server's clock cannot be set: wait the expiry out

        return Subject(
            "supabase",
            supabase,
            target.bucket,
            lambda name: f"{prefix}/{name}",
            fetch_supabase,
            type_on_server,
            proxy.count,
            wait_out,
        )

    async def advance(seconds: int) -> None:
        clock.now += seconds + 1

    if request.param == "local":
        local: LocalStorage = request.getfixturevalue("local_storage")

        async def fetch_local(url: str) -> bytes:
            granted = local.verify_signed_url(url)
            return await local.download_file(granted.bucket, granted.path)

        async def no_type(_: str) -> str | None:
            return None

        return Subject("local", local, BUCKET, lambda name: name, fetch_local, no_type, lambda: 0, advance)
    fake: FakeStorage = request.getfixturevalue("fake_storage")

    async def fetch_fake(url: str) -> bytes:
        granted = fake.verify_signed_url(url)
        return fake.objects[granted.bucket, granted.path].data

    async def type_in_fake(path: str) -> str | None:
        stored = fake.objects.get((BUCKET, path))
        return stored.content_type if stored else None

    return Subject("fake", fake, BUCKET, lambda name: name, fetch_fake, type_in_fake, lambda: len(fake.calls), advance)


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


async def test_bytes_round_trip_and_upload_returns_the_objects_url(subject: Subject) -> None:
    data = payload(1000)
    url = await subject.storage.upload_file(subject.bucket, subject.key("jobs/1/a b.bin"), data)
    assert url.endswith(f"/{subject.bucket}/{quote(subject.key('jobs/1/a b.bin'))}")
    assert "://" in url
    assert data == await subject.storage.download_file(subject.bucket, subject.key("jobs/1/a b.bin"))
    assert data == await subject.storage.download_file(subject.bucket, url)


async def test_the_url_upload_returns_is_accepted_wherever_a_path_is(subject: Subject, tmp_path: Path) -> None:
    data = payload(500)
    url = await subject.storage.upload_file(subject.bucket, subject.key("by-url/clip.bin"), data)
    assert await subject.storage.exists(subject.bucket, url)
    assert len(data) == await subject.storage.download_to(subject.bucket, url, tmp_path / "copy.bin")
    assert data == await subject.fetch_signed(await subject.storage.get_signed_url(subject.bucket, url))
    assert await subject.storage.delete_file(subject.bucket, url)
    assert not await subject.storage.exists(subject.bucket, subject.key("by-url/clip.bin"))
    with pytest.raises(ValidationError, match="does not name an object"):
        await subject.storage.download_file(LIMITED, url)
    with pytest.raises(ValidationError, match="does not name an object"):
        await subject.storage.download_file(subject.bucket, "https://elsewhere.example/object/media/a.bin")


async def test_list_files_returns_every_path_under_a_prefix(subject: Subject) -> None:
    for name in ("job/a.bin", "job/sub/b.bin", "job/sub/deeper/c.bin", "other/d.bin"):
        await subject.storage.upload_file(subject.bucket, subject.key(name), b"x")
    listed = await subject.storage.list_files(subject.bucket, subject.key("job/"))
    assert [subject.key(n) for n in ("job/a.bin", "job/sub/b.bin", "job/sub/deeper/c.bin")] == listed
    assert [] == await subject.storage.list_files(subject.bucket, subject.key("nothing/"))
    with pytest.raises(StorageNotFoundError):
        await subject.storage.list_files(MISSING_BUCKET, "job/")
    with pytest.raises(ValidationError):
        await subject.storage.list_files(subject.bucket, "../escape")


@pytest.mark.parametrize("size", [0, 1, CHUNK, CHUNK + 1, 3 * CHUNK + 17])
async def test_sizes_around_the_chunk_boundary_round_trip(subject: Subject, size: int) -> None:
    """At most one chunk goes through storage3's multipart upload, more through TUS chunks."""
    data = payload(size)
    await subject.storage.upload_file(subject.bucket, subject.key(f"sizes/{size}"), data)
    assert data == await subject.storage.download_file(subject.bucket, subject.key(f"sizes/{size}"))


async def test_a_path_on_disk_uploads_its_content(subject: Subject, tmp_path: Path) -> None:
    data = payload(2 * CHUNK + 5)
    source = tmp_path / "clip.mp4"
    source.write_bytes(data)
    await subject.storage.upload_file(subject.bucket, subject.key("clips/clip.mp4"), source)
    assert data == await subject.storage.download_file(subject.bucket, subject.key("clips/clip.mp4"))


async def test_a_file_object_uploads_from_its_current_position(subject: Subject) -> None:
    data = payload(CHUNK + 100)
    stream = io.BytesIO(b"HEADER" + data)
    stream.seek(6)
    await subject.storage.upload_file(subject.bucket, subject.key("io/body"), stream)
    assert data == await subject.storage.download_file(subject.bucket, subject.key("io/body"))


async def test_an_unseekable_stream_uploads_whole(subject: Subject) -> None:
    data = payload(CHUNK + 3)
    await subject.storage.upload_file(subject.bucket, subject.key("io/pipe"), io.BufferedReader(Unseekable(data)))
    assert data == await subject.storage.download_file(subject.bucket, subject.key("io/pipe"))


async def test_a_chunk_factory_uploads_whole(subject: Subject) -> None:
    data = payload(2 * CHUNK + 9)
    await subject.storage.upload_file(subject.bucket, subject.key("gen/audio.wav"), chunks_of(data))
    assert data == await subject.storage.download_file(subject.bucket, subject.key("gen/audio.wav"))


async def test_a_second_upload_without_upsert_is_a_conflict_and_keeps_the_first(subject: Subject) -> None:
    await subject.storage.upload_file(subject.bucket, subject.key("dup.bin"), b"first")
    with pytest.raises(StorageConflictError) as caught:
        await subject.storage.upload_file(subject.bucket, subject.key("dup.bin"), b"second")
    assert (subject.bucket, subject.key("dup.bin")) == (caught.value.bucket, caught.value.path)
    assert b"first" == await subject.storage.download_file(subject.bucket, subject.key("dup.bin"))


async def test_upsert_replaces_an_object(subject: Subject) -> None:
    await subject.storage.upload_file(subject.bucket, subject.key("up.bin"), b"first")
    await subject.storage.upload_file(subject.bucket, subject.key("up.bin"), b"second", upsert=True)
    assert b"second" == await subject.storage.download_file(subject.bucket, subject.key("up.bin"))


async def test_upsert_replaces_a_large_object_through_the_resumable_path(subject: Subject) -> None:
    await subject.storage.upload_file(subject.bucket, subject.key("big.bin"), payload(CHUNK + 1))
    with pytest.raises(StorageConflictError):
        await subject.storage.upload_file(subject.bucket, subject.key("big.bin"), payload(CHUNK + 1))
    replacement = payload(2 * CHUNK)
    await subject.storage.upload_file(subject.bucket, subject.key("big.bin"), replacement, upsert=True)
    assert replacement == await subject.storage.download_file(subject.bucket, subject.key("big.bin"))


@pytest.mark.parametrize(
    "call",
    [
        lambda t: t.storage.download_file(t.bucket, t.key("missing.bin")),
        lambda t: t.storage.download_to(t.bucket, t.key("missing.bin"), Path("/nonexistent-dir-for-test/x")),
        lambda t: t.storage.get_signed_url(t.bucket, t.key("missing.bin")),
    ],
    ids=["download_file", "download_to", "get_signed_url"],
)
async def test_a_missing_object_is_not_found(subject: Subject, call: Callable[[Subject], Awaitable[object]]) -> None:
    with pytest.raises(StorageNotFoundError) as caught:
        await call(subject)
    assert (subject.bucket, subject.key("missing.bin")) == (caught.value.bucket, caught.value.path)
    assert caught.value.__cause__ is not None or subject.name != "supabase"


@pytest.mark.parametrize(
    "call",
    [
        lambda t: t.storage.upload_file(MISSING_BUCKET, "a.bin", b"x"),
        lambda t: t.storage.upload_file(MISSING_BUCKET, "a.bin", b"x" * (CHUNK + 1)),
        lambda t: t.storage.download_file(MISSING_BUCKET, "a.bin"),
        lambda t: t.storage.download_to(MISSING_BUCKET, "a.bin", Path("/nonexistent-dir-for-test/x")),
        lambda t: t.storage.get_signed_url(MISSING_BUCKET, "a.bin"),
        lambda t: t.storage.exists(MISSING_BUCKET, "a.bin"),
        lambda t: t.storage.delete_file(MISSING_BUCKET, "a.bin"),
        lambda t: t.storage.list_files(MISSING_BUCKET, "a/"),
    ],
    ids=[
        "upload_file",
        "upload_file-resumable",
        "download_file",
        "download_to",
        "get_signed_url",
        "exists",
        "delete_file",
        "list_files",
    ],
)
async def test_a_missing_bucket_is_not_found(subject: Subject, call: Callable[[Subject], Awaitable[object]]) -> None:
    with pytest.raises(StorageNotFoundError):
        await call(subject)


async def test_exists_and_delete_follow_the_object(subject: Subject) -> None:
    assert not await subject.storage.exists(subject.bucket, subject.key("life/cycle.bin"))
    await subject.storage.upload_file(subject.bucket, subject.key("life/cycle.bin"), b"data")
    assert await subject.storage.exists(subject.bucket, subject.key("life/cycle.bin"))
    assert await subject.storage.delete_file(subject.bucket, subject.key("life/cycle.bin"))
    assert not await subject.storage.exists(subject.bucket, subject.key("life/cycle.bin"))
    assert not await subject.storage.delete_file(subject.bucket, subject.key("life/cycle.bin"))
    with pytest.raises(StorageNotFoundError):
        await subject.storage.download_file(subject.bucket, subject.key("life/cycle.bin"))


async def test_a_folder_prefix_is_not_an_object(subject: Subject) -> None:
    await subject.storage.upload_file(subject.bucket, subject.key("folder/inner.bin"), b"data")
    assert not await subject.storage.exists(subject.bucket, subject.key("folder"))
    with pytest.raises(StorageNotFoundError):
        await subject.storage.download_file(subject.bucket, subject.key("folder"))


async def test_download_to_writes_the_whole_object_atomically(subject: Subject, tmp_path: Path) -> None:
    data = payload(3 * CHUNK + 11)
    await subject.storage.upload_file(subject.bucket, subject.key("dl/clip.bin"), data)
    destination = tmp_path / "out" / "clip.bin"
    assert len(data) == await subject.storage.download_to(subject.bucket, subject.key("dl/clip.bin"), destination)
    assert data == destination.read_bytes()
    assert ["clip.bin"] == [p.name for p in destination.parent.iterdir()]


async def test_download_to_of_a_missing_object_leaves_the_destination_untouched(
    subject: Subject, tmp_path: Path
) -> None:
    destination = tmp_path / "keep.bin"
    destination.write_bytes(b"previous")
    with pytest.raises(StorageNotFoundError):
        await subject.storage.download_to(subject.bucket, subject.key("missing.bin"), destination)
    assert b"previous" == destination.read_bytes()
    assert ["keep.bin"] == [p.name for p in tmp_path.iterdir()]


async def test_a_signed_url_reads_the_object_until_it_expires(subject: Subject) -> None:
    await subject.storage.upload_file(subject.bucket, subject.key("signed/a b.png"), PNG)
    url = await subject.storage.get_signed_url(subject.bucket, subject.key("signed/a b.png"), expires_in=3)
    assert PNG == await subject.fetch_signed(url)
    await subject.expire(3)
    with pytest.raises(StoragePermissionError):
        await subject.fetch_signed(url)


async def test_a_tampered_signed_url_is_refused(subject: Subject) -> None:
    await subject.storage.upload_file(subject.bucket, subject.key("signed/one.bin"), b"one")
    await subject.storage.upload_file(subject.bucket, subject.key("signed/two.bin"), b"two")
    url = await subject.storage.get_signed_url(subject.bucket, subject.key("signed/one.bin"))
    with pytest.raises(StoragePermissionError):
        await subject.fetch_signed(url.replace("one.bin", "two.bin"))
    flipped = url[:-3] + ("A" if url[-3] != "A" else "B") + url[-2:]
    with pytest.raises(StoragePermissionError):
        await subject.fetch_signed(flipped)


async def test_content_type_is_detected_from_content_before_the_extension(subject: Subject) -> None:
    await subject.storage.upload_file(subject.bucket, subject.key("types/image.bin"), PNG)
    await subject.storage.upload_file(subject.bucket, subject.key("types/clip"), MP4)
    await subject.storage.upload_file(subject.bucket, subject.key("types/notes.txt"), b"plain words")
    await subject.storage.upload_file(subject.bucket, subject.key("types/given"), b"{}", "application/json")
    if subject.name == "local":
        pytest.skip("the local backend serves files as they are and stores no content type")
    assert ["image/png", "video/mp4", "text/plain", "application/json"] == [
        await subject.stored_type(subject.key(p))
        for p in ("types/image.bin", "types/clip", "types/notes.txt", "types/given")
    ]


async def test_too_large_an_upload_is_refused_before_anything_is_sent(subject: Subject) -> None:
    before = subject.request_count()
    with pytest.raises(ValidationError, match="limit"):
        await subject.storage.upload_file(subject.bucket, subject.key("huge.bin"), b"\0" * (MAX_UPLOAD + 1))
    with pytest.raises(ValidationError, match="limit"):
        await subject.storage.upload_file(
            subject.bucket, subject.key("huge.bin"), chunks_of(b"\0" * (MAX_UPLOAD + 1), 1 << 20)
        )
    assert before == subject.request_count()
    assert not await subject.storage.exists(subject.bucket, subject.key("huge.bin"))


@pytest.mark.parametrize(
    "path",
    ["", "/abs", "a//b", "a/./b", "../x", "a\\b", "nul\0", "tab\tname", "x" * 1025, "what?.bin", "a/" + "s" * 256],
    ids=[
        "empty",
        "absolute",
        "empty-segment",
        "dot",
        "dotdot",
        "backslash",
        "nul",
        "tab",
        "1025-bytes",
        "question-mark",
        "256-byte-segment",
    ],
)
async def test_a_bad_path_is_refused_before_any_io(subject: Subject, path: str) -> None:
    before = subject.request_count()
    for call in (
        subject.storage.upload_file(subject.bucket, path, b"x"),
        subject.storage.download_file(subject.bucket, path),
        subject.storage.exists(subject.bucket, path),
        subject.storage.delete_file(subject.bucket, path),
        subject.storage.get_signed_url(subject.bucket, path),
    ):
        with pytest.raises(ValidationError):
            await call
    assert before == subject.request_count()


@pytest.mark.parametrize(
    "call",
    [
        lambda t: t.storage.upload_file(".hidden", "a", b"x"),
        lambda t: t.storage.upload_file(t.bucket, t.key("a"), "text, not bytes"),
        lambda t: t.storage.upload_file(t.bucket, t.key("a"), 42),
        lambda t: t.storage.upload_file(t.bucket, t.key("a"), b"x", "not a type"),
        lambda t: t.storage.upload_file(t.bucket, t.key("a"), Path("/nonexistent/file.bin")),
        lambda t: t.storage.get_signed_url(t.bucket, t.key("a"), expires_in=0),
    ],
    ids=["bucket", "str-data", "int-data", "content-type", "missing-file", "expires_in"],
)
async def test_bad_arguments_are_validation_errors(
    subject: Subject, call: Callable[[Subject], Awaitable[object]]
) -> None:
    with pytest.raises(ValidationError):
        await call(subject)


async def test_a_factory_yielding_text_is_refused(subject: Subject) -> None:
    async def words() -> AsyncIterator[str]:
        yield "text"

    with pytest.raises(ValidationError, match="bytes"):
        await subject.storage.upload_file(subject.bucket, subject.key("a"), words)  # type: ignore[arg-type]  # the point of the test


async def test_every_error_is_a_pipeline_error(subject: Subject) -> None:
    with pytest.raises(PipelineError):
        await subject.storage.download_file(subject.bucket, subject.key("nothing-here"))


async def test_health_check_reports_ok(subject: Subject) -> None:
    health = await subject.storage.health_check()
    assert ("storage", "ok") == (health.name, health.status)
    assert health.latency_ms >= 0


@pytest.mark.parametrize("name", ["x" * 300, f"jobs/{'y' * 300}/clip.mp4", "/".join(["z" * 250] * 3)])
async def test_a_long_name_is_stored_whole_or_refused_as_a_validation_error(
    subject: Subject, name: str, tmp_path: Path
) -> None:
    """A segment over 255 bytes is refused by every backend before any I/O (a file system's name limit, and
    what Supabase's file backend answers 500 for); shorter segments are stored whole. Never a raw OSError."""
    data = payload(100)
    path = subject.key(name)
    if max(len(part.encode()) for part in path.split("/")) > 255:
        for call in (
            subject.storage.upload_file(subject.bucket, path, data),
            subject.storage.download_file(subject.bucket, path),
            subject.storage.download_to(subject.bucket, path, tmp_path / "copy"),
            subject.storage.exists(subject.bucket, path),
            subject.storage.delete_file(subject.bucket, path),
            subject.storage.get_signed_url(subject.bucket, path),
        ):
            with pytest.raises(ValidationError) as caught:
                await call
            assert "path" == caught.value.field
        assert not (tmp_path / "copy").exists()
        return
    await subject.storage.upload_file(subject.bucket, path, data)
    assert data == await subject.storage.download_file(subject.bucket, path)
    assert await subject.storage.exists(subject.bucket, path)
    assert data == await subject.fetch_signed(await subject.storage.get_signed_url(subject.bucket, path))
    assert await subject.storage.delete_file(subject.bucket, path)
    assert not await subject.storage.exists(subject.bucket, path)
