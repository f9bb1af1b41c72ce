"""What every storage backend shares: object-path rules, content-type detection and upload bodies.

An upload body is opened once per call (its size checked against the limit before any byte is sent) and
read from its start again by every attempt, so a retry never sends a consumed stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import io
import mimetypes
import os
import re
import tempfile
from collections.abc import AsyncIterable, AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, BinaryIO, TypeAlias
from urllib.parse import quote, unquote

from shared.errors import ValidationError

__all__ = [
    "DEFAULT_CONTENT_TYPE",
    "MAX_PATH_BYTES",
    "MAX_SEGMENT_BYTES",
    "Body",
    "ChunkFactory",
    "Sink",
    "UploadData",
    "atomic_destination",
    "detect_content_type",
    "object_url",
    "open_body",
    "path_of",
    "remove_quietly",
    "validate_bucket",
    "validate_content_type",
    "validate_expires_in",
    "validate_path",
]

ChunkFactory: TypeAlias = Callable[[], AsyncIterable[bytes]]
"""A callable returning a fresh async iterable of byte chunks each time it is called."""

UploadData: TypeAlias = bytes | bytearray | memoryview | os.PathLike[str] | BinaryIO | IO[bytes] | ChunkFactory
"""What ``upload_file`` accepts: content, a path to a file, a binary file object, or a chunk factory."""

DEFAULT_CONTENT_TYPE = "application/octet-stream"
MAX_PATH_BYTES = 1024  # S3's key limit, which Supabase Storage inherits
# Supabase Storage's file backend keeps each segment as a file or folder name: a segment over 255 bytes
# (the filesystem's NAME_MAX) answers HTTP 500, which would be retried as if the server were down.
MAX_SEGMENT_BYTES = 255
MAX_BUCKET_LENGTH = 63
MAX_EXPIRES_IN = 10 * 365 * 24 * 3600
HEAD_BYTES = 8192  # enough for puremagic's longest signature offsets in media formats
READ_SIZE = 1024 * 1024
# preadv2's RWF_NOWAIT (Linux 4.14+): read only what the page cache holds, never wait for the disk.
_NOWAIT: int = getattr(os, "RWF_NOWAIT", 0) if hasattr(os, "preadv") else 0

# Supabase Storage accepts only these characters in a key (its `isValidKey`); refusing the rest here keeps
# LocalStorage and the fake from accepting what the real service would refuse. It excludes `\`, `%`, NUL
# and every control character.
# `?` is one of them, but an object whose key has one cannot be read through a signed URL (the server
# takes the rest as the query), so it is refused here too.
_KEY_CHARS = re.compile(r"[A-Za-z0-9_/!\-.*'() &$@=;:+,]*")
_BUCKET = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]*")
_CONTENT_TYPE = re.compile(r"[A-Za-z0-9][A-Za-z0-9!#$&^_.+\-]*/[A-Za-z0-9][A-Za-z0-9!#$&^_.+\-]*(\s*;.*)?")


def validate_path(path: object) -> str:
    """Return ``path`` when it is a safe object path, else raise :class:`ValidationError` (no I/O)."""
    if not isinstance(path, str) or not path:
        raise ValidationError("The object path must be a non-empty string such as 'jobs/42/clip.mp4'", field="path")
    if len(path.encode()) > MAX_PATH_BYTES:
        raise ValidationError(f"The object path is longer than {MAX_PATH_BYTES} bytes; shorten it", field="path")
    if path.startswith("/"):
        raise ValidationError("The object path must not start with '/'; paths are relative to the bucket", field="path")
    if "\\" in path:
        raise ValidationError("The object path must not contain a backslash; separate folders with '/'", field="path")
    if any(ord(char) < 32 or 127 <= ord(char) < 160 for char in path):
        raise ValidationError("The object path must not contain NUL or control characters", field="path")
    if "?" in path:
        raise ValidationError(
            "The object path must not contain '?': Supabase Storage cannot serve such an object through a signed "
            "URL (it reads the rest as the query); replace it",
            field="path",
        )
    segments = path.split("/")
    if any(len(segment.encode()) > MAX_SEGMENT_BYTES for segment in segments):
        raise ValidationError(
            f"Each '/'-separated part of the object path must be at most {MAX_SEGMENT_BYTES} bytes (Supabase "
            "Storage's file backend stores each part as a file name and fails with HTTP 500 beyond that)",
            field="path",
        )
    if any(segment == "" for segment in segments):
        raise ValidationError("The object path must not have empty segments ('//' or a trailing '/')", field="path")
    if any(segment in {".", ".."} for segment in segments):
        raise ValidationError("The object path must not contain '.' or '..' segments", field="path")
    if not _KEY_CHARS.fullmatch(path):
        raise ValidationError(
            "The object path may use only letters, digits, '/' and !-_.*'() &$@=;:+, (Supabase Storage's key rule)",
            field="path",
        )
    return path


def object_url(base: str, bucket: str, path: str) -> str:
    """Return the URL that names ``bucket/path`` under ``base`` (each path segment percent-quoted)."""
    quoted = "/".join(quote(segment, safe="") for segment in path.split("/"))
    return f"{base}/{quote(bucket, safe='')}/{quoted}"


def path_of(base: str, bucket: str, path_or_url: object) -> str:
    """Return the object path of ``path_or_url``: a path as it is, or a URL ``upload_file`` returned.

    Raises:
        ValidationError: not a valid path, or a URL that does not name an object of ``bucket`` in this storage.
    """
    if isinstance(path_or_url, str) and "://" in path_or_url:
        prefix = f"{base}/{quote(bucket, safe='')}/"
        if not path_or_url.startswith(prefix) or "?" in path_or_url or "#" in path_or_url:
            raise ValidationError(
                f"The URL does not name an object of bucket {bucket!r} in this storage (expected {prefix}...); "
                "pass the URL upload_file returned, or the object path",
                field="path",
            )
        return validate_path("/".join(unquote(segment) for segment in path_or_url[len(prefix) :].split("/")))
    return validate_path(path_or_url)


def validate_bucket(bucket: object) -> str:
    """Return ``bucket`` when it is a valid bucket name, else raise :class:`ValidationError` (no I/O)."""
    if not isinstance(bucket, str) or not 0 < len(bucket) <= MAX_BUCKET_LENGTH or not _BUCKET.fullmatch(bucket):
        raise ValidationError(
            f"The bucket name must be 1-{MAX_BUCKET_LENGTH} letters, digits, '_', '-' or '.', not starting with '.'",
            field="bucket",
        )
    return bucket


def validate_content_type(content_type: str | None) -> str | None:
    """Return ``content_type`` when it looks like ``type/subtype``, else raise :class:`ValidationError`."""
    if content_type is not None and not _CONTENT_TYPE.fullmatch(content_type):
        raise ValidationError(
            "The content type must look like 'type/subtype', such as 'video/mp4'", field="content_type"
        )
    return content_type


def validate_expires_in(expires_in: int) -> int:
    """Return ``expires_in`` when it is a whole number of seconds in range, else raise ValidationError."""
    if isinstance(expires_in, bool) or not isinstance(expires_in, int) or not 0 < expires_in <= MAX_EXPIRES_IN:
        raise ValidationError(
            f"expires_in must be a whole number of seconds between 1 and {MAX_EXPIRES_IN}", field="expires_in"
        )
    return expires_in


def detect_content_type(head: bytes, path: str) -> str:
    """Return the MIME type of content from its first bytes, else from the path's extension, else a default."""
    if head:
        import puremagic  # noqa: PLC0415 - imported when first needed, like every optional parser

        try:
            matches = puremagic.magic_string(head)
        except (puremagic.PureError, ValueError):
            matches = []
        for match in matches:
            if match.mime_type:
                return str(match.mime_type)
    guessed, _ = mimetypes.guess_type(path, strict=False)
    return guessed or DEFAULT_CONTENT_TYPE


class Body:
    """An upload body of known size that every attempt reads again from its start.

    Content is held as bytes or in a seekable binary file (the caller's, one we opened, or a spool file
    a chunk factory was copied into); reading never holds more than ``read_size`` bytes at once.
    """

    def __init__(self, *, content: bytes | None = None, file: IO[bytes] | None = None, start: int = 0) -> None:
        self._content = content
        self._file = file
        self._start = start
        if content is not None:
            self.size = len(content)
        else:
            assert file is not None  # noqa: S101 - one of the two is always given by open_body
            self.size = file.seek(0, io.SEEK_END) - start
        self.head = b""
        self._fd = _fileno(file) if file is not None and _NOWAIT else None

    async def _read_at(self, offset: int, length: int) -> bytes:
        """Return the piece at ``offset``: at once if it is in memory (content, or the page cache), else in a thread.

        The hop to a thread per piece was most of the client's CPU per uploaded GiB above a raw httpx upload, and
        the event loop never waits on a disk either way (Linux ``preadv2`` with ``RWF_NOWAIT`` never waits).
        """
        cached = self._read_cached(offset, length)
        return cached if cached is not None else await self._read_in_thread(offset, length)

    async def _read_in_thread(self, offset: int, length: int) -> bytes:
        file = self._file
        assert file is not None  # noqa: S101 - see __init__

        def read() -> bytes:
            file.seek(self._start + offset)
            return file.read(length)

        return await asyncio.to_thread(read)

    async def load_head(self) -> None:
        """Read the first bytes, for content-type detection."""
        self.head = await self._read_at(0, min(HEAD_BYTES, self.size))

    async def read_all(self) -> bytes:
        """Return the whole body (only used for bodies of at most one chunk)."""
        if self._content is not None:
            return self._content
        return await self._read_at(0, self.size)

    async def chunks(self, chunk_size: int, *, offset: int = 0, length: int | None = None) -> AsyncIterator[bytes]:
        """Yield ``length`` bytes (default: the rest) from ``offset`` in pieces of at most ``chunk_size``."""
        end = self.size if length is None else min(self.size, offset + length)
        position = offset
        while position < end:
            chunk = await self._read_at(position, min(chunk_size, end - position))
            if not chunk:
                raise ValidationError(
                    f"The upload source ended at byte {position} of {self.size}; it changed while being uploaded",
                    field="data",
                )
            position += len(chunk)
            yield chunk

    def source_descriptor(self) -> tuple[int, int] | None:
        """Return the body file's descriptor and start offset, for a copy in the kernel; None for other bodies."""
        if self._file is None:
            return None
        fd = _fileno(self._file)
        return None if fd is None else (fd, self._start)

    def _read_cached(self, offset: int, length: int) -> bytes | None:
        """Return the piece at ``offset`` when it is in memory already (content, or the page cache), else None."""
        if self._content is not None:
            return self._content[offset : offset + length]
        if self._fd is None:
            return None
        buffer = bytearray(length)
        try:
            got = os.preadv(self._fd, [buffer], self._start + offset, _NOWAIT)
        except OSError:  # BlockingIOError: not cached; others: the thread's read reports them
            return None
        return bytes(buffer) if got == length else None


def _fileno(file: IO[bytes]) -> int | None:
    try:
        return file.fileno()
    except (AttributeError, OSError, ValueError):  # io.BytesIO and other file objects without a descriptor
        return None


def _too_large(size: int, limit: int) -> ValidationError:
    return ValidationError(
        f"The upload is {size} bytes, more than the limit of {limit} bytes (STORAGE_MAX_UPLOAD_BYTES)",
        field="data",
    )


@dataclass(frozen=True, slots=True)
class _Spool:
    file: IO[bytes]


async def _spool(factory: ChunkFactory, limit: int) -> _Spool:
    """Copy a chunk factory's output to a temporary file, refusing it as soon as it passes ``limit``."""
    spool = tempfile.TemporaryFile()  # noqa: SIM115 - closed by open_body's exit stack
    try:
        written = 0
        async for chunk in factory():
            written = _counted(chunk, written, limit)
            await asyncio.to_thread(spool.write, chunk)
    except BaseException:
        spool.close()
        raise
    return _Spool(spool)


def _counted(chunk: object, written: int, limit: int) -> int:
    """Return the bytes written so far after ``chunk``; refuse a chunk that is not bytes or passes the limit."""
    if not isinstance(chunk, bytes | bytearray | memoryview):
        raise ValidationError("A chunk factory must yield bytes", field="data")
    written += len(chunk)
    if written > limit:
        raise _too_large(written, limit)
    return written


@contextlib.asynccontextmanager
async def open_body(data: UploadData, *, limit: int) -> AsyncIterator[Body]:
    """Open an upload source as a :class:`Body`, checking its size against ``limit`` before any I/O upstream.

    Raises:
        ValidationError: the source is of an unsupported kind, cannot be read, or is larger than ``limit``.
    """
    async with contextlib.AsyncExitStack() as stack:
        body: Body
        if isinstance(data, bytes | bytearray | memoryview):
            body = Body(content=bytes(data))
        elif isinstance(data, str):
            raise ValidationError(
                "upload_file takes bytes, a pathlib.Path, a binary file or a chunk factory, not str; "
                "wrap a file name in Path() or encode text first",
                field="data",
            )
        elif isinstance(data, os.PathLike):
            try:
                file = await asyncio.to_thread(Path(data).open, "rb")
            except OSError as exc:
                raise ValidationError(f"Cannot read the file to upload ({exc.strerror})", field="data") from exc
            stack.callback(file.close)
            body = Body(file=file)
        elif hasattr(data, "read"):
            file_obj: IO[bytes] = data  # type: ignore[assignment]  # BinaryIO and IO[bytes] both qualify
            if _seekable(file_obj):
                body = Body(file=file_obj, start=file_obj.tell())
            else:
                spooled = await _spool(_reader_factory(file_obj), limit)
                stack.callback(spooled.file.close)
                body = Body(file=spooled.file)
        elif callable(data):
            spooled = await _spool(data, limit)
            stack.callback(spooled.file.close)
            body = Body(file=spooled.file)
        else:
            raise ValidationError(
                f"Cannot upload a {type(data).__name__}; pass bytes, a pathlib.Path, a binary file or a chunk factory",
                field="data",
            )
        if body.size > limit:
            raise _too_large(body.size, limit)
        await body.load_head()
        yield body


def _seekable(file: IO[bytes]) -> bool:
    try:
        return bool(file.seekable())
    except (AttributeError, ValueError):
        return False


def _reader_factory(file: IO[bytes]) -> ChunkFactory:
    async def chunks() -> AsyncIterator[bytes]:
        while chunk := await asyncio.to_thread(file.read, READ_SIZE):
            yield chunk

    return chunks


class Sink:
    """The temporary file a download writes to; renamed over the destination only when complete."""

    def __init__(self, file: IO[bytes]) -> None:
        self._file = file

    def write(self, chunk: bytes) -> None:
        self._file.write(chunk)

    def write_many(self, chunks: list[bytes]) -> None:
        """Write the pieces in order (in a worker thread: one hop for many pieces)."""
        self._file.writelines(chunks)

    def fileno(self) -> int:
        """Return the temporary file's descriptor (nothing written through ``write`` yet: nothing buffered)."""
        return self._file.fileno()


@contextlib.asynccontextmanager
async def atomic_destination(target: Path) -> AsyncIterator[Sink]:
    """Yield a temp file beside ``target``; on success fsync and rename it over ``target``, else delete it."""
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temp_name = await asyncio.to_thread(
        tempfile.mkstemp, dir=target.parent, prefix=f".{target.name}.", suffix=".part"
    )
    temp = Path(temp_name)
    file = os.fdopen(handle, "wb")
    try:
        yield Sink(file)
        await asyncio.to_thread(_flush_and_close, file)
        await asyncio.to_thread(os.replace, temp, target)
    except BaseException:
        file.close()
        remove_quietly(temp)
        raise


def copy_range(source: int, offset: int, destination: int, length: int) -> int:
    """Copy up to ``length`` bytes from ``source`` at ``offset`` to ``destination``'s position; return the count.

    In the kernel (``copy_file_range``, or ``sendfile``) when the two are files it can copy between, else
    through a buffer. Runs in a worker thread: one hop per piece of many MiB, not two per MiB. 0 means the
    source ended.
    """
    # Descriptors of the thread's own: a caller cancelled meanwhile closes its files, and a number it closed may
    # be given to another file before this thread's next call.
    source, destination = os.dup(source), os.dup(destination)
    try:
        return _copy_range(source, offset, destination, length)
    finally:
        os.close(source)
        os.close(destination)


def _copy_range(source: int, offset: int, destination: int, length: int) -> int:
    copied = 0
    while copied < length:
        try:
            count = os.copy_file_range(source, destination, length - copied, offset + copied)
        except OSError as exc:
            if exc.errno not in _NO_KERNEL_COPY:
                raise
            data = os.pread(source, min(length - copied, 1024 * 1024), offset + copied)
            count = len(data)
            view = memoryview(data)
            while view:
                view = view[os.write(destination, view) :]
        if count == 0:
            break
        copied += count
    return copied


# copy_file_range refuses some pairs of files (another file system on older kernels, special files).
_NO_KERNEL_COPY = frozenset({errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.EBADF})


def remove_quietly(path: Path) -> None:
    """Delete a temporary file if it is still there (sync: it must also run while being cancelled)."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def _flush_and_close(file: IO[bytes]) -> None:
    file.flush()
    os.fsync(file.fileno())
    file.close()
