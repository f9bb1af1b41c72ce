"""LocalStorage: objects as files under a root folder, the embedded default for development.

``<root>/<bucket>/<path>``. Writes go to a temporary file under ``<root>/.partial`` and are renamed into
place, so readers never see half a file and concurrent writers of one path cannot interleave (the last
rename wins; without ``upsert`` a hard link claims the path atomically and the loser gets a conflict).

No path escapes the root, even while someone swaps a folder for a symlink: every operation walks from a
descriptor of the root one segment at a time (``os.open(name, O_DIRECTORY | O_NOFOLLOW, dir_fd=parent)``,
openat-style), then acts on the last name relative to its parent's descriptor. A symlink met on the way is
refused (StoragePermissionError), and so is reading through a last name that is a symlink; a write or a
delete acts on that name itself (rename and unlink never follow one). What is checked is what is used: no
path is resolved twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import secrets
import stat
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from io import BufferedReader, BufferedWriter
from pathlib import Path

from shared.errors import (
    PipelineError,
    StorageConflictError,
    StorageNotFoundError,
    StoragePermissionError,
    ValidationError,
)
from shared.health import HealthStatus
from shared.storage._common import (
    UploadData,
    atomic_destination,
    copy_range,
    detect_content_type,
    object_url,
    open_body,
    path_of,
    validate_bucket,
    validate_content_type,
    validate_expires_in,
    validate_path,
)
from shared.storage._errors import from_os_error
from shared.storage._signing import SignedObject, UrlSigner
from shared.telemetry import traced

__all__ = ["LocalStorage"]

# A piece per thread hop between files: a hop per MiB (two, read and write) was most of the cost of a copy
# (0.42-0.44 x a file copy, issue 24), and a piece is still small enough for a cancellation to land soon.
_PIECE = 32 * 1024 * 1024
_PARTIAL = ".partial"  # bucket names cannot start with '.', so this never collides with a bucket
NAME_MAX = 255  # bytes in one file name on Linux and macOS file systems (a smaller limit reads as ENAMETOOLONG)
_DIRECTORY = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK  # non-blocking: a FIFO must not hang us
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


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

    def _segments(self, bucket: str, path: str) -> list[str]:
        """Return ``[bucket, *folders, name]`` of a path (or the URL upload_file returned), checked without I/O."""
        validate_bucket(bucket)
        path = path_of(self._root.as_uri(), bucket, path)
        if self._buckets is not None and bucket not in self._buckets:
            raise StorageNotFoundError(f"Bucket not found: {bucket}", bucket=bucket, status=404)
        segments = [bucket, *path.split("/")]
        if any(len(segment.encode()) > NAME_MAX for segment in segments):
            raise _name_too_long(bucket, path)
        return segments

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
        """Write ``data`` to ``bucket/path`` atomically and return its ``file://`` URL; refuse an existing one
        unless upsert."""
        segments = self._segments(bucket, path)
        validate_content_type(content_type)
        async with open_body(data, limit=self._max_upload_bytes) as body:
            if content_type is None:
                detect_content_type(body.head, path)  # the same checks as the other backends; not stored here
            try:
                name, file = await asyncio.to_thread(self._create_temp)
                try:
                    source = body.source_descriptor()
                    if source is not None:
                        await _copy_all(source[0], source[1], file.fileno(), body.size)
                    else:
                        async for chunk in body.chunks(_PIECE):
                            await asyncio.to_thread(file.write, chunk)
                    await asyncio.to_thread(_flush_and_close, file)
                    await asyncio.to_thread(self._commit, name, segments, upsert=upsert, bucket=bucket, path=path)
                finally:
                    file.close()  # waits for a write still running in a thread (the buffer's lock)
                    self._remove_temp(name)
            except PipelineError:
                raise
            except OSError as exc:
                raise _translate(exc, bucket=bucket, path=path) from exc
        return object_url(self._root.as_uri(), bucket, "/".join(segments[1:]))

    def _create_temp(self) -> tuple[str, BufferedWriter]:
        """Create an empty temp file in ``<root>/.partial`` (runs in a worker thread)."""
        self._root.mkdir(parents=True, exist_ok=True)  # the root itself is configuration, trusted
        name = f"{secrets.token_hex(12)}.part"
        with self._folder([_PARTIAL], create=True) as partial:
            handle = os.open(name, _CREATE, 0o600, dir_fd=partial)
        return name, os.fdopen(handle, "wb")

    def _remove_temp(self, name: str) -> None:
        """Delete a temp file if it is still there (sync: it must also run while being cancelled)."""
        with contextlib.suppress(OSError), self._folder([_PARTIAL], create=False) as partial:
            os.unlink(name, dir_fd=partial)

    def _commit(self, temp: str, segments: Sequence[str], *, upsert: bool, bucket: str, path: str) -> None:
        """Move the finished temp file into place (runs in a worker thread)."""
        *folders, leaf = segments
        with self._folder([_PARTIAL], create=False) as partial:
            try:
                with self._folder(folders, create=True) as parent:
                    self._place(temp, partial, leaf, parent, upsert=upsert, bucket=bucket, path=path)
            except NotADirectoryError as exc:
                raise StorageConflictError(
                    f"Cannot store {bucket}/{path}: a parent of it is an object, and local storage keeps folders",
                    bucket=bucket,
                    path=path,
                ) from exc

    @staticmethod
    def _place(temp: str, partial: int, leaf: str, parent: int, *, upsert: bool, bucket: str, path: str) -> None:
        """Rename (upsert) or hard-link the temp file to ``leaf``, both names relative to open folders."""
        folder = StorageConflictError(
            f"Cannot store {bucket}/{path}: it is a folder of other objects", bucket=bucket, path=path
        )
        mode = _mode_at(parent, leaf)
        if mode is not None and stat.S_ISDIR(mode):
            raise folder
        try:
            if upsert:
                # rename(2) replaces the name itself: a symlink there is replaced, never followed.
                os.replace(temp, leaf, src_dir_fd=partial, dst_dir_fd=parent)
            else:
                # Atomic create-if-absent: of two writers only one claims the path.
                os.link(temp, leaf, src_dir_fd=partial, dst_dir_fd=parent, follow_symlinks=False)
        except IsADirectoryError as exc:
            raise folder from exc
        except FileExistsError as exc:
            raise StorageConflictError(
                f"An object already exists at {bucket}/{path}; pass upsert=True to replace it",
                bucket=bucket,
                path=path,
                status=409,
            ) from exc

    # --- downloads ---

    @traced("storage.download")
    async def download_file(self, bucket: str, path: str) -> bytes:
        """Return the whole object (use :meth:`download_to` for large ones)."""
        segments = self._segments(bucket, path)
        try:
            return await asyncio.to_thread(self._read_all, segments)
        except OSError as exc:
            raise _translate(exc, bucket=bucket, path=path) from exc

    @traced("storage.download")
    async def download_to(self, bucket: str, path: str, destination: os.PathLike[str]) -> int:
        """Copy the object to ``destination`` atomically (no partial file on failure); return its size."""
        segments = self._segments(bucket, path)
        try:
            source = await asyncio.to_thread(self._open_object, segments)
        except OSError as exc:
            raise _translate(exc, bucket=bucket, path=path) from exc
        written = 0
        try:
            async with atomic_destination(Path(destination)) as sink:
                while count := await asyncio.to_thread(copy_range, source.fileno(), written, sink.fileno(), _PIECE):
                    written += count
        except OSError as exc:
            raise _translate(exc, bucket=bucket, path=path) from exc
        finally:
            source.close()
        return written

    def _read_all(self, segments: Sequence[str]) -> bytes:
        with self._open_object(segments) as file:
            return file.read()

    def _open_object(self, segments: Sequence[str]) -> BufferedReader:
        """Open the object's file for reading, never through a symlink (runs in a worker thread)."""
        *folders, leaf = segments
        with self._folder(folders, create=False) as parent:
            handle = _open_at(parent, leaf, _READ)
        if not stat.S_ISREG(os.fstat(handle).st_mode):  # a folder of other objects, a FIFO...
            os.close(handle)
            raise FileNotFoundError(errno.ENOENT, "not a file")
        os.set_blocking(handle, True)
        return os.fdopen(handle, "rb")

    # --- the rest ---

    async def get_signed_url(self, bucket: str, path: str, expires_in: int = 3600) -> str:
        """Return a URL granting read access for ``expires_in`` seconds; check it with :meth:`verify_signed_url`."""
        validate_expires_in(expires_in)
        path = "/".join(self._segments(bucket, path)[1:])
        if not await self.exists(bucket, path):
            raise StorageNotFoundError(f"Not found in storage: {bucket}/{path}", bucket=bucket, path=path, status=404)
        return self._signer.sign(bucket, path, expires_in)

    def verify_signed_url(self, url: str) -> SignedObject:
        """Return the object a signed URL grants; raise StoragePermissionError if tampered with or expired."""
        return self._signer.verify(url)

    @traced("storage.delete")
    async def delete_file(self, bucket: str, path: str) -> bool:
        """Delete the object; return False when there was none."""
        segments = self._segments(bucket, path)
        try:
            return await asyncio.to_thread(self._delete, segments)
        except OSError as exc:
            raise _translate(exc, bucket=bucket, path=path) from exc

    def _delete(self, segments: Sequence[str]) -> bool:
        *folders, leaf = segments
        try:
            with self._folder(folders, create=False) as parent:
                mode = _mode_at(parent, leaf)
                if mode is None or stat.S_ISDIR(mode):
                    return False
                os.unlink(leaf, dir_fd=parent)  # a symlink is removed itself, never its target
        except (FileNotFoundError, NotADirectoryError):
            return False
        return True

    async def exists(self, bucket: str, path: str) -> bool:
        """Return whether the object exists."""
        segments = self._segments(bucket, path)
        try:
            return await asyncio.to_thread(self._exists, segments)
        except OSError as exc:
            raise _translate(exc, bucket=bucket, path=path) from exc

    def _exists(self, segments: Sequence[str]) -> bool:
        *folders, leaf = segments
        try:
            with self._folder(folders, create=False) as parent:
                mode = _mode_at(parent, leaf)
        except (FileNotFoundError, NotADirectoryError):
            return False
        if mode is not None and stat.S_ISLNK(mode):
            raise _symlink()
        return mode is not None and stat.S_ISREG(mode)

    async def list_files(self, bucket: str, prefix: str = "") -> list[str]:
        """Return the sorted paths in ``bucket`` that start with ``prefix`` (all folders down, symlinks never)."""
        validate_bucket(bucket)
        if self._buckets is not None and bucket not in self._buckets:
            raise StorageNotFoundError(f"Bucket not found: {bucket}", bucket=bucket, status=404)
        if prefix:
            validate_path(prefix.removesuffix("/"))
        try:
            return await asyncio.to_thread(self._list, bucket, prefix)
        except OSError as exc:
            raise _translate(exc, bucket=bucket, path=prefix) from exc

    def _list(self, bucket: str, prefix: str) -> list[str]:
        found: list[str] = []
        try:
            with self._folder([bucket], create=False) as top:
                for folder, _, names, folder_fd in os.fwalk(".", dir_fd=top, follow_symlinks=False):
                    for name in names:
                        mode = _mode_at(folder_fd, name)
                        path = os.path.normpath(os.path.join(folder, name))
                        if mode is not None and stat.S_ISREG(mode) and path.startswith(prefix):
                            found.append(path)
        except (FileNotFoundError, NotADirectoryError):
            return []
        return sorted(found)

    @contextlib.contextmanager
    def _folder(self, names: Sequence[str], *, create: bool) -> Iterator[int]:
        """Yield a descriptor of ``<root>/<names...>``, walked one name at a time, never through a symlink.

        Raises:
            FileNotFoundError: a folder is missing (and ``create`` is False).
            NotADirectoryError: a name on the way is a file.
            _SymlinkError: a name on the way is a symlink.
        """
        handle = _open_at(None, str(self._root), _DIRECTORY)
        try:
            for name in names:
                child = _open_folder_at(handle, name, create=create)
                os.close(handle)
                handle = child
            yield handle
        finally:
            os.close(handle)

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


class _SymlinkError(OSError):
    """A symlink met while walking a path inside the root."""


def _symlink() -> _SymlinkError:
    return _SymlinkError(errno.ELOOP, "a symlink inside the storage folder")


def _open_at(parent: int | None, name: str, flags: int) -> int:
    """``os.open`` relative to ``parent``; a symlink where ``O_NOFOLLOW`` forbids one is a _SymlinkError."""
    try:
        return os.open(name, flags, dir_fd=parent)
    except OSError as exc:
        # O_DIRECTORY | O_NOFOLLOW on a symlink fails with ENOTDIR: only a name that is a file (or another
        # non-folder) now really is "not a directory"; a folder or nothing there means it was swapped meanwhile.
        if exc.errno == errno.ELOOP or (exc.errno == errno.ENOTDIR and not _is_other(parent, name)):
            raise _symlink() from exc
        raise


def _open_folder_at(parent: int, name: str, *, create: bool) -> int:
    try:
        return _open_at(parent, name, _DIRECTORY)
    except FileNotFoundError:
        if not create:
            raise
    with contextlib.suppress(FileExistsError):  # made by a concurrent writer, or not a folder: the open decides
        os.mkdir(name, 0o777, dir_fd=parent)
    return _open_at(parent, name, _DIRECTORY)


def _is_other(parent: int | None, name: str) -> bool:
    """Return whether ``name`` exists and is neither a folder nor a symlink (a file, a FIFO...)."""
    mode = _mode_at(parent, name)
    return mode is not None and not stat.S_ISDIR(mode) and not stat.S_ISLNK(mode)


def _mode_at(parent: int | None, name: str) -> int | None:
    """Return the mode of ``name`` itself (a symlink is not followed), or None when there is none."""
    try:
        return os.stat(name, dir_fd=parent, follow_symlinks=False).st_mode
    except (FileNotFoundError, NotADirectoryError):
        return None


def _name_too_long(bucket: str, path: str) -> ValidationError:
    return ValidationError(
        f"A folder or file name in {bucket}/{path[:80]} is longer than the file system allows "
        f"({NAME_MAX} bytes per name in local storage); shorten it",
        field="path",
    )


def _translate(exc: OSError, *, bucket: str, path: str) -> PipelineError:
    """Map a filesystem error to our error class, the local backend's own cases first."""
    if isinstance(exc, _SymlinkError):
        return StoragePermissionError(
            f"{bucket}/{path} passes through a symlink inside the storage folder; refusing it",
            bucket=bucket,
            path=path,
        )
    if exc.errno == errno.ENAMETOOLONG:
        return _name_too_long(bucket, path)
    return from_os_error(exc, bucket=bucket, path=path)


async def _copy_all(source: int, start: int, destination: int, size: int) -> None:
    """Copy ``size`` bytes of an upload body's file into the temporary file, a piece per thread hop."""
    done = 0
    while done < size:
        count = await asyncio.to_thread(copy_range, source, start + done, destination, min(_PIECE, size - done))
        if count == 0:
            msg = f"The upload source ended at byte {done} of {size}; it changed while being uploaded"
            raise ValidationError(msg, field="data")
        done += count


def _flush_and_close(file: BufferedWriter) -> None:
    file.flush()
    os.fsync(file.fileno())
    file.close()
