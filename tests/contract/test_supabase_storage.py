"""SupabaseStorage against the real Storage server: every error class from a real answer, faults from a proxy.

The server is the real one (tests/real_storage, or STORAGE_IT_URL's); drops, 5xx answers, Retry-After and
slow bodies come from :class:`~tests.real_storage.proxy.FaultProxy` in front of it, and a restart is a real
restart of the server process.
"""

from __future__ import annotations

import asyncio
import io
import logging
import socket
import threading
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
from shared.storage._errors import error_from_response, from_api_error, parse_retry_after, translate
from shared.storage._supabase import HOSTED_CHUNK_BYTES, key_kind
from tests.fixtures.servers import free_port
from tests.fixtures.storage import CHUNK, MISSING_BUCKET, Sleeps, StorageTarget
from tests.real_storage.proxy import Fault, FaultProxy

PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 16

Call = Callable[[SupabaseStorage, str, str], Awaitable[object]]
OPERATIONS: dict[str, Call] = {
    "upload-small": lambda s, b, p: s.upload_file(b, p, b"small"),
    "upload-resumable": lambda s, b, p: s.upload_file(b, p, b"\1" * (CHUNK + 1)),
    "download_file": lambda s, b, p: s.download_file(b, p),
    "download_to": lambda s, b, p: s.download_to(b, p, Path("/tmp/never-written")),
    "get_signed_url": lambda s, b, p: s.get_signed_url(b, p),
    "exists": lambda s, b, p: s.exists(b, p),
    "delete_file": lambda s, b, p: s.delete_file(b, p),
    "list_files": lambda s, b, p: s.list_files(b, p),
}


def storage_with(
    target: StorageTarget, client: httpx.AsyncClient, key: str, url: str | None = None, **options: object
) -> SupabaseStorage:
    return SupabaseStorage(url or target.url, key, client, chunk_size=CHUNK, **options)  # type: ignore[arg-type]


# --- every error class, from the real server's own answers ---


async def test_a_duplicate_is_a_conflict_on_both_upload_paths(
    supabase_storage: SupabaseStorage, storage_target: StorageTarget, storage_prefix: str
) -> None:
    for path, body in ((f"{storage_prefix}/small", b"x"), (f"{storage_prefix}/large", b"y" * (CHUNK + 1))):
        await supabase_storage.upload_file(storage_target.bucket, path, body)
        with pytest.raises(StorageConflictError) as caught:
            await supabase_storage.upload_file(storage_target.bucket, path, body)
        assert caught.value.__cause__ is not None


async def test_the_buckets_size_limit_is_a_validation_error(
    supabase_storage: SupabaseStorage, storage_target: StorageTarget, storage_prefix: str
) -> None:
    with pytest.raises(ValidationError, match="too large") as caught:
        await supabase_storage.upload_file(storage_target.limited, f"{storage_prefix}/a.png", PNG + b"\0" * 2000)
    from storage3.exceptions import StorageApiError  # noqa: PLC0415 - the test names the upstream error

    assert isinstance(caught.value.__cause__, StorageApiError)
    assert "413" == caught.value.__cause__.status


async def test_a_refused_content_type_is_a_validation_error(
    supabase_storage: SupabaseStorage, storage_target: StorageTarget, storage_prefix: str
) -> None:
    with pytest.raises(ValidationError, match="content type") as caught:
        await supabase_storage.upload_file(
            storage_target.limited, f"{storage_prefix}/a.mp4", b"\x00\x00\x00\x18ftypmp42" + b"\0" * 20
        )
    assert "content_type" == caught.value.field
    await supabase_storage.upload_file(storage_target.limited, f"{storage_prefix}/a.txt", b"words are fine")


@pytest.mark.parametrize("key", ["wrong", "expired", "anon"])
async def test_a_key_that_may_not_read_is_a_permission_error_not_a_missing_object(
    storage_target: StorageTarget,
    supabase_storage: SupabaseStorage,
    storage_http_client: httpx.AsyncClient,
    storage_prefix: str,
    key: str,
) -> None:
    """The server answers NoSuchBucket (or NoSuchKey) to such reads: it falls back to anonymous access."""
    server = storage_target.server
    if key == "anon":
        if storage_target.anon_key is None:
            pytest.skip("STORAGE_IT_ANON_KEY is not set for the given server")
        refused_key = storage_target.anon_key
    elif key == "expired":
        if server is None:
            pytest.skip("an expired key needs the server's JWT secret (only for the server the tests start)")
        refused_key = server.key_for("service_role", expires_in=-60)
    else:
        refused_key = storage_target.service_key[:-6] + (
            "AAAAAA" if storage_target.service_key[-6:] != "AAAAAA" else "BBBBBB"
        )
    path = f"{storage_prefix}/there.bin"
    await supabase_storage.upload_file(storage_target.bucket, path, b"present")
    refused = storage_with(storage_target, storage_http_client, refused_key)
    calls: list[Callable[[], Awaitable[object]]] = [
        lambda: refused.download_file(storage_target.bucket, path),
        lambda: refused.download_to(storage_target.bucket, path, Path("/tmp/never-written")),
        lambda: refused.exists(storage_target.bucket, path),
        lambda: refused.download_file(storage_target.bucket, f"{storage_prefix}/absent.bin"),
    ]
    for call in calls:
        with pytest.raises(StoragePermissionError) as caught:
            await call()
        assert "SUPABASE_SERVICE_KEY" in str(caught.value)
        assert refused_key not in str(caught.value)
    health = await refused.health_check()
    assert "down" == health.status
    assert refused_key not in (health.detail or "")


async def test_the_service_key_still_tells_a_missing_bucket_from_a_missing_object(
    supabase_storage: SupabaseStorage, storage_target: StorageTarget, storage_prefix: str
) -> None:
    with pytest.raises(StorageNotFoundError, match="Bucket not found"):
        await supabase_storage.download_file(MISSING_BUCKET, "a.bin")
    assert not await supabase_storage.exists(storage_target.bucket, f"{storage_prefix}/absent.bin")
    with pytest.raises(StorageNotFoundError):
        await supabase_storage.delete_file(MISSING_BUCKET, "a.bin")
    assert not await supabase_storage.delete_file(storage_target.bucket, f"{storage_prefix}/absent.bin")


WRITES: dict[str, Call] = {
    "upload-small": lambda s, b, p: s.upload_file(b, p, b"small"),
    "upload-resumable": lambda s, b, p: s.upload_file(b, p, b"\1" * (CHUNK + 1)),
    "get_signed_url": lambda s, b, p: s.get_signed_url(b, p),
    "delete_file": lambda s, b, p: s.delete_file(b, p),
    "list_files": lambda s, b, p: s.list_files(b, p),
}


@pytest.mark.parametrize("operation", list(WRITES))
async def test_every_other_method_refuses_a_wrong_key_with_a_permission_error(
    supabase_storage: SupabaseStorage,
    storage_target: StorageTarget,
    storage_http_client: httpx.AsyncClient,
    storage_prefix: str,
    operation: str,
) -> None:
    path = f"{storage_prefix}/w.bin"
    await supabase_storage.upload_file(storage_target.bucket, path, b"present")
    wrong = storage_with(storage_target, storage_http_client, storage_target.service_key[:-4] + "AAAA")
    with pytest.raises(StoragePermissionError) as caught:
        await WRITES[operation](wrong, storage_target.bucket, path)
    assert caught.value.__cause__ is not None
    assert b"present" == await supabase_storage.download_file(storage_target.bucket, path)


async def test_a_write_with_a_wrong_key_is_a_permission_error(
    storage_target: StorageTarget, storage_http_client: httpx.AsyncClient, storage_prefix: str
) -> None:
    wrong = storage_with(storage_target, storage_http_client, storage_target.service_key[:-4] + "AAAA")
    for body in (b"x", b"x" * (CHUNK + 1)):
        with pytest.raises(StoragePermissionError):
            await wrong.upload_file(storage_target.bucket, f"{storage_prefix}/w.bin", body)


@pytest.mark.parametrize("refusal", ["tampered-path", "no-token", "forged-token"])
async def test_a_refused_signed_url_is_a_permission_error(
    supabase_storage: SupabaseStorage,
    storage_target: StorageTarget,
    storage_http_client: httpx.AsyncClient,
    storage_prefix: str,
    refusal: str,
) -> None:
    """The real codes: a tampered path InvalidSignature, no token InvalidRequest, a forged token InvalidJWT."""
    await supabase_storage.upload_file(storage_target.bucket, f"{storage_prefix}/one.bin", b"one")
    await supabase_storage.upload_file(storage_target.bucket, f"{storage_prefix}/two.bin", b"two")
    url = await supabase_storage.get_signed_url(storage_target.bucket, f"{storage_prefix}/one.bin")
    changed = {
        "tampered-path": url.replace("one.bin", "two.bin"),
        "no-token": url.split("?", 1)[0],
        "forged-token": url[:-3] + ("A" if url[-3] != "A" else "B") + url[-2:],
    }[refusal]
    response = await storage_http_client.get(changed)
    error = error_from_response(
        response.status_code, response.content, response.headers, bucket=None, path=None, signed_url=True
    )
    assert StoragePermissionError is type(error)
    code = response.json().get("code") or response.json().get("error")
    assert {"tampered-path": "InvalidSignature", "no-token": "InvalidRequest", "forged-token": "InvalidJWT"}[
        refusal
    ] == code


async def test_tus_upsert_replaces_because_every_patch_says_x_upsert(
    supabase_storage: SupabaseStorage, storage_target: StorageTarget, storage_proxy: FaultProxy, storage_prefix: str
) -> None:
    path = f"{storage_prefix}/big.bin"
    await supabase_storage.upload_file(storage_target.bucket, path, b"\1" * (2 * CHUNK + 3))
    replacement = b"\2" * (2 * CHUNK + 5)
    await supabase_storage.upload_file(storage_target.bucket, path, replacement, upsert=True)
    assert replacement == await supabase_storage.download_file(storage_target.bucket, path)
    patches = [r for r in storage_proxy.requests if r.method == "PATCH"]
    assert 6 == len(patches)
    assert ["false"] * 3 + ["true"] * 3 == [r.headers.get("x-upsert") for r in patches]
    assert [str(CHUNK), str(CHUNK), "3", str(CHUNK), str(CHUNK), "5"] == [r.headers["content-length"] for r in patches]


# --- what the key rules refuse up front, compared with the real server's answer ---


async def test_the_real_server_cannot_serve_a_key_with_a_question_mark_through_a_signed_url(
    storage_target: StorageTarget, storage_http_client: httpx.AsyncClient, storage_prefix: str
) -> None:
    """Why validate_path refuses '?': the server stores such a key, but its signed URL cannot fetch it."""
    base = f"{storage_target.url}/storage/v1/object"
    key = f"{storage_prefix}/what%3F.bin"
    stored = await storage_http_client.post(
        f"{base}/{storage_target.bucket}/{key}", content=b"q", headers=storage_target.headers()
    )
    assert 200 == stored.status_code, stored.text
    signed = await storage_http_client.post(
        f"{base}/sign/{storage_target.bucket}/{key}", json={"expiresIn": 60}, headers=storage_target.headers()
    )
    assert 200 == signed.status_code, signed.text
    fetched = await storage_http_client.get(f"{storage_target.url}/storage/v1{signed.json()['signedURL']}")
    assert 200 != fetched.status_code
    with pytest.raises(ValidationError, match=r"\?"):
        await storage_with(storage_target, storage_http_client, storage_target.service_key).upload_file(
            storage_target.bucket, f"{storage_prefix}/what?.bin", b"q"
        )


async def test_the_real_server_fails_with_500_on_a_segment_over_255_bytes(
    storage_target: StorageTarget, storage_http_client: httpx.AsyncClient, storage_prefix: str
) -> None:
    """Why validate_path refuses long segments: the file backend answers 500, which would be retried."""
    if storage_target.server is None:
        pytest.skip("a given server may use another backend (S3 takes long segments)")
    base = f"{storage_target.url}/storage/v1/object/{storage_target.bucket}"
    fits = await storage_http_client.post(
        f"{base}/{storage_prefix}/{'s' * 255}", content=b"x", headers=storage_target.headers()
    )
    too_long = await storage_http_client.post(
        f"{base}/{storage_prefix}/{'s' * 256}", content=b"x", headers=storage_target.headers()
    )
    assert (200, 500) == (fits.status_code, too_long.status_code)
    with pytest.raises(ValidationError, match="255 bytes"):
        await storage_with(storage_target, storage_http_client, storage_target.service_key).upload_file(
            storage_target.bucket, f"{storage_prefix}/{'s' * 256}", b"x"
        )


# --- faults, from the proxy in front of the real server ---


@pytest.mark.parametrize("operation", list(OPERATIONS))
@pytest.mark.parametrize("status", [500, 502, 503, 429])
async def test_every_operation_maps_an_injected_failure_status_to_unavailable(
    supabase_storage: SupabaseStorage,
    storage_target: StorageTarget,
    storage_proxy: FaultProxy,
    storage_prefix: str,
    sleeps: Sleeps,
    status: int,
    operation: str,
) -> None:
    call = OPERATIONS[operation]
    storage_proxy.add(Fault("status", status=status, times=100, body=b'{"message":"injected"}'))
    with pytest.raises(StorageUnavailableError) as caught:
        await call(supabase_storage, storage_target.bucket, f"{storage_prefix}/e.bin")
    assert isinstance(caught.value, RetryableError)
    assert caught.value.__cause__ is not None
    assert 2 == len(sleeps)  # three attempts
    assert storage_target.bucket == caught.value.bucket


async def test_retry_after_of_a_503_is_honoured_and_the_call_then_succeeds(
    supabase_storage: SupabaseStorage,
    storage_target: StorageTarget,
    storage_proxy: FaultProxy,
    storage_prefix: str,
    sleeps: Sleeps,
) -> None:
    await supabase_storage.upload_file(storage_target.bucket, f"{storage_prefix}/a.bin", b"data")
    storage_proxy.add(Fault("status", status=503, method="GET", retry_after="7"))
    assert b"data" == await supabase_storage.download_file(storage_target.bucket, f"{storage_prefix}/a.bin")
    assert [7.0] == sleeps


async def test_retries_exhausted_raise_the_retryable_error_with_its_retry_after(
    supabase_storage: SupabaseStorage, storage_target: StorageTarget, storage_proxy: FaultProxy, sleeps: Sleeps
) -> None:
    storage_proxy.add(Fault("status", status=503, retry_after="3", times=3))
    with pytest.raises(StorageUnavailableError) as caught:
        await supabase_storage.exists(storage_target.bucket, "r/a.bin")
    assert 3.0 == caught.value.retry_after
    assert 503 == caught.value.status
    assert [3.0, 3.0] == sleeps


async def test_a_consumed_stream_is_sent_whole_again_after_a_drop(
    supabase_storage: SupabaseStorage, storage_target: StorageTarget, storage_proxy: FaultProxy, storage_prefix: str
) -> None:
    data = b"clip-bytes" * 1000
    storage_proxy.add(Fault("drop", method="POST", path_contains="/object/"))
    await supabase_storage.upload_file(storage_target.bucket, f"{storage_prefix}/stream.bin", io.BytesIO(data))
    assert data == await supabase_storage.download_file(storage_target.bucket, f"{storage_prefix}/stream.bin")
    posts = [r for r in storage_proxy.requests if r.method == "POST"]
    assert [("drop"), None] == [r.fault for r in posts]
    assert posts[0].headers["content-length"] == posts[1].headers["content-length"]


def tus_requests(proxy: FaultProxy) -> list[tuple[str, str | None, int]]:
    """The resumable upload's requests through the proxy: method, Upload-Offset sent, body bytes passed on."""
    return [
        (r.method, r.headers.get("upload-offset"), r.body_bytes)
        for r in proxy.requests
        if "/upload/resumable" in r.path
    ]


def varied(size: int) -> bytes:
    return b"".join(i.to_bytes(4, "big") * 64 for i in range(size // 256 + 1))[:size]


async def test_a_resumable_upload_dropped_before_a_patch_resumes_it_without_a_new_upload(
    supabase_storage: SupabaseStorage, storage_target: StorageTarget, storage_proxy: FaultProxy, storage_prefix: str
) -> None:
    data = varied(3 * CHUNK + 7)
    storage_proxy.add(Fault("drop", method="PATCH", skip=1))

    async def factory() -> AsyncIterator[bytes]:
        for start in range(0, len(data), 50_000):
            yield data[start : start + 50_000]

    await supabase_storage.upload_file(storage_target.bucket, f"{storage_prefix}/big.bin", factory)
    assert data == await supabase_storage.download_file(storage_target.bucket, f"{storage_prefix}/big.bin")
    assert [
        ("POST", None, 0),
        ("PATCH", "0", CHUNK),
        ("PATCH", str(CHUNK), 0),  # dropped before any byte
        ("HEAD", None, 0),
        ("PATCH", str(CHUNK), CHUNK),
        ("PATCH", str(2 * CHUNK), CHUNK),
        ("PATCH", str(3 * CHUNK), 7),
    ] == tus_requests(storage_proxy)


async def test_a_patch_cut_mid_body_resumes_from_the_servers_offset_and_sends_nothing_twice(
    storage_target: StorageTarget,
    storage_proxy: FaultProxy,
    storage_http_client: httpx.AsyncClient,
    storage_prefix: str,
) -> None:
    """One PATCH of the whole body (the loopback server's default) cut after 3 MiB: only the rest is sent again."""
    data = varied(7 * 1024 * 1024 + 11)
    storage = SupabaseStorage(
        storage_proxy.url, storage_target.service_key, storage_http_client, max_upload_bytes=len(data), base_delay=0.2
    )  # the wait lets the server store what it got before the cut (an earlier HEAD may see less: then a 409)
    storage_proxy.add(Fault("drop_mid_request", method="PATCH", after_bytes=3 * 1024 * 1024))
    await storage.upload_file(storage_target.bucket, f"{storage_prefix}/cut.bin", data)
    assert data == await storage.download_file(storage_target.bucket, f"{storage_prefix}/cut.bin")
    requests = tus_requests(storage_proxy)
    assert ["POST", "PATCH", "HEAD", "PATCH"] == [method for method, _, _ in requests]
    resumed_at = int(requests[3][1] or 0)
    assert 0 < resumed_at <= 3 * 1024 * 1024
    assert len(data) - resumed_at == requests[3][2]
    assert len(data) + 3 * 1024 * 1024 - resumed_at == sum(sent for _, _, sent in requests)


async def test_a_patch_too_large_for_a_proxy_goes_on_in_hosted_chunks(
    storage_target: StorageTarget,
    storage_proxy: FaultProxy,
    storage_http_client: httpx.AsyncClient,
    storage_prefix: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A proxy's body limit (HTTP 413) refuses the one whole-body PATCH: the rest goes in 6 MiB chunks."""
    data = varied(HOSTED_CHUNK_BYTES + 1024 * 1024 + 7)
    storage = SupabaseStorage(storage_proxy.url, storage_target.service_key, storage_http_client)
    storage_proxy.add(Fault("status", method="PATCH", status=413, body=b"Request Entity Too Large"))
    with caplog.at_level(logging.WARNING, logger="shared.storage"):
        await storage.upload_file(storage_target.bucket, f"{storage_prefix}/413.bin", data)
    assert data == await storage.download_file(storage_target.bucket, f"{storage_prefix}/413.bin")
    requests = [(method, offset) for method, offset, _ in tus_requests(storage_proxy)]
    assert [("POST", None), ("PATCH", "0"), ("HEAD", None), ("PATCH", "0"), ("PATCH", str(HOSTED_CHUNK_BYTES))] == (
        requests
    )
    assert "STORAGE_TUS_CHUNK_MB" in caplog.text


async def test_a_413_to_a_hosted_chunk_is_an_error_not_a_loop(
    storage_target: StorageTarget,
    storage_proxy: FaultProxy,
    storage_http_client: httpx.AsyncClient,
    storage_prefix: str,
) -> None:
    storage = SupabaseStorage(
        storage_proxy.url, storage_target.service_key, storage_http_client, chunk_size=HOSTED_CHUNK_BYTES
    )
    storage_proxy.add(Fault("status", method="PATCH", status=413, times=100, body=b"Request Entity Too Large"))
    with pytest.raises(PipelineError):
        await storage.upload_file(storage_target.bucket, f"{storage_prefix}/413-small.bin", varied(7 * 1024 * 1024))
    assert 1 == storage_proxy.count("PATCH")


@pytest.mark.parametrize(
    ("status", "answer"),
    [(503, b""), (409, b"Upload-Offset conflict\n")],  # the second, the server's own answer to a stale offset
)
async def test_a_retryable_status_to_a_patch_resumes_after_asking_the_offset(
    supabase_storage: SupabaseStorage,
    storage_target: StorageTarget,
    storage_proxy: FaultProxy,
    storage_prefix: str,
    sleeps: Sleeps,
    status: int,
    answer: bytes,
) -> None:
    data = varied(3 * CHUNK + 5)
    storage_proxy.add(Fault("status", method="PATCH", status=status, skip=2, body=answer))
    await supabase_storage.upload_file(storage_target.bucket, f"{storage_prefix}/503.bin", data)
    assert data == await supabase_storage.download_file(storage_target.bucket, f"{storage_prefix}/503.bin")
    assert [
        ("POST", None),
        ("PATCH", "0"),
        ("PATCH", str(CHUNK)),
        ("PATCH", str(2 * CHUNK)),  # answered with the injected status
        ("HEAD", None),
        ("PATCH", str(2 * CHUNK)),
        ("PATCH", str(3 * CHUNK)),
    ] == [(method, offset) for method, offset, _ in tus_requests(storage_proxy)]
    assert 1 == len(sleeps)


async def test_an_upload_the_server_no_longer_has_is_created_again(
    supabase_storage: SupabaseStorage, storage_target: StorageTarget, storage_proxy: FaultProxy, storage_prefix: str
) -> None:
    data = varied(2 * CHUNK + 3)
    gone = b"The file for this url was not found\n"  # what the server answers for an upload it no longer has
    storage_proxy.add(Fault("status", method="PATCH", status=404, skip=1, body=gone))
    await supabase_storage.upload_file(storage_target.bucket, f"{storage_prefix}/gone.bin", data)
    assert data == await supabase_storage.download_file(storage_target.bucket, f"{storage_prefix}/gone.bin")
    assert ["POST", "PATCH", "PATCH", "POST", "PATCH", "PATCH", "PATCH"] == [
        method for method, _, _ in tus_requests(storage_proxy)
    ]


async def test_an_upload_whose_offset_the_server_no_longer_knows_is_created_again(
    supabase_storage: SupabaseStorage, storage_target: StorageTarget, storage_proxy: FaultProxy, storage_prefix: str
) -> None:
    data = varied(2 * CHUNK + 3)
    storage_proxy.add(Fault("drop", method="PATCH", skip=1))
    storage_proxy.add(Fault("status", method="HEAD", status=410))
    await supabase_storage.upload_file(storage_target.bucket, f"{storage_prefix}/expired.bin", data)
    assert data == await supabase_storage.download_file(storage_target.bucket, f"{storage_prefix}/expired.bin")
    assert [("POST", None), ("PATCH", "0"), ("PATCH", str(CHUNK)), ("HEAD", None), ("POST", None)] + [
        ("PATCH", str(offset)) for offset in (0, CHUNK, 2 * CHUNK)
    ] == [(method, offset) for method, offset, _ in tus_requests(storage_proxy)]


async def test_a_lost_answer_to_the_last_patch_finishes_the_object_without_sending_it_again(
    supabase_storage: SupabaseStorage, storage_target: StorageTarget, storage_proxy: FaultProxy, storage_prefix: str
) -> None:
    path = f"{storage_prefix}/lost.bin"
    data = varied(CHUNK + 9)
    storage_proxy.add(Fault("drop_answer", method="PATCH", skip=1))
    await supabase_storage.upload_file(storage_target.bucket, path, data, upsert=True)
    assert data == await supabase_storage.download_file(storage_target.bucket, path)
    assert [
        ("POST", None, 0),
        ("PATCH", "0", CHUNK),
        ("PATCH", str(CHUNK), 9),  # stored and finished, its answer lost
        ("HEAD", None, 0),
        ("PATCH", str(len(data)), 0),  # finishes the object again, sending nothing
    ] == tus_requests(storage_proxy)


async def test_a_round_that_moved_the_offset_earns_a_fresh_retry_window(
    storage_target: StorageTarget,
    storage_proxy: FaultProxy,
    storage_http_client: httpx.AsyncClient,
    storage_prefix: str,
) -> None:
    """A window shorter than one wait ends each round at its first failure; progress still carries it on."""
    data = varied(4 * CHUNK)
    storage = SupabaseStorage(
        storage_proxy.url,
        storage_target.service_key,
        storage_http_client,
        chunk_size=CHUNK,
        retry_window=0.05,
        base_delay=1.0,
    )
    storage_proxy.add(Fault("drop", method="PATCH", skip=1))
    storage_proxy.add(Fault("drop", method="PATCH", skip=1))
    await storage.upload_file(storage_target.bucket, f"{storage_prefix}/late.bin", data)
    assert data == await storage.download_file(storage_target.bucket, f"{storage_prefix}/late.bin")
    assert ["POST", "PATCH", "PATCH", "HEAD", "PATCH", "PATCH", "HEAD", "PATCH", "PATCH"] == [
        method for method, _, _ in tus_requests(storage_proxy)
    ]


async def test_a_server_that_takes_no_byte_ends_the_resumable_upload_within_the_policy(
    supabase_storage: SupabaseStorage,
    storage_target: StorageTarget,
    storage_proxy: FaultProxy,
    storage_prefix: str,
    sleeps: Sleeps,
) -> None:
    storage_proxy.add(Fault("status", method="PATCH", status=503, times=100))
    with pytest.raises(StorageUnavailableError) as caught:
        await supabase_storage.upload_file(storage_target.bucket, f"{storage_prefix}/never.bin", varied(2 * CHUNK))
    assert 503 == caught.value.status
    assert ["POST", "PATCH", "HEAD", "PATCH", "HEAD", "PATCH", "HEAD"] == [
        method for method, _, _ in tus_requests(storage_proxy)
    ]
    assert 2 == len(sleeps)


async def test_a_download_cut_mid_body_is_retried_and_leaves_no_partial_file(
    supabase_storage: SupabaseStorage,
    storage_target: StorageTarget,
    storage_proxy: FaultProxy,
    storage_prefix: str,
    tmp_path: Path,
) -> None:
    data = b"z" * (CHUNK * 2)
    path = f"{storage_prefix}/dl.bin"
    await supabase_storage.upload_file(storage_target.bucket, path, data)
    storage_proxy.add(Fault("drop_mid_body", method="GET", after_bytes=CHUNK))
    assert len(data) == await supabase_storage.download_to(storage_target.bucket, path, tmp_path / "dl.bin")
    assert data == (tmp_path / "dl.bin").read_bytes()
    storage_proxy.add(Fault("drop_mid_body", method="GET", after_bytes=1000, times=3))
    with pytest.raises(StorageUnavailableError) as caught:
        await supabase_storage.download_to(storage_target.bucket, path, tmp_path / "again.bin")
    assert isinstance(caught.value.__cause__, httpx.TransportError)
    assert ["dl.bin"] == [p.name for p in tmp_path.iterdir()]


async def test_a_body_slower_than_the_timeout_is_unavailable_and_a_slow_one_within_it_arrives(
    supabase_storage: SupabaseStorage, storage_target: StorageTarget, storage_proxy: FaultProxy, storage_prefix: str
) -> None:
    data = b"s" * 64_000
    path = f"{storage_prefix}/slow.bin"
    await supabase_storage.upload_file(storage_target.bucket, path, data)
    storage_proxy.add(Fault("slow_body", method="GET", piece=8_000, delay=0.05))
    assert data == await supabase_storage.download_file(storage_target.bucket, path)
    async with httpx.AsyncClient(timeout=httpx.Timeout(5.0, read=0.3)) as impatient:
        storage = SupabaseStorage(
            storage_proxy.url, storage_target.service_key, impatient, max_attempts=2, base_delay=0
        )
        storage_proxy.add(Fault("slow_body", method="GET", piece=1_000, delay=1.0, times=2))
        with pytest.raises(StorageUnavailableError, match="in time"):
            await storage.download_file(storage_target.bucket, path)


async def test_an_unreachable_server_is_retryable(storage_http_client: httpx.AsyncClient, sleeps: Sleeps) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    storage = SupabaseStorage(
        f"http://127.0.0.1:{port}", "sb_secret_x", storage_http_client, max_attempts=3, base_delay=0, sleep=sleeps
    )
    with pytest.raises(StorageUnavailableError) as caught:
        await storage.download_file("media", "a")
    assert isinstance(caught.value.__cause__, httpx.ConnectError)
    assert 2 == len(sleeps)


async def test_the_default_retry_window_outlasts_a_real_server_restart(
    storage_target: StorageTarget, storage_http_client: httpx.AsyncClient, storage_prefix: str
) -> None:
    """The server process is stopped and started again while a download waits with the default policy."""
    server = storage_target.server
    if server is None:
        pytest.skip("a given server (STORAGE_IT_URL) cannot be restarted by the tests")
    storage = SupabaseStorage(server.url, server.service_key, storage_http_client)
    path = f"{storage_prefix}/restart.bin"
    await storage.upload_file(storage_target.bucket, path, b"survives")
    server.stop_server()
    restarted = threading.Event()

    def restart() -> None:
        threading.Event().wait(3.0)  # down for 3 s (the shortest restart observed), plus the start-up itself
        server.start_server()
        restarted.set()

    thread = threading.Thread(target=restart)
    thread.start()
    try:
        assert b"survives" == await storage.download_file(storage_target.bucket, path)
    finally:
        await asyncio.to_thread(thread.join)
    assert restarted.is_set()


# --- health ---


async def test_health_check_is_ok_with_the_service_key(supabase_storage: SupabaseStorage) -> None:
    assert "ok" == (await supabase_storage.health_check()).status


async def test_health_check_is_down_with_a_wrong_key(
    storage_target: StorageTarget, storage_http_client: httpx.AsyncClient
) -> None:
    storage = storage_with(storage_target, storage_http_client, "sb_secret_wrong-key-123")
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


# --- translation without a server (what no server answer can produce) ---


@pytest.mark.parametrize(
    ("key", "kind"),
    [
        ("sb_secret_abc", "service"),
        ("sb_publishable_abc", "restricted"),
        ("not-a-jwt", "unknown"),
        ("a.!!!.c", "unknown"),
        ("eyJhbGciOiJIUzI1NiJ9.eyJmb28iOjF9.x", "unknown"),
    ],
)
def test_the_kind_of_a_key_is_read_from_the_key(key: str, kind: str) -> None:
    assert kind == key_kind(key)


def test_jwt_keys_are_known_by_their_role_claim(storage_target: StorageTarget) -> None:
    assert "service" == key_kind(storage_target.service_key)
    if storage_target.anon_key:
        assert "restricted" == key_kind(storage_target.anon_key)


def test_a_dropped_http2_connection_is_retryable() -> None:
    from h2.exceptions import ProtocolError  # noqa: PLC0415 - what a broken HTTP/2 stream can surface as

    error = translate(ProtocolError("connection terminated"), bucket="media", path="a")
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
    assert expected is type(translate(raised, bucket="media", path="a"))


def test_a_pipeline_error_passes_through_translation_unchanged() -> None:
    error = ValidationError("already ours")
    assert error is translate(error, bucket=None, path=None)


def test_an_unknown_api_error_is_a_plain_storage_error_naming_its_code() -> None:
    error = from_api_error(status="400", error="InvalidKey", message="bad key", bucket="media", path="a")
    assert StorageError is type(error)
    assert "InvalidKey" in str(error)


def test_invalid_request_outside_a_signed_url_stays_a_plain_storage_error() -> None:
    error = from_api_error(status="400", error="InvalidRequest", message="bad", bucket="media", path="a")
    assert StorageError is type(error)


@pytest.mark.parametrize(
    ("header", "expected"),
    [(None, None), ("", None), ("5", 5.0), ("-3", 0.0), ("soon", None), ("Wed, 21 Oct 2015 07:28:10 GMT", 10.0)],
)
def test_retry_after_is_read_as_seconds_or_an_http_date(header: str | None, expected: float | None) -> None:
    assert expected == parse_retry_after(header, now=1445412480.0)


def test_bad_sizes_and_windows_are_refused(storage_http_client: httpx.AsyncClient) -> None:
    with pytest.raises(StorageError):
        SupabaseStorage("http://127.0.0.1:1", "k", storage_http_client, chunk_size=0)
    with pytest.raises(ValidationError):
        SupabaseStorage("http://127.0.0.1:1", "k", storage_http_client, retry_window=0)


async def test_the_supabase_client_is_built_lazily_on_the_given_http_client(
    storage_target: StorageTarget, storage_http_client: httpx.AsyncClient
) -> None:
    storage = SupabaseStorage(storage_target.url, storage_target.service_key, storage_http_client)
    assert "SupabaseStorage(url=" in repr(storage)
    assert storage_target.service_key not in repr(storage)
    assert not await storage.exists(storage_target.bucket, f"{storage_target.run}/nothing")
    assert storage_http_client is storage._client.options.httpx_client  # type: ignore[union-attr]


async def test_list_files_follows_the_servers_pages(
    supabase_storage: SupabaseStorage,
    storage_target: StorageTarget,
    storage_proxy: FaultProxy,
    storage_prefix: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    names = [f"{storage_prefix}/page/{i}.bin" for i in range(5)]
    for name in names:
        await supabase_storage.upload_file(storage_target.bucket, name, b"p")
    monkeypatch.setattr("shared.storage._supabase.LIST_PAGE", 2)
    assert names == await supabase_storage.list_files(storage_target.bucket, f"{storage_prefix}/page/")
    assert 3 == storage_proxy.count("POST", "/object/list-v2/")
