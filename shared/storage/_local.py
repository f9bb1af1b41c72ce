"""LocalStorage: objects as files under a root folder, the embedded default for development.

``<root>/<bucket>/<path>``. Writes go to a temporary file under ``<root>/.partial`` and are renamed into
place, so readers never see half a file and concurrent writers of one path cannot interleave (the last
rename wins; without ``upsert`` a hard link claims the path atomically and the loser gets a conflict).
No path escapes the root: every target is resolved, symlinks included, and checked to lie inside it.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import tempfile
import time
from collections.abc import Callable, Iterable
from io import BufferedReader
from pathlib import Path

from shared.errors import PipelineError, StorageConflictError, StorageNotFoundError, StoragePermissionError
from shared.health import HealthStatus
from shared.storage._common import (
    READ_SIZE,
    UploadData,
    atomic_destination,
    detect_content_type,
    object_url,
    open_body,
    path_of,
    remove_quietly,
    validate_bucket,
    validate_content_type,
    validate_expires_in,
    validate_path,
)
from shared.storage._errors import from_os_error
from shared.storage._signing import SignedObject, UrlSigner

__all__ = ["LocalStorage"]

_PARTIAL = ".partial"  # bucket names cannot start with '.', so this never collides with a bucket


class LocalStorage:
    """Store objects as files under ``root``.

    Args:
        root: the folder that holds one sub-folder per bucket (created when missing).
        signing_key: the HMAC key of signed URLs (``JWT_SECRET_KEY``); a random one per instance if None,
            so URLs then stop verifying when the process restarts.
        buckets: the buckets that exist; None accepts any valid bucket name and creates its folder on upload.
        max_upload_bytes: uploads larger than this are refused before anything is written.
        base_url: the start of signed URLs; the root's ``file://`` URI by default (an app serving the files
            over HTTP passes its own and checks requests with :meth:`verify_signed_url`).
        clock: the time source of signed-URL expiry (tests pass their own).
    """

    def __init__(
        self,
        root: os.PathLike[str] | str,
        *,
        signing_key: bytes | str | None = None,
        buckets: Iterable[str] | None = None,
        max_upload_bytes: int = 2 * 1024**3,
        base_url: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._root = Path(root).resolve()
        self._buckets = frozenset(validate_bucket(b) for b in buckets) if buckets is not None else None
        self._max_upload_bytes = max_upload_bytes
        key = signing_key.encode() if isinstance(signing_key, str) else signing_key
        self._signer = UrlSigner(key or secrets.token_bytes(32), base_url or self._root.as_uri(), clock=clock)

    def __repr__(self) -> str:
        return f"LocalStorage(root={str(self._root)!r})"

    @property
    def root(self) -> Path:
        """The folder holding the buckets."""
        return self._root

    def _bucket_dir(self, bucket: str) -> Path:
        validate_bucket(bucket)
        if self._buckets is not None and bucket not in self._buckets:
            raise StorageNotFoundError(f"Bucket not found: {bucket}", bucket=bucket, status=404)
        return self._root / bucket

    def _target(self, bucket: str, path: str) -> Path:
        """Return the file of ``bucket/path`` (or its URL), refusing any that resolves outside the bucket's folder."""
        path = path_of(self._root.as_uri(), bucket, path)
        bucket_dir = self._bucket_dir(bucket)
        resolved_bucket = bucket_dir.resolve()
        target = bucket_dir / path
        resolved = target.resolve()
        if resolved_bucket.parent != self._root or not resolved.is_relative_to(resolved_bucket):
            raise StoragePermissionError(
                f"{bucket}/{path} resolves outside the storage folder (a symlink?); refusing it",
                bucket=bucket,
                path=path,
            )
        return target

    # --- uploads ---

    async def upload_file(
        self,
        bucket: str,
        path: str,
        data: UploadData,
        content_type: str | None = None,
        *,
        upsert: bool = False,
    ) -> str:
        """Write ``data`` to ``bucket/path`` atomically and return its ``file://`` URL; refuse an existing one
        unless upsert."""
        validate_bucket(bucket)
        validate_path(path)
        validate_content_type(content_type)
        async with open_body(data, limit=self._max_upload_bytes) as body:
            if content_type is None:
                detect_content_type(body.head, path)  # the same checks as the other backends; not stored here
            target = self._target(bucket, path)
            partial = self._root / _PARTIAL
            try:
                await asyncio.to_thread(partial.mkdir, parents=True, exist_ok=True)
                handle, temp_name = await asyncio.to_thread(tempfile.mkstemp, dir=partial, suffix=".part")
                temp = Path(temp_name)
                try:
                    with os.fdopen(handle, "wb") as file:
                        async for chunk in body.chunks(READ_SIZE):
                            await asyncio.to_thread(file.write, chunk)
                        await asyncio.to_thread(os.fsync, file.fileno())
                    await asyncio.to_thread(self._commit, temp, target, upsert=upsert, bucket=bucket, path=path)
                finally:
                    remove_quietly(temp)
            except PipelineError:
                raise
            except OSError as exc:
                raise from_os_error(exc, bucket=bucket, path=path) from exc
        return object_url(self._root.as_uri(), bucket, path)

    def _commit(self, temp: Path, target: Path, *, upsert: bool, bucket: str, path: str) -> None:
        """Move the finished temp file into place (runs in a worker thread)."""
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError) as exc:
            raise StorageConflictError(
                f"Cannot store {bucket}/{path}: a parent of it is an object, and local storage keeps folders",
                bucket=bucket,
                path=path,
            ) from exc
        if target.is_dir():
            raise StorageConflictError(
                f"Cannot store {bucket}/{path}: it is a folder of other objects", bucket=bucket, path=path
            )
        if upsert:
            os.replace(temp, target)
            return
        try:
            os.link(temp, target)  # atomic create-if-absent: of two writers only one claims the path
        except FileExistsError as exc:
            raise StorageConflictError(
                f"An object already exists at {bucket}/{path}; pass upsert=True to replace it",
                bucket=bucket,
                path=path,
                status=409,
            ) from exc

    # --- downloads ---

    async def download_file(self, bucket: str, path: str) -> bytes:
        """Return the whole object (use :meth:`download_to` for large ones)."""
        target = self._target(bucket, path)
        try:
            return await asyncio.to_thread(_read_file, target)
        except OSError as exc:
            raise from_os_error(exc, bucket=bucket, path=path) from exc

    async def download_to(self, bucket: str, path: str, destination: os.PathLike[str]) -> int:
        """Copy the object to ``destination`` atomically (no partial file on failure); return its size."""
        target = self._target(bucket, path)
        try:
            source = await asyncio.to_thread(_open_file, target)
        except OSError as exc:
            raise from_os_error(exc, bucket=bucket, path=path) from exc
        written = 0
        try:
            async with atomic_destination(Path(destination)) as sink:
                while chunk := await asyncio.to_thread(source.read, READ_SIZE):
                    await asyncio.to_thread(sink.write, chunk)
                    written += len(chunk)
        except OSError as exc:
            raise from_os_error(exc, bucket=bucket, path=path) from exc
        finally:
            source.close()
        return written

    # --- the rest ---

    async def get_signed_url(self, bucket: str, path: str, expires_in: int = 3600) -> str:
        """Return a URL granting read access for ``expires_in`` seconds; check it with :meth:`verify_signed_url`."""
        validate_expires_in(expires_in)
        validate_bucket(bucket)
        path = path_of(self._root.as_uri(), bucket, path)
        if not await self.exists(bucket, path):
            raise StorageNotFoundError(f"Not found in storage: {bucket}/{path}", bucket=bucket, path=path, status=404)
        return self._signer.sign(bucket, path, expires_in)

    def verify_signed_url(self, url: str) -> SignedObject:
        """Return the object a signed URL grants; raise StoragePermissionError if tampered with or expired."""
        return self._signer.verify(url)

    async def delete_file(self, bucket: str, path: str) -> bool:
        """Delete the object; return False when there was none."""
        target = self._target(bucket, path)
        try:
            await asyncio.to_thread(target.unlink)
        except FileNotFoundError:
            return False
        except IsADirectoryError:
            return False
        except OSError as exc:
            raise from_os_error(exc, bucket=bucket, path=path) from exc
        return True

    async def exists(self, bucket: str, path: str) -> bool:
        """Return whether the object exists."""
        target = self._target(bucket, path)
        return await asyncio.to_thread(target.is_file)

    async def list_files(self, bucket: str, prefix: str = "") -> list[str]:
        """Return the sorted paths in ``bucket`` that start with ``prefix`` (all folders down)."""
        if prefix:
            validate_path(prefix.removesuffix("/"))
        folder = self._bucket_dir(bucket)

        def walk() -> list[str]:
            if not folder.is_dir():
                return []
            found = (p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
            return sorted(path for path in found if path.startswith(prefix))

        return await asyncio.to_thread(walk)

    def _usable(self) -> bool:
        """Create the root folder if it is missing (as the first upload would) and check it can be written."""
        try:
            self._root.mkdir(parents=True, exist_ok=True)
        except OSError:
            return False
        return os.access(self._root, os.W_OK | os.X_OK)

    async def health_check(self) -> HealthStatus:
        """Check that the root folder exists and can be written; report ok or down with the latency."""
        started = time.perf_counter()
        usable = await asyncio.to_thread(self._usable)
        elapsed = (time.perf_counter() - started) * 1000
        if not usable:
            detail = f"{self._root} cannot be created or written; check STORAGE_LOCAL_ROOT"
            return HealthStatus("storage", "down", elapsed, detail)
        return HealthStatus("storage", "ok", elapsed)


def _read_file(path: Path) -> bytes:
    if path.is_dir():
        raise FileNotFoundError(path)
    return path.read_bytes()


def _open_file(path: Path) -> BufferedReader:
    if path.is_dir():
        raise FileNotFoundError(path)
    return path.open("rb")
