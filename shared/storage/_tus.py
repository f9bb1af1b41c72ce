"""The resumable (TUS 1.0.0) upload client of Supabase Storage's ``/upload/resumable`` endpoint.

:class:`TusClient` sends a body that is too large for one request (over 6 MiB) in PATCHes of
:func:`tus_chunk_size` bytes (6 MiB on Supabase's platform, the whole body in one PATCH on a self-hosted
server), streamed from the file, with the same headers on every request (apikey, bearer, and x-upsert: the
server checks it on each PATCH, not only at creation). After a failed PATCH it asks the server's offset (HEAD)
and sends only the rest; it creates the upload again only when the server no longer has it (404/410). When the
answer to the last PATCH is lost, a PATCH of no bytes finishes the object again; without upsert the server then
answers that the object exists (a StorageConflictError, although this upload most likely wrote it).
:class:`~shared.storage._supabase.SupabaseStorage` uses it for its large uploads.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, TypeVar
from urllib.parse import urljoin, urlsplit

from shared.errors import RetryableError, StorageUnavailableError
from shared.storage._common import READ_SIZE, Body
from shared.storage._errors import expect_status

if TYPE_CHECKING:
    import httpx

__all__ = ["HOSTED_CHUNK_BYTES", "MIN_CHUNK_BYTES", "TUS_VERSION", "TusClient", "tus_chunk_size"]

R = TypeVar("R")

MIN_CHUNK_BYTES = 5 * 1024 * 1024  # S3 multipart minimum
HOSTED_CHUNK_BYTES = 6 * 1024 * 1024  # what Supabase's hosted platform documents for its TUS endpoint
HOSTED_SUFFIXES = (".supabase.co", ".supabase.in")
TUS_VERSION = "1.0.0"
_log = logging.getLogger("shared.storage")
_TUS_GONE = frozenset({404, 410})  # the server no longer has the upload (expired, or never had it)
_GONE = "the upload is gone from the server; it starts again"


class Retrying(Protocol):
    """Run ``operation`` under the storage's retry policy, translating upstream failures into our errors."""

    async def __call__(self, bucket: str, path: str | None, operation: Callable[[], Awaitable[R]], /) -> R: ...


def tus_chunk_size(url: str, chunk_size: int | None = None) -> int | None:
    """Return the bytes per TUS PATCH for the Storage at ``url``: ``chunk_size`` if given, else by the host.

    Supabase's hosted platform (``*.supabase.co``, ``*.supabase.in``) documents 6 MiB chunks, so it gets them.
    Any other host is a self-hosted Storage server, whose TUS stores take a PATCH of any size (the file store
    streams it to disk, the S3 store cuts it into ``TUS_PART_SIZE`` parts itself): it gets the whole body in
    one PATCH (None), because every PATCH costs that server a lock, several queries and an auth check, which
    made 6 MiB chunks 0.5 to 0.9 times as fast as one PATCH. A failed PATCH resumes from the server's offset,
    so a large one costs nothing extra when it fails; one refused as too large (HTTP 413, from a proxy's body
    limit in front of the server) goes on in 6 MiB chunks from that offset, with a warning in the log.
    """
    if chunk_size is not None:
        return chunk_size
    host = (urlsplit(url).hostname or "").lower()
    return HOSTED_CHUNK_BYTES if host.endswith(HOSTED_SUFFIXES) else None


@dataclass(slots=True)
class _TusUpload:
    """Where one resumable upload stands: its URL (None before creation or once gone) and the server's offset.

    ``confirmed`` is False while a PATCH is under way or after one failed: the offset must then be asked.
    """

    chunk: int
    headers: dict[str, str]
    location: str | None = None
    offset: int = 0
    confirmed: bool = True


def _tus_retry(response: httpx.Response, bucket: str, path: str, what: str) -> StorageUnavailableError:
    return StorageUnavailableError(
        f"Storage answered HTTP {response.status_code} to a resumable upload of {bucket}/{path}: {what}",
        bucket=bucket,
        path=path,
        status=response.status_code,
    )


def _b64(value: str) -> str:
    return base64.b64encode(value.encode()).decode()


class TusClient:
    """Upload bodies through Supabase Storage's TUS endpoint, resuming from the server's offset after a failure.

    Args:
        http_client: the httpx client (its owner closes it).
        storage_url: ``<SUPABASE_URL>/storage/v1``.
        headers: the authentication headers sent on every request (``apikey``, ``Authorization``).
        chunk_size: bytes per PATCH; None sends the whole body in one PATCH (see :func:`tus_chunk_size`).
        cache_control: the ``Cache-Control`` max-age, in seconds, stored with each object.
        retrying: the storage's retry policy, which also translates what httpx raises.
    """

    def __init__(
        self,
        http_client: httpx.AsyncClient,
        storage_url: str,
        headers: dict[str, str],
        *,
        chunk_size: int | None,
        cache_control: str,
        retrying: Retrying,
    ) -> None:
        self._http = http_client
        self._storage_url = storage_url
        self._headers = headers
        self.chunk_size = chunk_size
        self._cache_control = cache_control
        self._retrying = retrying

    async def upload(self, bucket: str, path: str, body: Body, content_type: str, *, upsert: bool) -> None:
        """Send ``body`` through TUS, resuming from the server's offset after a failure instead of starting again.

        One retry round (the storage's policy) covers creation and the PATCHes; a failed PATCH leaves the offset
        unconfirmed, so the next attempt asks the server for it (HEAD) and sends the rest from there. A window
        counts from the round's start, however long its PATCHes ran, so a round that failed after the server
        had taken more of the body earns a fresh one: a fault late in a long upload is still retried, and a
        server that takes nothing ends the upload within one window.
        """
        upload = _TusUpload(self.chunk_size or body.size, self._upload_headers(upsert))
        while True:
            start = upload.offset
            try:
                await self._retrying(bucket, path, lambda: self._attempt(upload, bucket, path, body, content_type))
            except RetryableError:
                if upload.location is None:
                    raise
                await self._retrying(bucket, path, lambda: self._sync(upload, bucket, path))
                if upload.location is None or upload.offset <= start:
                    raise
                continue
            return

    def _upload_headers(self, upsert: bool) -> dict[str, str]:
        return {
            **self._headers,
            "Tus-Resumable": TUS_VERSION,
            "x-upsert": "true" if upsert else "false",  # checked on every PATCH, not only at creation
        }

    async def _attempt(self, upload: _TusUpload, bucket: str, path: str, body: Body, content_type: str) -> None:
        """Create the upload if there is none, learn the offset if a PATCH failed, then PATCH the rest."""
        if upload.location is not None and not upload.confirmed:
            await self._sync(upload, bucket, path)
        if upload.location is None:
            await self._create(upload, bucket, path, body.size, content_type)
        location = upload.location
        assert location is not None  # noqa: S101 - set by _create
        # Each PATCH streams from the file in READ_SIZE pieces with its length declared, so neither we nor
        # httpx's write path ever holds a whole chunk. After a lost answer to the last PATCH the server may
        # hold every byte: a PATCH of none at that offset finishes the object again (idempotent with upsert).
        while True:
            offset = upload.offset
            length = min(upload.chunk, body.size - offset)
            upload.confirmed = False
            response = await self._http.patch(
                location,
                content=body.chunks(READ_SIZE, offset=offset, length=length),
                headers={
                    **upload.headers,
                    "Upload-Offset": str(offset),
                    "Content-Length": str(length),
                    "Content-Type": "application/offset+octet-stream",
                },
            )
            if response.status_code in _TUS_GONE:
                upload.location = None
                raise _tus_retry(response, bucket, path, _GONE)
            if response.status_code == 413 and length > HOSTED_CHUNK_BYTES:
                # A proxy in front of the server (Cloudflare's 100 MB, an nginx client_max_body_size) refused a
                # PATCH this large: go on in the chunks Supabase documents, from the offset the server holds.
                _log.warning(
                    "Storage refused a TUS PATCH of %d bytes (HTTP 413); sending %d-byte chunks instead. Set "
                    "STORAGE_TUS_CHUNK_MB below the limit of the proxy in front of Storage to skip this attempt",
                    length,
                    HOSTED_CHUNK_BYTES,
                    extra={"bucket": bucket, "bytes": length},
                )
                upload.chunk = HOSTED_CHUNK_BYTES
                await self._sync(upload, bucket, path)
                if upload.location is None:
                    raise _tus_retry(response, bucket, path, _GONE)
                continue
            if response.status_code == 409 and b"Upload-Offset" in response.content:
                raise _tus_retry(response, bucket, path, "the server's offset differs; it is asked again")
            expect_status(response, 204, bucket=bucket, path=path)
            upload.offset = int(response.headers.get("upload-offset", offset + length))
            upload.confirmed = True
            if upload.offset >= body.size:
                return

    async def _create(self, upload: _TusUpload, bucket: str, path: str, size: int, content_type: str) -> None:
        metadata = ",".join(
            f"{name} {_b64(value)}"
            for name, value in (
                ("bucketName", bucket),
                ("objectName", path),
                ("contentType", content_type),
                ("cacheControl", self._cache_control),
            )
        )
        endpoint = f"{self._storage_url}/upload/resumable"
        created = await self._http.post(
            endpoint, headers={**upload.headers, "Upload-Length": str(size), "Upload-Metadata": metadata}
        )
        expect_status(created, 201, bucket=bucket, path=path)
        upload.location = urljoin(endpoint + "/", created.headers["location"])
        upload.offset = 0
        upload.confirmed = True

    async def _sync(self, upload: _TusUpload, bucket: str, path: str) -> None:
        """Read the server's offset of the upload (HEAD); forget the upload when the server no longer has it."""
        assert upload.location is not None  # noqa: S101 - only called with an upload
        response = await self._http.head(upload.location, headers=upload.headers)
        if response.status_code in _TUS_GONE:
            upload.location = None
            return
        expect_status(response, 200, bucket=bucket, path=path)
        upload.offset = int(response.headers["upload-offset"])
        upload.confirmed = True
