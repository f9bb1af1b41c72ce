"""SupabaseStorage: Supabase Storage through supabase-py's storage3, and httpx where storage3 cannot stream.

storage3 serves small uploads (multipart ``POST /object/{bucket}/{path}``), signed URLs, ``exists`` and
deletes. It cannot stream: its ``download`` holds the whole object and its ``upload`` the whole file. So
``download_to`` streams ``GET /object/{bucket}/{path}`` through httpx, and bodies over 6 MiB (or over a smaller
``chunk_size``) go through the resumable (TUS) endpoint with :class:`~shared.storage._tus.TusClient`, streamed
from the file and resumed from the server's offset after a failure.
Every call is retried by :func:`~shared.retry.retry_with_backoff` on :class:`~shared.errors.RetryableError`
for up to ``retry_window`` seconds (``STORAGE_RETRY_WINDOW_SECONDS``, 30 s by default: a Storage server
restart takes 3 to 16 s); each attempt reads the body again from its start, except a resumable upload's, which
sends only what the server does not hold yet.

What the real server (revision 4fa61fba) answers, and what this class makes of it:

- a read (download, download_to, exists) with a wrong or expired key answers ``NoSuchBucket``, because the
  server falls back to anonymous access; the bucket route then answers ``AccessDenied``. A read whose answer
  is NoSuchBucket asks the bucket route once, so a key that may not read is a StoragePermissionError and a
  missing bucket a StorageNotFoundError. An anon or publishable key (whose reads RLS hides) is recognised from
  the key itself: its refusals are StoragePermissionError, and the health check says down.
- a delete in a bucket that does not exist answers 200 ``[]``, like a missing object: when nothing was
  deleted, the bucket route tells which.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import functools
import json
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import quote

from shared.errors import (
    PipelineError,
    StorageError,
    StorageNotFoundError,
    StoragePermissionError,
    ValidationError,
)
from shared.health import HealthStatus
from shared.retry import retry_with_backoff
from shared.storage._common import (
    Body,
    UploadData,
    atomic_destination,
    detect_content_type,
    object_url,
    open_body,
    path_of,
    validate_bucket,
    validate_content_type,
    validate_expires_in,
    validate_path,
)
from shared.storage._errors import error_from_response, expect_status, translate
from shared.storage._tus import HOSTED_CHUNK_BYTES, MIN_CHUNK_BYTES, TusClient, tus_chunk_size
from shared.telemetry import traced

if TYPE_CHECKING:
    import httpx
    from storage3._async.file_api import AsyncBucketProxy
    from supabase import AsyncClient as SupabaseClient

__all__ = [
    "DEFAULT_RETRY_WINDOW",
    "HOSTED_CHUNK_BYTES",
    "MIN_CHUNK_BYTES",
    "SupabaseStorage",
    "create_supabase_client",
    "key_kind",
    "tus_chunk_size",
]

# Bytes of a download written per thread hop (held in memory meanwhile).
_WRITE_BATCH = 8 * 1024 * 1024

R = TypeVar("R")
Sleep = Callable[[float], Awaitable[None]]

SMALL_UPLOAD_BYTES = 6 * 1024 * 1024  # up to this, one standard request; above, TUS
DEFAULT_RETRY_WINDOW = 30.0  # seconds; outlasts a Storage server restart (3 to 16 s observed)
LIST_PAGE = 1000


# What the Storage server answers when the Authorization header is no JWT (an sb_ key no gateway translated).
_NO_GATEWAY = "Invalid Compact JWS"


def key_kind(key: str) -> str:
    """Say what a Supabase key grants, from the key alone: "service", "restricted" (anon...) or "unknown".

    New keys say it in their prefix (``sb_secret_``, ``sb_publishable_``); legacy keys are JWTs whose ``role``
    claim names the database role (``service_role``, ``anon``, ``authenticated``). Only the claim is read,
    nothing is verified: the server decides, this only explains its answers.
    """
    if key.startswith("sb_secret_"):
        return "service"
    if key.startswith("sb_publishable_"):
        return "restricted"
    parts = key.split(".")
    if len(parts) != 3:
        return "unknown"
    try:
        claims = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (ValueError, binascii.Error):
        return "unknown"
    role = claims.get("role") if isinstance(claims, dict) else None
    if not isinstance(role, str):
        return "unknown"
    return "service" if role.endswith("service_role") else "restricted"


def create_supabase_client(url: str, service_key: str, http_client: httpx.AsyncClient) -> SupabaseClient:
    """Build supabase-py's async client on ``http_client`` (which the caller closes: the client cannot)."""
    from supabase import AsyncClient, AsyncClientOptions  # noqa: PLC0415 - 0.4 s import, only when used

    return AsyncClient(url, service_key, AsyncClientOptions(httpx_client=http_client))


def _api_code(error: BaseException) -> str | None:
    """Return the Storage API error code behind one of our errors (the response body's ``code``, else storage3's)."""
    found: str | None = None
    current: BaseException | None = error.__cause__
    while current is not None:
        response = getattr(current, "response", None)
        if response is not None:
            try:
                payload = json.loads(response.content)
            except (ValueError, AttributeError):
                payload = None
            if isinstance(payload, dict) and isinstance(payload.get("code"), str):
                return str(payload["code"])
        code = getattr(current, "code", None)
        if found is None and isinstance(code, str) and code:
            found = code
        current = current.__cause__
    return found


class SupabaseStorage:
    """Store objects in Supabase Storage; small bodies through storage3, large ones through TUS in chunks.

    Args:
        url: the project URL, such as ``https://<ref>.supabase.co``.
        service_key: the service-role (or ``sb_secret_``) key; sent as ``apikey`` and bearer token.
        http_client: the httpx client that storage3 and the streaming paths share; the owner closes it.
        client: a supabase-py ``AsyncClient`` built on ``http_client``; built lazily when not given.
        max_upload_bytes: uploads larger than this are refused before anything is sent.
        chunk_size: bytes per TUS PATCH (``STORAGE_TUS_CHUNK_MB``); None chooses by the host (see
            :func:`tus_chunk_size`: 6 MiB on Supabase's platform, the whole body on a self-hosted server).
            Bodies larger than this, or than 6 MiB, go through TUS; smaller ones in one request, held in memory.
        cache_control: the ``Cache-Control`` max-age, in seconds, stored with each object.
        retry_window: seconds in all that one call keeps retrying (``STORAGE_RETRY_WINDOW_SECONDS``); the default
            outlasts a Storage server restart (3 to 16 s).
        max_attempts, base_delay, max_delay, sleep: the rest of the retry policy (``sleep`` for tests).
    """

    def __init__(
        self,
        url: str,
        service_key: str,
        http_client: httpx.AsyncClient,
        *,
        client: SupabaseClient | None = None,
        max_upload_bytes: int = 2 * 1024**3,
        chunk_size: int | None = None,
        cache_control: int = 3600,
        retry_window: float = DEFAULT_RETRY_WINDOW,
        max_attempts: int = 30,
        base_delay: float = 0.5,
        max_delay: float | None = 2.0,
        sleep: Sleep | None = None,
    ) -> None:
        if (chunk_size is not None and chunk_size <= 0) or max_upload_bytes <= 0:
            raise StorageError("chunk_size and max_upload_bytes must be positive")
        if retry_window <= 0:
            raise ValidationError("retry_window must be a positive number of seconds", field="retry_window")
        self._url = url.rstrip("/")
        self._storage_url = f"{self._url}/storage/v1"
        self._objects = f"{self._storage_url}/object"
        self._key = service_key
        self._http = http_client
        self._client = client
        self._max_upload_bytes = max_upload_bytes
        self._tus_chunk_size = tus_chunk_size(self._url, chunk_size)
        self._tus = TusClient(
            http_client,
            self._storage_url,
            self._headers,
            chunk_size=self._tus_chunk_size,
            cache_control=str(cache_control),
            retrying=self._retrying,
        )
        # The standard upload holds the body in memory (storage3 takes bytes): only small ones go that way.
        self._small_limit = min(chunk_size or SMALL_UPLOAD_BYTES, SMALL_UPLOAD_BYTES)
        self._cache_control = str(cache_control)
        self._retry = retry_with_backoff(
            max_attempts=max_attempts,
            base_delay=base_delay,
            max_delay=max_delay,
            deadline=retry_window,
            sleep=sleep,
        )

    def __repr__(self) -> str:
        return f"SupabaseStorage(url={self._url!r})"

    @property
    def _headers(self) -> dict[str, str]:
        return {"apikey": self._key, "Authorization": f"Bearer {self._key}"}

    def _bucket(self, bucket: str) -> AsyncBucketProxy:
        if self._client is None:
            self._client = create_supabase_client(self._url, self._key, self._http)
        return self._client.storage.from_(bucket)

    async def _call(self, bucket: str, path: str | None, operation: Callable[[], Awaitable[R]]) -> R:
        """Run one attempt of ``operation``, translating every upstream failure (the documented boundary)."""
        try:
            return await operation()
        except PipelineError:
            raise
        except Exception as exc:
            raise translate(exc, bucket=bucket, path=path) from exc

    async def _retrying(self, bucket: str, path: str | None, operation: Callable[[], Awaitable[R]]) -> R:
        async def attempt() -> R:
            return await self._call(bucket, path, operation)

        return await self._retry(attempt)()

    # --- uploads ---

    @traced("storage.upload")
    async def upload_file(
        self,
        bucket: str,
        path: str,
        data: UploadData,
        content_type: str | None = None,
        *,
        upsert: bool = False,
    ) -> str:
        """Upload ``data`` to ``bucket/path`` and return the object's URL; refuse an existing one unless ``upsert``.

        The URL (``<SUPABASE_URL>/storage/v1/object/<bucket>/<path>``, read with the service key) is what
        download_file, download_to, get_signed_url, delete_file and exists accept as well as the path.

        Raises:
            ValidationError: a bad bucket, path, content type or source, or too large (nothing is sent).
            StorageConflictError: the object exists and ``upsert`` is False.
            StorageNotFoundError, StoragePermissionError, StorageUnavailableError, StorageError: see the module.
        """
        validate_bucket(bucket)
        validate_path(path)
        validate_content_type(content_type)
        async with open_body(data, limit=self._max_upload_bytes) as body:
            kind = content_type or detect_content_type(body.head, path)
            if body.size <= self._small_limit:
                await self._retrying(bucket, path, lambda: self._upload_small(bucket, path, body, kind, upsert))
            else:
                await self._tus.upload(bucket, path, body, kind, upsert=upsert)
        return object_url(self._objects, bucket, path)

    async def _upload_small(self, bucket: str, path: str, body: Body, content_type: str, upsert: bool) -> None:
        content = await body.read_all()
        # storage3 reads its option keys with hyphens and sends `upsert` as the x-upsert header, a string.
        options: Any = {
            "content-type": content_type,
            "cache-control": self._cache_control,
            "upsert": "true" if upsert else "false",
        }
        # storage3 percent-decodes the path it is given, so a literal '%' would change the key: quote it.
        await self._bucket(bucket).upload(quote(path, safe="/"), content, options)

    # --- downloads ---

    @traced("storage.download")
    async def download_file(self, bucket: str, path: str) -> bytes:
        """Return the whole object (use :meth:`download_to` for large ones); ``path`` may be its URL."""
        validate_bucket(bucket)
        path = path_of(self._objects, bucket, path)
        return await self._reading(bucket, path, lambda: self._bucket(bucket).download(quote(path, safe="/")))

    @traced("storage.download")
    async def download_to(self, bucket: str, path: str, destination: os.PathLike[str]) -> int:
        """Stream the object to ``destination`` atomically (no partial file on failure); return its size."""
        validate_bucket(bucket)
        path = path_of(self._objects, bucket, path)
        target = Path(destination)
        return await self._reading(bucket, path, lambda: self._download_once(bucket, path, target))

    async def _download_once(self, bucket: str, path: str, target: Path) -> int:
        url = object_url(self._objects, bucket, path)
        async with atomic_destination(target) as sink, self._http.stream("GET", url, headers=self._headers) as response:
            if response.status_code != 200:
                await response.aread()
                expect_status(response, 200, bucket=bucket, path=path)
            # The pieces as they arrive (no re-chunking copy), written a batch per thread hop: a hop per MiB was
            # the gap to a raw streamed httpx GET (0.76 x, issue 24).
            written = 0
            batch: list[bytes] = []
            batched = 0
            async for chunk in response.aiter_bytes():
                batch.append(chunk)
                batched += len(chunk)
                if batched >= _WRITE_BATCH:
                    await asyncio.to_thread(sink.write_many, batch)
                    written += batched
                    batch, batched = [], 0
            if batch:
                await asyncio.to_thread(sink.write_many, batch)
                written += batched
            return written

    # --- the rest ---

    async def get_signed_url(self, bucket: str, path: str, expires_in: int = 3600) -> str:
        """Return a URL that reads the object without credentials for ``expires_in`` seconds."""
        validate_bucket(bucket)
        path = path_of(self._objects, bucket, path)
        validate_expires_in(expires_in)

        async def sign() -> str:
            signed = await self._bucket(bucket).create_signed_url(quote(path, safe="/"), expires_in)
            url = signed["signedURL"]
            if not url:
                raise StorageNotFoundError(f"Storage did not sign {bucket}/{path}", bucket=bucket, path=path)
            return url

        return await self._reading(bucket, path, sign)

    @traced("storage.delete")
    async def delete_file(self, bucket: str, path: str) -> bool:
        """Delete the object; return False when there was none; a missing bucket raises StorageNotFoundError.

        The server answers ``[]`` both for a missing object and for a missing bucket, so an empty answer asks
        the bucket route which it was.
        """
        validate_bucket(bucket)
        path = path_of(self._objects, bucket, path)
        removed = await self._retrying(bucket, path, lambda: self._bucket(bucket).remove([path]))
        if removed:
            return True
        problem = await self._bucket_problem(bucket, path)
        if problem is not None:
            raise problem
        return False

    async def exists(self, bucket: str, path: str) -> bool:
        """Return whether the object exists; a missing bucket raises StorageNotFoundError."""
        validate_bucket(bucket)
        path = path_of(self._objects, bucket, path)
        found = await self._reading(bucket, path, lambda: self._bucket(bucket).exists(quote(path, safe="/")))
        if not found and key_kind(self._key) == "restricted":
            raise self._restricted(bucket, path)  # row-level security hides objects from such a key
        return found

    async def list_files(self, bucket: str, prefix: str = "") -> list[str]:
        """Return the paths of every object whose path starts with ``prefix`` (all folders down), sorted.

        Uses the server's ``POST /object/list-v2/{bucket}`` without a delimiter, a page of 1000 at a time.

        Raises:
            ValidationError: a bad bucket, or a prefix that could not start a valid path.
            StorageNotFoundError: the bucket does not exist. StoragePermissionError: the key may not list it.
        """
        validate_bucket(bucket)
        if prefix:
            validate_path(prefix.removesuffix("/"))
        names: list[str] = []
        cursor: str | None = None
        while True:
            page = await self._reading(bucket, None, functools.partial(self._list_page, bucket, prefix, cursor))
            names.extend(str(item["name"]) for item in page.get("objects", []))
            cursor = page.get("nextCursor")
            if not page.get("hasNext") or not cursor:
                break
        if not names:  # the server lists a missing bucket as empty, like an empty prefix
            problem = await self._bucket_problem(bucket, None)
            if problem is not None:
                raise problem
        return sorted(names)

    async def _list_page(self, bucket: str, prefix: str, cursor: str | None) -> dict[str, Any]:
        body: dict[str, Any] = {"prefix": prefix, "limit": LIST_PAGE, "with_delimiter": False}
        if cursor:
            body["cursor"] = cursor
        response = await self._http.post(
            f"{self._objects}/list-v2/{quote(bucket, safe='')}", json=body, headers=self._headers
        )
        expect_status(response, 200, bucket=bucket, path=prefix)
        page: dict[str, Any] = response.json()
        return page

    # --- telling a refused key from a missing object ---

    async def _reading(self, bucket: str, path: str | None, operation: Callable[[], Awaitable[R]]) -> R:
        """Retry a read; a not-found answer is explained (missing bucket or object, or a refused key)."""
        try:
            return await self._retrying(bucket, path, operation)
        except StorageNotFoundError as missing:
            if key_kind(self._key) == "restricted":
                raise self._restricted(bucket, path) from missing
            if _api_code(missing) not in {"NoSuchBucket", "Bucket not found"}:
                raise
            problem = await self._bucket_problem(bucket, path)
            if isinstance(problem, StoragePermissionError):
                raise problem from missing
            raise

    def _restricted(self, bucket: str, path: str | None) -> StoragePermissionError:
        where = f"{bucket}/{path}" if path else bucket
        return StoragePermissionError(
            f"Storage found nothing at {where} for this key, which is an anon (or publishable) key: row-level "
            "security hides what it may not read. Set SUPABASE_SERVICE_KEY to the service-role key",
            bucket=bucket,
            path=path,
        )

    async def _bucket_problem(self, bucket: str, path: str | None) -> PipelineError | None:
        """Ask the bucket route about ``bucket``; return the error it answers (None when the bucket is there)."""
        import httpx  # noqa: PLC0415 - loaded with the client, never at import

        try:
            url = f"{self._storage_url}/bucket/{quote(bucket, safe='')}"
            response = await self._http.get(url, headers=self._headers)
        except httpx.HTTPError:
            return None  # the original answer stands
        if response.status_code == 200:
            return None
        error = error_from_response(response.status_code, response.content, response.headers, bucket=bucket, path=path)
        if isinstance(error, StoragePermissionError):
            where = f"{bucket}/{path}" if path else bucket
            return StoragePermissionError(
                f"Storage refused this key for {where} ({error.message}); the read answered 'not found' only "
                "because the server falls back to anonymous access. Check SUPABASE_SERVICE_KEY",
                bucket=bucket,
                path=path,
                status=error.status,
            )
        if isinstance(error, StorageNotFoundError):
            if key_kind(self._key) == "restricted":
                return self._restricted(bucket, path)
            return StorageNotFoundError(f"Bucket not found in storage: {bucket}", bucket=bucket, path=path, status=404)
        return None

    async def health_check(self) -> HealthStatus:
        """List the buckets (one small authenticated request) and report ok or down with the latency."""
        import httpx  # noqa: PLC0415 - loaded with the client, never at import

        started = time.perf_counter()
        if key_kind(self._key) == "restricted":
            return HealthStatus.since(
                "storage",
                started,
                f"{self._url}: the key is an anon (or publishable) key, which sees no bucket; set "
                "SUPABASE_SERVICE_KEY to the service-role key",
            )
        try:
            response = await self._http.get(f"{self._storage_url}/bucket", headers=self._headers, timeout=5.0)
            response.raise_for_status()
        except httpx.HTTPError as exc:
            answer = getattr(exc, "response", None)
            status = getattr(answer, "status_code", None)
            detail = f"{self._url}: {type(exc).__name__}" + (f" (HTTP {status})" if status else "")
            if self._key.startswith("sb_") and answer is not None and _NO_GATEWAY in answer.text:
                # The Storage server itself reads the key as a JWT: nothing turned the opaque key into one.
                detail += (
                    f", '{_NO_GATEWAY}': SUPABASE_URL reaches Storage without Supabase's API gateway, which alone "
                    "turns an sb_secret_ key into a JWT; point SUPABASE_URL at the gateway (https://<ref>.supabase.co, "
                    "or Kong on a self-hosted stack), or set SUPABASE_SERVICE_KEY to the legacy service_role JWT"
                )
            else:
                detail += "; check SUPABASE_URL and SUPABASE_SERVICE_KEY"
            return HealthStatus.since("storage", started, detail)
        return HealthStatus.since("storage", started)
