"""Write one JSON object per log line, carrying the job id, without ever blocking the event loop.

- :func:`get_logger` returns the standard logger of that name; :class:`LoggerFactory` (the container's
  ``logger_factory`` Resource) attaches the JSON output to the root logger on start and removes it on stop.
- :func:`job_context` puts ``job_id`` and ``stage`` on every line logged inside it, asyncio tasks started
  inside included (contextvars are copied into new tasks). Every line has ``job_id``: null outside a job.
- The caller's thread formats each record (orjson) and puts the finished line on a queue; one writer thread
  drains the queue in batches, one write per batch, to stderr and, optionally, a file. The caller pays for
  the formatting and the enqueue only, so a slow disk never stalls the loop.
- The file is shared safely by many processes: each process appends (``O_APPEND``), each batch of whole lines
  in one ``write`` under an exclusive lock (``fcntl.flock`` on ``.<name>.lock`` beside it), so lines from
  different processes never interleave. A batch is written whole or not at all: a write that fails part way
  (a full disk) is cut back to where it started, and the batch is kept and written later.
- Size rotation (``max_bytes``, ``backup_count``; ``LOG_MAX_BYTES``, ``LOG_BACKUP_COUNT``) happens under the
  same lock: the process whose batch would pass the limit renames ``app.log`` to ``app.log.1`` (and so on)
  and opens a new file; every other process notices at its next batch that the path names another file and
  reopens it. So no line is lost or written twice however many processes share the file. External rotation
  (logrotate without ``copytruncate``) still works, by the same reopen; set ``max_bytes=0`` to leave rotation
  to it alone.
- A file that cannot be written (a full disk) costs one notice on stderr per outage, not one per batch; the
  lines wait in memory (up to 4 MiB) and are written when the disk is back. Lines dropped past that bound
  are counted, and a WARNING line with ``lost_lines`` says how many once writing works again.
- While a factory runs (``lean``, the default) records are lean (:mod:`shared._lean_records`): a LogRecord
  built with only the work a line uses and a cheaper caller lookup for ``module`` (about twice the lines per
  second).
- :class:`Redactor` writes ``[REDACTED]`` for every secret value from Settings and for anything shaped like
  an API key, a bearer token or a JWT, in the message and the extra fields alike. Its patterns run in linear
  time whatever the text (a token may start only where a run of token characters starts, and quantifiers
  are possessive), so a hostile 40 KB message costs well under 10 ms.
- A lone surrogate (text decoded with ``surrogateescape``) anywhere in a record is escaped (``\\udcff``),
  never a reason to drop the line.
"""

from __future__ import annotations

import collections
import contextlib
import fcntl
import logging
import logging.handlers
import os
import queue
import re
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Iterator
from contextvars import ContextVar
from pathlib import Path
from typing import Any, TextIO
from uuid import UUID

import orjson

from shared._lean_records import _LeanRecord as _LeanRecord  # noqa: PLC0414 - still importable from here
from shared._lean_records import _LeanRecords

__all__ = [
    "REDACTED",
    "JsonFormatter",
    "LoggerFactory",
    "Redactor",
    "current_job_id",
    "current_stage",
    "get_logger",
    "job_context",
]

REDACTED = "[REDACTED]"

_job_id: ContextVar[str | None] = ContextVar("videogen_job_id", default=None)
_stage: ContextVar[str | None] = ContextVar("videogen_stage", default=None)
# Set by shared.telemetry while tracing runs: puts trace_id and span_id on a record (None: tracing is off).
_trace_hook: Callable[[logging.LogRecord], None] | None = None

# Attributes every LogRecord has; anything else on a record came in through `extra=`.
_STANDARD_ATTRS = frozenset(
    vars(logging.LogRecord("", 0, "", 0, "", None, None)).keys() | {"message", "asctime", "job_id", "stage", "taskName"}
)

# Shapes of credentials that must never reach a log line, whatever their source, each with a cheap literal
# that must occur in the line for the pattern to be able to match: most lines contain none of them, so the
# regular expressions run only where they might find something.
# Every pattern runs in linear time on any text: a token may start only where a run of its characters starts
# (a lookbehind, not \b, which also matches after each "-" of "eyJ-eyJ-..."), and every run is possessive
# (``++``), so no run is scanned twice. The JWT pattern with \b took 1.8-2.1 s on 40 KB of "eyJ-eyJ-...".
_TOKEN = "A-Za-z0-9_-"  # noqa: S105 - the characters of a token, not one
_SECRET_SHAPES: tuple[tuple[str, str], ...] = (
    ("sk-", rf"(?<![{_TOKEN}])sk-[{_TOKEN}]{{8,}}+"),  # OpenAI keys (sk-..., sk-proj-...)
    ("r8_", rf"(?<![{_TOKEN}])r8_[A-Za-z0-9]{{8,}}+"),  # Replicate tokens
    ("sb_", rf"(?<![{_TOKEN}])sb_(?:secret|publishable)_[{_TOKEN}]{{8,}}+"),  # Supabase's newer keys
    ("eyJ", rf"(?<![{_TOKEN}])eyJ[{_TOKEN}]{{4,}}+\.[{_TOKEN}]{{4,}}+\.[{_TOKEN}]{{4,}}+"),  # JWTs
    ("earer", r"(?i:(?<![A-Za-z0-9_])bearer\s++)[A-Za-z0-9._~+/=-]{8,}+"),  # Authorization: Bearer <token>
    ("=", r"(?i:(?<=[?&])(?:token|apikey|api_key|key|signature|sig)=)[^&\s\"']{6,}+"),  # signed-URL tokens
    ("@", r"(?<=://)[^/\s:@\"']*+:[^@\s/\"']++(?=@)"),  # user:password@ in connection strings
)


@contextlib.contextmanager
def job_context(*, job_id: UUID | str | None = None, stage: str | None = None) -> Iterator[None]:
    """Tag every line logged inside the block (and in tasks started inside) with the job id and stage."""
    job_token = _job_id.set(str(job_id)) if job_id is not None else None
    stage_token = _stage.set(stage) if stage is not None else None
    try:
        yield
    finally:
        if stage_token is not None:
            _stage.reset(stage_token)
        if job_token is not None:
            _job_id.reset(job_token)


def _set_trace_hook(hook: Callable[[logging.LogRecord], None] | None) -> None:
    """Install (or remove, with None) the function that adds the current trace ids to each record."""
    global _trace_hook  # noqa: PLW0603 - one hook per process, read on every record
    _trace_hook = hook


def current_job_id() -> str | None:
    """Return the job id of the enclosing :func:`job_context`, if any."""
    return _job_id.get()


def current_stage() -> str | None:
    """Return the stage of the enclosing :func:`job_context`, if any."""
    return _stage.get()


class Redactor:
    """Replace secret values and credential-shaped text with ``[REDACTED]``."""

    __slots__ = ("_bearer", "_secrets", "_secrets_pattern", "_shapes")

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        literal: set[str] = set()
        for secret in secrets:
            if len(secret) < 4:
                continue
            literal.add(secret)
            # The same secret as it appears inside a JSON string (quotes and backslashes escaped).
            literal.add(orjson.dumps(secret).decode()[1:-1])
        self._secrets = tuple(sorted(literal, key=len, reverse=True))
        self._secrets_pattern = re.compile("|".join(re.escape(s) for s in self._secrets)) if literal else None
        shapes = [(trigger, re.compile(pattern)) for trigger, pattern in _SECRET_SHAPES]
        # "earer" is looked for in the lowered text (Bearer in any case); the others as they are.
        self._shapes = tuple(shape for shape in shapes if shape[0] != "earer")
        self._bearer = next(pattern for trigger, pattern in shapes if trigger == "earer")

    def __call__(self, text: str) -> str:
        """Return the text with every secret replaced."""
        for secret in self._secrets:
            if secret in text:
                text = self._secrets_pattern.sub(REDACTED, text)  # type: ignore[union-attr]  # set with secrets
                break
        for trigger, pattern in self._shapes:
            if trigger in text:
                text = pattern.sub(REDACTED, text)
        if "earer" in text.lower():
            text = self._bearer.sub(REDACTED, text)
        return text


def _default(value: object) -> object:
    """Serialise what orjson does not know natively (Decimal, Path, sets, exceptions...)."""
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    return str(value)


def _encodable(value: object, depth: int = 0) -> object:
    """Return ``value`` with every lone surrogate escaped (``\\udcff``) and anything else orjson refuses as text."""
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    if depth > 32:  # deeper than any log line means to go: a cycle, written as text
        return _encodable(repr(value))
    if isinstance(value, dict):
        return {_encodable(str(key)): _encodable(item, depth + 1) for key, item in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_encodable(item, depth + 1) for item in value]
    if value is None or isinstance(value, bool | float) or (isinstance(value, int) and -(2**63) <= value < 2**64):
        return value
    return _encodable(str(value))


class JsonFormatter(logging.Formatter):
    """Format a record as one JSON object: timestamp, level, logger, module, message, context, extras."""

    def __init__(self, redactor: Redactor | None = None) -> None:
        super().__init__()
        self._redact = redactor or Redactor()
        self._second = -1
        self._second_text = ""

    def _timestamp(self, created: float, msecs: float) -> str:
        """Return ISO 8601 UTC with milliseconds; the date part is rendered once per second, not per line."""
        second = int(created)
        if second != self._second:
            self._second_text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._second = second
        return f"{self._second_text}.{int(msecs):03d}+00:00"

    def format(self, record: logging.LogRecord) -> str:
        """Return the record as one line of JSON, redacted."""
        fields = record.__dict__
        message = fields.get("message")
        entry: dict[str, Any] = {
            "timestamp": self._timestamp(record.created, record.msecs),
            "level": record.levelname,
            "logger": record.name,
            "module": record.module,
            "message": record.getMessage() if message is None else message,
            "job_id": fields.get("job_id"),
        }
        stage = fields.get("stage")
        if stage is not None:
            entry["stage"] = stage
        # The set difference runs in C (extras are few, standard attributes many); sorted, so lines are stable.
        extras = fields.keys() - _STANDARD_ATTRS
        if extras:
            for key in sorted(extras):
                if key[0] != "_":
                    entry[key] = fields[key]
        if record.exc_info:
            entry["exception"] = "".join(traceback.format_exception(*record.exc_info)).rstrip()
        elif record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = record.stack_info
        try:
            line = orjson.dumps(entry, default=_default, option=orjson.OPT_NON_STR_KEYS).decode()
        except orjson.JSONEncodeError:
            # A lone surrogate (or an integer past 64 bits) somewhere: escape it rather than lose the line.
            line = orjson.dumps(_encodable(entry), option=orjson.OPT_NON_STR_KEYS).decode()
        return self._redact(line)


class _ContextQueueHandler(logging.handlers.QueueHandler):
    """Format each record in the caller's thread (job context and arguments as the caller meant them) and
    queue the finished line; the writer thread does the I/O.

    Queuing lines, not LogRecords, is what keeps the event loop smooth: a str is not tracked by the garbage
    collector, while thousands of queued records (each a dict) made one full collection stall the loop for
    20-30 ms (benchmarks/bench_logging.py; about 1 ms with lines).
    """

    def __init__(self, lines: queue.SimpleQueue[str | None], formatter: logging.Formatter) -> None:
        super().__init__(lines)
        self.setFormatter(formatter)
        self._lines = lines
        self._format = formatter.format

    def handle(self, record: logging.LogRecord) -> bool:
        # The queue is thread-safe and this handler has no filters: skip the handler lock on the hot path.
        try:
            line = self._format(self.prepare(record))
        except Exception:  # noqa: BLE001 - a record that cannot be formatted is reported, never fatal
            self.handleError(record)
            return True
        self._lines.put_nowait(line + "\n")
        return True

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        # The message is rendered where its arguments are still what the caller meant.
        record.message = record.getMessage()
        record.msg = record.message
        record.args = None
        if getattr(record, "job_id", None) is None:
            record.job_id = _job_id.get()
        if getattr(record, "stage", None) is None:
            record.stage = _stage.get()
        if _trace_hook is not None:
            _trace_hook(record)
        if record.exc_info and not record.exc_text:
            record.exc_text = "".join(traceback.format_exception(*record.exc_info)).rstrip()
        record.exc_info = None
        return record


# Lines written per batch: one write and one flush per handler for up to this many lines.
_BATCH = 256
# Lines kept in memory while the file cannot be written (a full disk); older ones are dropped past it, counted.
_PENDING_MAX_BYTES = 4 * 1024 * 1024
# Seconds between two attempts to write to a file that failed.
_RETRY_SECONDS = 0.5


class _AppendFile:
    """A log file shared by many processes: whole batches appended under a lock, rotated by size under it.

    The rule of :class:`logging.handlers.WatchedFileHandler`, on bytes and without its per-record stat: before
    each batch, when the path no longer names the open file (rotated by another process or by logrotate),
    reopen it. The lock (``fcntl.flock`` on ``.<name>.lock`` beside the file, which no rotation renames) makes
    a batch, a size check and a rotation one step that no other process can split.
    """

    def __init__(self, path: Path, *, max_bytes: int = 0, backup_count: int = 0) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.backup_count = backup_count
        self._lock_path = path.with_name(f".{path.name}.lock")
        self._lock_fd = -1
        self._fd = -1
        self._identity = (-1, -1)

    def _open(self) -> None:
        self._close_file()
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        status = os.fstat(self._fd)
        self._identity = (status.st_dev, status.st_ino)

    def _current(self) -> bool:
        try:
            status = os.stat(self.path)
        except FileNotFoundError:
            return False
        return (status.st_dev, status.st_ino) == self._identity

    def _rotate(self) -> None:
        """Shift ``app.log.1`` ... to ``.2`` ... (the oldest falls off), ``app.log`` to ``.1``, open a new file."""
        for index in range(self.backup_count - 1, 0, -1):
            with contextlib.suppress(FileNotFoundError):
                os.replace(f"{self.path}.{index}", f"{self.path}.{index + 1}")
        with contextlib.suppress(FileNotFoundError):
            os.replace(self.path, f"{self.path}.1")
        self._open()

    def write(self, data: bytes) -> None:
        """Append ``data`` (whole lines) whole or not at all, rotating first when it would pass ``max_bytes``.

        Raises:
            OSError: the file could not be written (nothing of ``data`` stays in it).
        """
        if self._lock_fd < 0:
            self._lock_fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
        try:
            if self._fd < 0 or not self._current():
                self._open()
            start = os.fstat(self._fd).st_size
            if self.max_bytes > 0 and self.backup_count > 0 and start > 0 and start + len(data) > self.max_bytes:
                self._rotate()
                start = 0
            view = memoryview(data)
            try:
                while view:
                    view = view[os.write(self._fd, view) :]
            except OSError:
                # Cut the part that was written: the next line must not be glued onto a fragment. Under the
                # lock nobody else appended after it.
                with contextlib.suppress(OSError):
                    os.ftruncate(self._fd, start)
                raise
        finally:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    def _close_file(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def close(self) -> None:
        """Close the file and the lock (safe to call twice)."""
        self._close_file()
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1


class _BatchWriter(threading.Thread):
    """Drain the queue of formatted lines in batches, writing each batch with one call per output.

    It does what :class:`logging.handlers.QueueListener` does, one batch at a time instead of one record at a
    time: one write and one flush per batch instead of per line. ``None`` in the queue stops it.

    A batch the file refuses is kept (up to ``buffer_bytes``, the oldest dropped and counted past it) and
    tried again every ``_RETRY_SECONDS``; stderr hears of the outage once. When a write works again, the kept
    batches follow a line saying how many were dropped (``marker(lost, since, error)``).
    """

    def __init__(
        self,
        lines: queue.SimpleQueue[str | None],
        stream: TextIO | None,
        file: _AppendFile | None,
        marker: Callable[[int, float, str], str],
        buffer_bytes: int = _PENDING_MAX_BYTES,
    ) -> None:
        super().__init__(name="videogen-log-writer", daemon=True)
        self._buffer_bytes = buffer_bytes
        self._lines = lines
        self._stream = stream
        self._file = file
        self._marker = marker
        self._pending: collections.deque[tuple[bytes, int]] = collections.deque()
        self._pending_bytes = 0
        self._lost = 0
        self._down_since: float | None = None
        self._down_error = ""
        self._next_attempt = 0.0
        self._stream_down = False

    def run(self) -> None:
        lines = self._lines
        while True:
            try:
                first = lines.get(timeout=_RETRY_SECONDS if self._pending else None)
            except queue.Empty:
                self._flush_file()
                continue
            batch: list[str] = []
            line = first
            with contextlib.suppress(queue.Empty):
                while line is not None:
                    batch.append(line)
                    if len(batch) == _BATCH:
                        break
                    line = lines.get_nowait()
            stopping = line is None
            if batch:
                self._write("".join(batch), len(batch))
            if stopping:
                self._last_attempt()
                return

    def _write(self, text: str, count: int) -> None:
        if self._stream is not None:
            try:
                self._stream.write(text)
                self._stream.flush()
            except Exception as error:  # noqa: BLE001 - a closed stream is reported (once), never fatal
                if not self._stream_down:
                    self._stream_down = True
                    _notice(f"writing log lines to the console failed ({error!r}); console lines are dropped")
            else:
                self._stream_down = False
        if self._file is not None:
            data = text.encode("utf-8", "backslashreplace")
            self._pending.append((data, count))
            self._pending_bytes += len(data)
            while self._pending_bytes > self._buffer_bytes and len(self._pending) > 1:
                dropped, lines = self._pending.popleft()
                self._pending_bytes -= len(dropped)
                self._lost += lines
            if self._down_since is None or time.monotonic() >= self._next_attempt:
                self._flush_file()

    def _flush_file(self) -> None:
        """Write the kept batches in order, then the loss marker; stop at the first failure."""
        assert self._file is not None  # noqa: S101 - only called with a file
        try:
            if self._lost and self._down_since is not None:
                # The marker first: it is small, and the kept lines may fill the disk again.
                since = time.time() - (time.monotonic() - self._down_since)
                self._file.write(self._marker(self._lost, since, self._down_error).encode("utf-8"))
                self._lost = 0
            while self._pending:
                data, _ = self._pending[0]
                self._file.write(data)
                self._pending.popleft()
                self._pending_bytes -= len(data)
            self._down_since = None
        except OSError as error:
            self._next_attempt = time.monotonic() + _RETRY_SECONDS
            if self._down_since is None:
                self._down_since = time.monotonic()
                self._down_error = f"{type(error).__name__}: {error}"
                _notice(
                    f"writing log lines to {self._file.path} failed ({self._down_error}); up to "
                    f"{self._buffer_bytes} bytes of lines wait in memory and are written when it works again, "
                    "and a line in the file will count those dropped"
                )

    def _last_attempt(self) -> None:
        """On stop: one more try for whatever waits; say on stderr what is lost for good."""
        if self._file is None or (not self._pending and self._down_since is None):
            return
        self._flush_file()
        lost = self._lost + sum(count for _, count in self._pending)
        if self._down_since is not None and lost:
            _notice(f"{lost} log line(s) could not be written to {self._file.path} before the process stopped")


def _notice(what: str) -> None:
    """Tell stderr about lost log lines, in one line, without raising."""
    if logging.raiseExceptions and sys.stderr is not None:
        with contextlib.suppress(Exception):
            sys.stderr.write(f"videogen-shared logging: {what}\n")
            sys.stderr.flush()


def get_logger(name: str) -> logging.Logger:
    """Return the standard logger called ``name``; its lines are JSON once the container's logger_factory runs."""
    return logging.getLogger(name)


class LoggerFactory:
    """Own the JSON handlers for one process: start them, hand out loggers, flush and stop them.

    Args:
        level: the level of the configured logger ("DEBUG" | "INFO" | "WARNING" | "ERROR").
        secrets: values to redact (``Settings.secret_values()``).
        log_file: a JSON log file that many processes may share, or None for the console only.
        max_bytes: rotate ``log_file`` when a batch would take it past this size (``LOG_MAX_BYTES``); 0 leaves
            rotation to an external tool (logrotate without ``copytruncate``).
        backup_count: rotated files kept, ``app.log.1`` the newest (``LOG_BACKUP_COUNT``).
        buffer_bytes: lines kept in memory while ``log_file`` cannot be written (a full disk); past it the
            oldest are dropped, and counted in the line written once the file works again.
        stream: the console stream (stderr by default); None turns the console off.
        root: the logger the handlers attach to ("" is the root: library logs become JSON too).
        lean: while running, build records with only the work a JSON line uses (a cheaper caller lookup, no
            thread or process names): about twice the lines per second. Pass False when another handler in
            the process prints ``%(threadName)s`` or ``%(processName)s``, or relies on ``stacklevel``.
    """

    def __init__(
        self,
        *,
        level: str = "INFO",
        secrets: Iterable[str] = (),
        log_file: Path | None = None,
        max_bytes: int = 0,
        backup_count: int = 5,
        buffer_bytes: int = _PENDING_MAX_BYTES,
        stream: TextIO | None = sys.stderr,
        root: str = "",
        lean: bool = True,
    ) -> None:
        self._lean = lean
        self.level = logging.getLevelName(level.upper())
        self.formatter = JsonFormatter(Redactor(secrets))
        self.log_file = log_file
        self.max_bytes = max_bytes
        self.backup_count = backup_count
        self._buffer_bytes = buffer_bytes
        self._file: _AppendFile | None = None
        self._stream = stream
        self._root = logging.getLogger(root or None)
        self._queue: queue.SimpleQueue[str | None] = queue.SimpleQueue()
        self._queue_handler = _ContextQueueHandler(self._queue, self.formatter)
        self._writer: _BatchWriter | None = None
        self._previous_level = self._root.level

    @property
    def running(self) -> bool:
        """Whether the writer thread is running."""
        return self._writer is not None

    def start(self) -> LoggerFactory:
        """Open the handlers and start the writer thread; idempotent."""
        if self._writer is not None:
            return self
        if self.log_file is not None:
            self.log_file.parent.mkdir(parents=True, exist_ok=True)
            self._file = _AppendFile(self.log_file, max_bytes=self.max_bytes, backup_count=self.backup_count)
        self._writer = _BatchWriter(self._queue, self._stream, self._file, self._loss_marker, self._buffer_bytes)
        if self._lean:
            _LeanRecords.acquire()
        self._writer.start()
        self._previous_level = self._root.level
        self._root.setLevel(self.level)
        self._root.addHandler(self._queue_handler)
        return self

    def _loss_marker(self, lost: int, since: float, error: str) -> str:
        """Return the line that says how many lines the file lost in an outage that began at ``since``."""
        started = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(since))
        record = logging.LogRecord(
            "shared.logging",
            logging.WARNING,
            __file__,
            0,
            f"{lost} log line(s) were lost: the log file could not be written from {started} ({error})",
            None,
            None,
        )
        record.lost_lines = lost
        record.outage_started_at = started
        return self.formatter.format(record) + "\n"

    def get_logger(self, name: str) -> logging.Logger:
        """Return the standard logger called ``name`` (as :func:`get_logger`); its lines go through this factory."""
        return logging.getLogger(name)

    def stop(self) -> None:
        """Write whatever is queued, flush and close every handler; safe to call twice."""
        writer, self._writer = self._writer, None
        if writer is None:
            return
        self._root.removeHandler(self._queue_handler)
        self._root.setLevel(self._previous_level)
        if self._lean:
            _LeanRecords.release()
        self._queue.put(None)
        writer.join()
        if self._file is not None:
            self._file.close()
            self._file = None
