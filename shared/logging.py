"""Write one JSON object per log line, carrying the job id, without ever blocking the event loop.

- :func:`job_context` puts ``job_id`` and ``stage`` on every line logged inside it, asyncio tasks started
  inside included (contextvars are copied into new tasks).
- Records pass through a :class:`logging.handlers.QueueHandler`; a :class:`~logging.handlers.QueueListener`
  thread formats them (orjson) and writes to stderr and, optionally, a rotating file. The caller only pays
  for the enqueue, so a slow disk never stalls the loop.
- :class:`Redactor` writes ``[REDACTED]`` for every secret value from Settings and for anything shaped like
  an API key, a bearer token or a JWT, in the message and the extra fields alike.
- :class:`LoggerFactory` owns the handlers; the container opens it as a Resource and closes it (flushing
  the queue) on shutdown. Tests override ``Container.logger_factory`` to capture records.
"""

from __future__ import annotations

import contextlib
import logging
import logging.handlers
import queue
import re
import sys
import threading
import time
import traceback
from collections.abc import Iterable, Iterator
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Protocol, TextIO
from uuid import UUID

import orjson

__all__ = [
    "REDACTED",
    "JsonFormatter",
    "LoggerFactory",
    "LoggerProvider",
    "Redactor",
    "current_job_id",
    "current_stage",
    "job_context",
]

REDACTED = "[REDACTED]"

_job_id: ContextVar[str | None] = ContextVar("videogen_job_id", default=None)
_stage: ContextVar[str | None] = ContextVar("videogen_stage", default=None)

# Attributes every LogRecord has; anything else on a record came in through `extra=`.
_STANDARD_ATTRS = frozenset(
    vars(logging.LogRecord("", 0, "", 0, "", None, None)).keys() | {"message", "asctime", "job_id", "stage", "taskName"}
)

# Shapes of credentials that must never reach a log line, whatever their source, each with a cheap literal
# that must occur in the line for the pattern to be able to match: most lines contain none of them, so the
# regular expressions run only where they might find something.
_SECRET_SHAPES: tuple[tuple[str, str], ...] = (
    ("sk-", r"\bsk-[A-Za-z0-9_-]{8,}"),  # OpenAI keys (sk-..., sk-proj-...)
    ("r8_", r"\br8_[A-Za-z0-9]{8,}"),  # Replicate tokens
    ("sb_", r"\bsb_(?:secret|publishable)_[A-Za-z0-9_-]{8,}"),  # Supabase's newer keys
    ("eyJ", r"\beyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}"),  # JWTs
    ("earer", r"(?i:\bbearer\s+)[A-Za-z0-9._~+/=-]{8,}"),  # Authorization: Bearer <token>
    ("=", r"(?i:(?<=[?&])(?:token|apikey|api_key|key|signature|sig)=)[^&\s\"']{6,}"),  # signed-URL tokens
    ("@", r"(?<=://)[^/\s:@\"']*:[^@\s/\"']+(?=@)"),  # user:password@ in connection strings
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


def current_job_id() -> str | None:
    """Return the job id of the enclosing :func:`job_context`, if any."""
    return _job_id.get()


def current_stage() -> str | None:
    """Return the stage of the enclosing :func:`job_context`, if any."""
    return _stage.get()


class Redactor:
    """Replace secret values and credential-shaped text with ``[REDACTED]``."""

    __slots__ = ("_secrets", "_secrets_pattern", "_shapes")

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
        self._shapes = tuple((trigger, re.compile(pattern)) for trigger, pattern in _SECRET_SHAPES)

    def __call__(self, text: str) -> str:
        """Return the text with every secret replaced."""
        if self._secrets_pattern is not None and any(secret in text for secret in self._secrets):
            text = self._secrets_pattern.sub(REDACTED, text)
        lowered: str | None = None
        for trigger, pattern in self._shapes:
            if trigger == "earer":
                lowered = lowered if lowered is not None else text.lower()
                if trigger not in lowered:
                    continue
            elif trigger not in text:
                continue
            text = pattern.sub(REDACTED, text)
        return text


def _default(value: object) -> object:
    """Serialise what orjson does not know natively (Decimal, Path, sets, exceptions...)."""
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    return str(value)


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
        entry: dict[str, Any] = {
            "timestamp": self._timestamp(record.created, record.msecs),
            "level": record.levelname,
            "logger": record.name,
            "module": record.module,
            "message": record.getMessage() if not hasattr(record, "message") else record.message,
        }
        job_id = getattr(record, "job_id", None)
        if job_id is not None:
            entry["job_id"] = job_id
        stage = getattr(record, "stage", None)
        if stage is not None:
            entry["stage"] = stage
        fields = record.__dict__
        # The set difference runs in C (extras are few, standard attributes many); sorted, so lines are stable.
        entry.update((key, fields[key]) for key in sorted(fields.keys() - _STANDARD_ATTRS) if not key.startswith("_"))
        if record.exc_info:
            entry["exception"] = "".join(traceback.format_exception(*record.exc_info)).rstrip()
        elif record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = record.stack_info
        line = orjson.dumps(entry, default=_default, option=orjson.OPT_NON_STR_KEYS).decode()
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

    def handle(self, record: logging.LogRecord) -> bool:
        # The queue is thread-safe and this handler has no filters: skip the handler lock on the hot path.
        try:
            line = self.format(self.prepare(record))
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
        if record.exc_info and not record.exc_text:
            record.exc_text = "".join(traceback.format_exception(*record.exc_info)).rstrip()
        record.exc_info = None
        return record


class LoggerProvider(Protocol):
    """What components need from the logging set-up: named loggers."""

    def get_logger(self, name: str) -> logging.Logger:
        """Return the logger called ``name``."""
        ...


# Lines written per batch: one write and one flush per handler for up to this many lines.
_BATCH = 256


class _BatchWriter(threading.Thread):
    """Drain the queue of formatted lines in batches, writing each batch with one call per handler.

    It does what :class:`logging.handlers.QueueListener` does, one batch at a time instead of one record at a
    time: one write and one flush per batch instead of per line. ``None`` in the queue stops it.
    """

    def __init__(self, lines: queue.SimpleQueue[str | None], handlers: list[logging.Handler]) -> None:
        super().__init__(name="videogen-log-writer", daemon=True)
        self._lines = lines
        self._handlers = handlers

    def run(self) -> None:
        lines = self._lines
        while True:
            batch = [lines.get()]
            with contextlib.suppress(queue.Empty):
                while len(batch) < _BATCH and batch[-1] is not None:
                    batch.append(lines.get_nowait())
            stopping = batch[-1] is None
            text = [line for line in batch if line is not None]
            if text:
                self._write(text)
            if stopping:
                return

    def _write(self, lines: list[str]) -> None:
        for handler in self._handlers:
            handler.acquire()
            try:
                if isinstance(handler, logging.handlers.RotatingFileHandler):
                    _write_rotating(handler, lines)
                elif isinstance(handler, logging.StreamHandler):
                    handler.stream.write("".join(lines))
                    handler.flush()
            except Exception:  # noqa: BLE001 - a full disk or closed stream is reported, never fatal
                handler.handleError(logging.makeLogRecord({"msg": "writing log lines failed"}))
            finally:
                handler.release()


def _write_rotating(handler: logging.handlers.RotatingFileHandler, lines: list[str]) -> None:
    """Write lines to a rotating file, rolling over before a line would pass ``maxBytes``."""
    if handler.stream is None:  # closed by a rollover that failed, or delayed opening
        handler.stream = handler._open()
    size = handler.stream.tell()
    pending: list[str] = []
    for line in lines:
        length = len(line.encode("utf-8")) if not line.isascii() else len(line)
        if handler.maxBytes and size and size + length > handler.maxBytes:
            handler.stream.write("".join(pending))
            pending = []
            handler.doRollover()
            size = 0
        pending.append(line)
        size += length
    handler.stream.write("".join(pending))
    handler.stream.flush()


class LoggerFactory:
    """Own the JSON handlers for one process: start them, hand out loggers, flush and stop them.

    Args:
        level: the level of the configured logger ("DEBUG" | "INFO" | "WARNING" | "ERROR").
        secrets: values to redact (``Settings.secret_values()``).
        log_file: a rotating JSON log file, or None for the console only.
        max_bytes / backup_count: rotation of the file (100 MB, 5 kept by default).
        stream: the console stream (stderr by default); None turns the console off.
        root: the logger the handlers attach to ("" is the root: library logs become JSON too).
    """

    def __init__(
        self,
        *,
        level: str = "INFO",
        secrets: Iterable[str] = (),
        log_file: Path | None = None,
        max_bytes: int = 100 * 1024 * 1024,
        backup_count: int = 5,
        stream: TextIO | None = sys.stderr,
        root: str = "",
    ) -> None:
        self.level = logging.getLevelName(level.upper())
        self.formatter = JsonFormatter(Redactor(secrets))
        self.log_file = log_file
        self._max_bytes = max_bytes
        self._backup_count = backup_count
        self._stream = stream
        self._root = logging.getLogger(root or None)
        self._queue: queue.SimpleQueue[str | None] = queue.SimpleQueue()
        self._queue_handler = _ContextQueueHandler(self._queue, self.formatter)
        self._handlers: list[logging.Handler] = []
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
        if self._stream is not None:
            self._handlers.append(logging.StreamHandler(self._stream))
        if self.log_file is not None:
            self.log_file.parent.mkdir(parents=True, exist_ok=True)
            self._handlers.append(
                logging.handlers.RotatingFileHandler(
                    self.log_file,
                    maxBytes=self._max_bytes,
                    backupCount=self._backup_count,
                    encoding="utf-8",
                )
            )
        self._writer = _BatchWriter(self._queue, self._handlers)
        self._writer.start()
        self._previous_level = self._root.level
        self._root.setLevel(self.level)
        self._root.addHandler(self._queue_handler)
        return self

    def get_logger(self, name: str) -> logging.Logger:
        """Return the standard logger called ``name``; its records go through this factory's handlers."""
        return logging.getLogger(name)

    def stop(self) -> None:
        """Write whatever is queued, flush and close every handler; safe to call twice."""
        writer, self._writer = self._writer, None
        if writer is None:
            return
        self._root.removeHandler(self._queue_handler)
        self._root.setLevel(self._previous_level)
        self._queue.put(None)
        writer.join()
        for handler in self._handlers:
            handler.flush()
            handler.close()
        self._handlers.clear()
