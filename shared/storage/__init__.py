"""Object storage behind one protocol: Supabase Storage in production, a local folder in development.

Pick the backend with ``STORAGE_BACKEND`` (``Container.storage``)::

    await storage.upload_file("clips", "jobs/42/clip-001.mp4", Path("clip.mp4"))
    await storage.download_to("clips", "jobs/42/clip-001.mp4", Path("/tmp/clip.mp4"))
    url = await storage.get_signed_url("clips", "jobs/42/clip-001.mp4", expires_in=600)
    paths = await storage.list_files("clips", "jobs/42/")

``upload_file`` returns the object's URL (what a job stores, such as ``jobs.audio_url``); every other
method accepts that URL as well as the path.

Every backend validates the bucket and the object path before any I/O, checks an upload's size against
the limit before sending a byte, detects the content type from the content (the extension as fallback),
and raises the same errors: :class:`~shared.errors.StorageNotFoundError`,
:class:`~shared.errors.StoragePermissionError`, :class:`~shared.errors.StorageConflictError`,
:class:`~shared.errors.ValidationError` (too large, a refused type, a bad path) and the retryable
:class:`~shared.errors.StorageUnavailableError`, each with the original exception as ``__cause__``.
The in-memory :class:`shared.testing.storage.FakeStorage` honours the same contract.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from shared._container_only import container_only
from shared.health import HealthStatus
from shared.storage._common import (
    DEFAULT_CONTENT_TYPE,
    MAX_PATH_BYTES,
    MAX_SEGMENT_BYTES,
    ChunkFactory,
    UploadData,
    detect_content_type,
    validate_bucket,
    validate_path,
)
from shared.storage._local import LocalStorage
from shared.storage._signing import SignedObject
from shared.storage._supabase import SupabaseStorage, create_supabase_client

__all__ = [
    "DEFAULT_CONTENT_TYPE",
    "MAX_PATH_BYTES",
    "MAX_SEGMENT_BYTES",
    "ChunkFactory",
    "LocalStorage",
    "SignedObject",
    "Storage",
    "SupabaseStorage",
    "UploadData",
    "create_supabase_client",
    "detect_content_type",
    "validate_bucket",
    "validate_path",
]


@runtime_checkable
class Storage(Protocol):
    """What a pipeline module needs from object storage; every backend and the fake implement it."""

    async def upload_file(
        self,
        bucket: str,
        path: str,
        data: UploadData,
        content_type: str | None = None,
        *,
        upsert: bool = False,
    ) -> str:
        """Upload bytes, a file path, a binary file or a chunk factory; return the object's URL.

        The other methods accept that URL as well as the path.
        """
        ...

    async def download_file(self, bucket: str, path: str) -> bytes:
        """Return the whole object."""
        ...

    async def download_to(self, bucket: str, path: str, destination: os.PathLike[str]) -> int:
        """Stream the object to a file atomically; return the bytes written."""
        ...

    async def get_signed_url(self, bucket: str, path: str, expires_in: int = 3600) -> str:
        """Return a URL that reads the object without credentials until it expires."""
        ...

    async def delete_file(self, bucket: str, path: str) -> bool:
        """Delete the object; return False when there was none."""
        ...

    async def exists(self, bucket: str, path: str) -> bool:
        """Return whether the object exists."""
        ...

    async def list_files(self, bucket: str, prefix: str = "") -> list[str]:
        """Return the sorted paths of every object whose path starts with ``prefix`` (all folders down)."""
        ...

    async def health_check(self) -> HealthStatus:
        """Report whether the storage answers, with the latency; never raises."""
        ...


# `from shared.storage import storage` (an older task list's name) names its provider.
if not TYPE_CHECKING:  # to mypy a module __getattr__ would make every misspelt name importable
    __getattr__ = container_only("shared.storage", {"storage": "storage"})
