"""FakeStorage: an in-memory :class:`~shared.storage.Storage` that passes the same contract suite.

Use it in a pipeline module's tests with ``container.storage.override(FakeStorage())``. It validates,
limits and fails exactly as the real backends do, and :meth:`FakeStorage.fail_next` makes the next calls
raise an error of your choosing, so retry paths can be tested without a server.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from shared.errors import PipelineError, StorageConflictError, StorageNotFoundError
from shared.health import HealthStatus
from shared.storage import SignedObject, UploadData
from shared.storage._common import (
    READ_SIZE,
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
from shared.storage._signing import UrlSigner

__all__ = ["FAKE_OBJECT_BASE", "FakeStorage", "StoredObject"]

FAKE_OBJECT_BASE = "memory://fake-storage/object"


@dataclass(frozen=True, slots=True)
class StoredObject:
    """One object held by the fake: its bytes and the content type it was stored with."""

    data: bytes
    content_type: str


class FakeStorage:
    """Keep objects in a dict; same API, validation and errors as SupabaseStorage and LocalStorage.

    Args:
        buckets: the buckets that exist; None accepts any valid name.
        max_upload_bytes: uploads larger than this are refused.
        clock: the time source of signed-URL expiry.
    """

    def __init__(
        self,
        *,
        buckets: Iterable[str] | None = None,
        max_upload_bytes: int = 2 * 1024**3,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._buckets = frozenset(validate_bucket(b) for b in buckets) if buckets is not None else None
        self._max_upload_bytes = max_upload_bytes
        self._signer = UrlSigner(secrets.token_bytes(32), "memory://fake-storage", clock=clock)
        self._failures: list[PipelineError] = []
        self.objects: dict[tuple[str, str], StoredObject] = {}
        self.calls: list[tuple[str, str, str]] = []

    def fail_next(self, error: PipelineError, *, times: int = 1) -> None:
        """Make the next ``times`` calls raise ``error`` (after validating their arguments)."""
        self._failures.extend([error] * times)

    def _check(self, operation: str, bucket: str, path: str) -> None:
        validate_bucket(bucket)
        validate_path(path)
        self.calls.append((operation, bucket, path))
        if self._failures:
            raise self._failures.pop(0)
        if self._buckets is not None and bucket not in self._buckets:
            raise StorageNotFoundError(f"Bucket not found: {bucket}", bucket=bucket, status=404)

    def _get(self, bucket: str, path: str) -> StoredObject:
        try:
            return self.objects[bucket, path]
        except KeyError:
            raise StorageNotFoundError(
                f"Not found in storage: {bucket}/{path}", bucket=bucket, path=path, status=404
            ) from None

    async def upload_file(
        self,
        bucket: str,
        path: str,
        data: UploadData,
        content_type: str | None = None,
        *,
        upsert: bool = False,
    ) -> str:
        """Store ``data`` and return its URL (``memory://fake-storage/object/<bucket>/<path>``)."""
        validate_bucket(bucket)
        validate_path(path)
        validate_content_type(content_type)
        async with open_body(data, limit=self._max_upload_bytes) as body:
            self._check("upload_file", bucket, path)
            content = b"".join([chunk async for chunk in body.chunks(READ_SIZE)])
            kind = content_type or detect_content_type(body.head, path)
        if not upsert and (bucket, path) in self.objects:
            raise StorageConflictError(
                f"An object already exists at {bucket}/{path}; pass upsert=True to replace it",
                bucket=bucket,
                path=path,
                status=409,
            )
        self.objects[bucket, path] = StoredObject(content, kind)
        return object_url(FAKE_OBJECT_BASE, bucket, path)

    async def download_file(self, bucket: str, path: str) -> bytes:
        """Return the object's bytes."""
        path = self._path(bucket, path)
        self._check("download_file", bucket, path)
        return self._get(bucket, path).data

    async def download_to(self, bucket: str, path: str, destination: os.PathLike[str]) -> int:
        """Write the object to ``destination`` atomically; return its size."""
        path = self._path(bucket, path)
        self._check("download_to", bucket, path)
        data = self._get(bucket, path).data
        async with atomic_destination(Path(destination)) as sink:
            await asyncio.to_thread(sink.write, data)
        return len(data)

    async def get_signed_url(self, bucket: str, path: str, expires_in: int = 3600) -> str:
        """Return a ``memory://`` URL signed like LocalStorage's."""
        validate_expires_in(expires_in)
        path = self._path(bucket, path)
        self._check("get_signed_url", bucket, path)
        self._get(bucket, path)
        return self._signer.sign(bucket, path, expires_in)

    def verify_signed_url(self, url: str) -> SignedObject:
        """Return the object a signed URL grants; raise StoragePermissionError if tampered with or expired."""
        return self._signer.verify(url)

    async def delete_file(self, bucket: str, path: str) -> bool:
        """Delete the object; return False when there was none."""
        path = self._path(bucket, path)
        self._check("delete_file", bucket, path)
        return self.objects.pop((bucket, path), None) is not None

    async def exists(self, bucket: str, path: str) -> bool:
        """Return whether the object exists."""
        path = self._path(bucket, path)
        self._check("exists", bucket, path)
        return (bucket, path) in self.objects

    async def list_files(self, bucket: str, prefix: str = "") -> list[str]:
        """Return the sorted paths in ``bucket`` that start with ``prefix``."""
        validate_bucket(bucket)
        if prefix:
            validate_path(prefix.removesuffix("/"))
        self._check("list_files", bucket, prefix.removesuffix("/") or "*")
        return sorted(path for (b, path) in self.objects if b == bucket and path.startswith(prefix))

    @staticmethod
    def _path(bucket: str, path_or_url: str) -> str:
        validate_bucket(bucket)
        return path_of(FAKE_OBJECT_BASE, bucket, path_or_url)

    async def health_check(self) -> HealthStatus:
        """Report ok (the fake is always up)."""
        return HealthStatus("storage", "ok", 0.0)
