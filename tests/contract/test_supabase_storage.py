"""SupabaseStorage against the local Storage API: every error it sends mapped, retries, faults, the wire format."""

from __future__ import annotations

import io
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import httpx
import pytest

from shared.errors import (
    PipelineError,
    RetryableError,
    StorageConflictError,
    StorageError,
    StorageNotFoundError,
    StoragePermissionError,
    StorageUnavailableError,
    ValidationError,
)
from shared.storage import LocalStorage, SupabaseStorage
from shared.storage._errors import from_api_error, parse_retry_after, translate
from tests.fixtures.servers import free_port
from tests.fixtures.storage import BUCKET, CHUNK, Sleeps
from tests.storage_server import ERRORS, Fault, StorageApiServer

# What each error the server can send must become. A code added to the server without a line here fails
# test_every_server_error_has_an_expected_mapping; a mapping that regresses to the generic StorageError
# fails test_every_server_error_is_mapped_to_its_class.
EXPECTED: dict[str, type[PipelineError]] = {
    "NoSuchKey": StorageNotFoundError,
    "NoSuchBucket": StorageNotFoundError,
    "KeyAlreadyExists": StorageConflictError,
    "EntityTooLarge": ValidationError,
    "InvalidMimeType": ValidationError,
    "AccessDenied": StoragePermissionError,
    "InvalidJWT": StoragePermissionError,
    "InternalError": StorageUnavailableError,
    "SlowDown": StorageUnavailableError,
    "ServiceUnavailable": StorageUnavailableError,
}

OPERATIONS: dict[str, tuple[str, Callable[[SupabaseStorage], Awaitable[object]]]] = {
    "upload-small": ("POST", lambda s: s.upload_file(BUCKET, "e/x.bin", b"small")),
    "upload-resumable": ("POST", lambda s: s.upload_file(BUCKET, "e/x.bin", b"\1" * (CHUNK + 1))),
    "download_file": ("GET", lambda s: s.download_file(BUCKET, "e/x.bin")),
    "download_to": ("GET", lambda s: s.download_to(BUCKET, "e/x.bin", Path("/tmp/never"))),
    "get_signed_url": ("POST", lambda s: s.get_signed_url(BUCKET, "e/x.bin")),
    "exists": ("GET", lambda s: s.exists(BUCKET, "e/x.bin")),
    "delete_file": ("DELETE", lambda s: s.delete_file(BUCKET, "e/x.bin")),
}


def test_every_server_error_has_an_expected_mapping() -> None:
    assert set(ERRORS) == set(EXPECTED)


@pytest.mark.parametrize("operation", list(OPERATIONS))
@pytest.mark.parametrize("code", list(ERRORS))
async def test_every_server_error_is_mapped_to_its_class(
    supabase_storage: SupabaseStorage, storage_api: StorageApiServer, code: str, operation: str
) -> None:
    method, call = OPERATIONS[operation]
    storage_api.state.faults.append(Fault("error", code=code, method=method, times=10))
    if (operation, code) == ("exists", "NoSuchKey"):
        assert await call(supabase_storage) is False  # the one error that is an answer, not a failure
        return
    with pytest.raises(PipelineError) as caught:
        await call(supabase_storage)
    assert EXPECTED[code] is type(caught.value)
    assert caught.value.__cause__ is not None
    if isinstance(caught.value, StorageError):
        assert (BUCKET, "e/x.bin") == (caught.value.bucket, caught.value.path)


async def test_a_real_size_refusal_from_the_bucket_is_a_validation_error(supabase_storage: SupabaseStorage) -> None:
    with pytest.raises(ValidationError, match="too large") as caught:
        await supabase_storage.upload_file("limited", "a.png", b"\x89PNG\r\n\x1a\n" + b"\0" * 2000)
    from storage3.exceptions import StorageApiError  # noqa: PLC0415 - the test names the upstream error

    assert isinstance(caught.value.__cause__, StorageApiError)
    assert "413" == caught.value.__cause__.status


async def test_a_refused_content_type_is_a_validation_error(supabase_storage: SupabaseStorage) -> None:
    with pytest.raises(ValidationError, match="content type") as caught:
        await supabase_storage.upload_file("limited", "a.mp4", b"\x00\x00\x00\x18ftypmp42" + b"\0" * 20)
    assert "content_type" == caught.value.field
    await supabase_storage.upload_file("limited", "a.txt", b"words are fine")


async def test_a_bucket_the_key_may_not_use_is_a_permission_error(supabase_storage: SupabaseStorage) -> None:
    with pytest.raises(StoragePermissionError):
        await supabase_storage.upload_file("denied", "a.bin", b"x")
    with pytest.raises(StoragePermissionError):
        await supabase_storage.upload_file("denied", "big.bin", b"x" * (CHUNK + 1))


async def test_a_wrong_service_key_is_a_permission_error(
    storage_api: StorageApiServer, storage_http_client: httpx.AsyncClient
) -> None:
    storage = SupabaseStorage(storage_api.url, "sb_secret_wrong", storage_http_client, chunk_size=CHUNK)
    for call in (storage.download_file(BUCKET, "a"), storage.download_to(BUCKET, "a", Path("x"))):
        with pytest.raises(StoragePermissionError):
            await call


async def test_the_wire_format_is_what_supabase_expects(
    supabase_storage: SupabaseStorage, storage_api: StorageApiServer
) -> None:
    """storage3 options with hyphens, x-upsert as a string, sizes declared, content type kept."""
    await supabase_storage.upload_file(BUCKET, "w/a.png", b"\x89PNG\r\n\x1a\n" + b"\0" * 10, upsert=True)
    await supabase_storage.upload_file(BUCKET, "w/big.bin", b"\2" * (CHUNK + 5))
    posts = [r for r in storage_api.state.requests if r["method"] == "POST"]
    assert ["true", "false"] == [r["x-upsert"] for r in posts]
    assert str(CHUNK + 5) == posts[1]["upload-length"]
    assert "image/png" == storage_api.state.objects[BUCKET, "w/a.png"].content_type
    assert "application/octet-stream" == storage_api.state.objects[BUCKET, "w/big.bin"].content_type
    patches = [r for r in storage_api.state.requests if r["method"] == "PATCH"]
    assert [str(CHUNK), "5"] == [r["content-length"] for r in patches]


async def test_retry_after_of_a_503_is_honoured_and_the_call_then_succeeds(
    supabase_storage: SupabaseStorage, storage_api: StorageApiServer, sleeps: Sleeps
) -> None:
    await supabase_storage.upload_file(BUCKET, "r/a.bin", b"data")
    storage_api.state.faults.append(Fault("error", code="ServiceUnavailable", method="GET", retry_after="7"))
    assert b"data" == await supabase_storage.download_file(BUCKET, "r/a.bin")
    assert [7.0] == sleeps


async def test_retries_exhausted_raise_the_retryable_error_with_its_retry_after(
    supabase_storage: SupabaseStorage, storage_api: StorageApiServer, sleeps: Sleeps
) -> None:
    storage_api.state.faults.append(Fault("text", status=503, retry_after="3", times=3))
    with pytest.raises(StorageUnavailableError) as caught:
        await supabase_storage.exists(BUCKET, "r/a.bin")
    assert isinstance(caught.value, RetryableError)
    assert 3.0 == caught.value.retry_after
    assert 503 == caught.value.status
    assert 2 == len(sleeps)


async def test_a_non_json_bad_gateway_is_retryable(
    supabase_storage: SupabaseStorage, storage_api: StorageApiServer
) -> None:
    storage_api.state.faults.append(Fault("text", status=502, method="POST", times=5))
    with pytest.raises(StorageUnavailableError):
        await supabase_storage.upload_file(BUCKET, "r/b.bin", b"x" * (CHUNK + 1))


async def test_a_consumed_stream_is_sent_whole_again_on_retry(
    supabase_storage: SupabaseStorage, storage_api: StorageApiServer
) -> None:
    """The first attempt reads the whole BytesIO, then the connection drops; the retry must not send nothing."""
    data = b"clip-bytes" * 1000
    storage_api.state.faults.append(Fault("drop", method="POST", path_contains="/object/"))
    await supabase_storage.upload_file(BUCKET, "r/stream.bin", io.BytesIO(data))
    assert data == storage_api.state.read(BUCKET, "r/stream.bin")
    posts = [r for r in storage_api.state.requests if r["method"] == "POST"]
    assert 2 == len(posts)
    assert posts[0]["content-length"] == posts[1]["content-length"]


async def test_a_resumable_upload_dropped_mid_way_is_sent_whole_again(
    supabase_storage: SupabaseStorage, storage_api: StorageApiServer
) -> None:
    data = bytes(range(256)) * (3 * CHUNK // 256 + 7)
    storage_api.state.faults.append(Fault("drop", method="PATCH", times=1))

    async def factory() -> AsyncIterator[bytes]:
        for start in range(0, len(data), 50_000):
            yield data[start : start + 50_000]

    await supabase_storage.upload_file(BUCKET, "r/big.bin", factory)
    assert data == storage_api.state.read(BUCKET, "r/big.bin")
    creates = [r for r in storage_api.state.requests if r["method"] == "POST"]
    assert [str(len(data))] * 2 == [r["upload-length"] for r in creates]


async def test_a_download_dropped_mid_stream_is_retried_and_leaves_no_partial_file(
    supabase_storage: SupabaseStorage, storage_api: StorageApiServer, tmp_path: Path
) -> None:
    data = b"z" * (CHUNK * 2)
    await supabase_storage.upload_file(BUCKET, "r/dl.bin", data)
    storage_api.state.faults.append(Fault("drop", method="GET"))
    assert len(data) == await supabase_storage.download_to(BUCKET, "r/dl.bin", tmp_path / "dl.bin")
    assert data == (tmp_path / "dl.bin").read_bytes()
    storage_api.state.faults.append(Fault("drop", method="GET", times=3))
    with pytest.raises(StorageUnavailableError) as caught:
        await supabase_storage.download_to(BUCKET, "r/dl.bin", tmp_path / "again.bin")
    assert isinstance(caught.value.__cause__, httpx.TransportError)
    assert ["dl.bin"] == [p.name for p in tmp_path.iterdir()]


async def test_an_unreachable_server_is_retryable(storage_http_client: httpx.AsyncClient, sleeps: Sleeps) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    storage = SupabaseStorage(
        f"http://127.0.0.1:{port}", "sb_secret_x", storage_http_client, base_delay=0, sleep=sleeps
    )
    with pytest.raises(StorageUnavailableError) as caught:
        await storage.download_file(BUCKET, "a")
    assert isinstance(caught.value.__cause__, httpx.ConnectError)
    assert 2 == len(sleeps)


def test_a_dropped_http2_connection_is_retryable() -> None:
    from h2.exceptions import ProtocolError  # noqa: PLC0415 - what a broken HTTP/2 stream can surface as

    error = translate(ProtocolError("connection terminated"), bucket=BUCKET, path="a")
    assert StorageUnavailableError is type(error)


@pytest.mark.parametrize(
    ("raised", "expected"),
    [
        (httpx.ReadTimeout("slow"), StorageUnavailableError),
        (httpx.RemoteProtocolError("peer closed"), StorageUnavailableError),
        (httpx.DecodingError("bad gzip"), StorageError),
        (ValueError("Object keys must not contain dot segments"), StorageError),
        (RuntimeError("unknown"), StorageError),
    ],
)
def test_driver_exceptions_are_translated(raised: Exception, expected: type[PipelineError]) -> None:
    assert expected is type(translate(raised, bucket=BUCKET, path="a"))


def test_a_pipeline_error_passes_through_translation_unchanged() -> None:
    error = ValidationError("already ours")
    assert error is translate(error, bucket=None, path=None)


def test_an_unknown_api_error_is_a_plain_storage_error_naming_its_code() -> None:
    error = from_api_error(status="400", error="InvalidKey", message="bad key", bucket=BUCKET, path="a")
    assert StorageError is type(error)
    assert "InvalidKey" in str(error)


@pytest.mark.parametrize(
    ("header", "expected"),
    [(None, None), ("", None), ("5", 5.0), ("-3", 0.0), ("soon", None), ("Wed, 21 Oct 2015 07:28:10 GMT", 10.0)],
)
def test_retry_after_is_read_as_seconds_or_an_http_date(header: str | None, expected: float | None) -> None:
    assert expected == parse_retry_after(header, now=1445412480.0)


def test_a_non_positive_chunk_size_is_refused(storage_http_client: httpx.AsyncClient) -> None:
    with pytest.raises(StorageError):
        SupabaseStorage("http://127.0.0.1:1", "k", storage_http_client, chunk_size=0)


async def test_the_supabase_client_is_built_lazily_on_the_given_http_client(
    storage_api: StorageApiServer, storage_http_client: httpx.AsyncClient
) -> None:
    storage = SupabaseStorage(storage_api.url, storage_api.key, storage_http_client)
    assert "SupabaseStorage(url=" in repr(storage)
    assert not await storage.exists(BUCKET, "nothing")
    assert storage_http_client is storage._client.options.httpx_client  # type: ignore[union-attr]


async def test_health_check_is_down_with_a_wrong_key(
    storage_api: StorageApiServer, storage_http_client: httpx.AsyncClient
) -> None:
    storage = SupabaseStorage(storage_api.url, "sb_secret_wrong-key-123", storage_http_client)
    health = await storage.health_check()
    assert "down" == health.status
    assert "SUPABASE_SERVICE_KEY" in (health.detail or "")
    assert "wrong-key" not in (health.detail or "")


async def test_health_check_is_down_when_nothing_listens(storage_http_client: httpx.AsyncClient) -> None:
    storage = SupabaseStorage(f"http://127.0.0.1:{free_port()}", "sb_secret_key-1234567", storage_http_client)
    assert "down" == (await storage.health_check()).status


async def test_local_health_check_is_down_when_its_folder_cannot_be_made(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("not a folder")
    storage = LocalStorage(tmp_path / "a-file" / "storage")
    health = await storage.health_check()
    assert "down" == health.status
    assert "STORAGE_LOCAL_ROOT" in (health.detail or "")
