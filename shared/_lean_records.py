"""Lean log records: a LogRecord built with only the work a JSON line uses, installed while a LoggerFactory runs.

The standard library's LogRecord constructor and its findCaller were half of the cost of a line
(benchmarks/bench_logging.py). :class:`_LeanRecord` does less and finds its caller by a cheap walk of the
stack; :class:`_LeanRecords` installs it as the record factory while any :class:`shared.logging.LoggerFactory`
runs, and puts back what was there when the last one stops.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import Any

__all__: list[str] = []

# The source file of the logging package, whose frames stand between a caller and a handler.
_LOGGING_SOURCE = logging.addLevelName.__code__.co_filename
_UNKNOWN_FILE = "(unknown file)"  # the pathname logging gives a record when _srcfile is None
_file_names: dict[str, tuple[str, str]] = {}


class _LeanRecord(logging.LogRecord):
    """A LogRecord built with only the work a JSON line uses; its caller found by a cheap walk of the stack.

    The standard library's constructor and its findCaller were half of the cost of a line
    (benchmarks/bench_logging.py): findCaller normalises the file name of every frame it walks, and the
    constructor splits a path and looks up the thread and process names for every record. Here the first
    frame outside the logging package is found by comparing code objects' file names, its file and module
    names are cached, and the thread and process names (never written to a line) are left None. The
    attributes are those of a LogRecord, so every handler and formatter still works. A ``stacklevel`` above 1
    is not honoured: the line names the function that called the logger.
    """

    def __init__(  # noqa: PLR0917 - the signature of logging.LogRecord, which the record factory is called with
        self,
        name: str,
        level: int,
        pathname: str,
        lineno: int,
        msg: object,
        args: Any,
        exc_info: Any,
        func: str | None = None,
        sinfo: str | None = None,
        **_: object,
    ) -> None:
        now = time.time_ns()
        self.name = name
        self.msg = msg
        if args and len(args) == 1 and isinstance(args[0], dict) and args[0]:
            args = args[0]
        self.args = args
        self.levelname = logging.getLevelName(level)
        self.levelno = level
        self.exc_info = exc_info
        self.exc_text = None
        self.stack_info = sinfo
        self.created = now / 1e9
        self.msecs = float(now // 1_000_000 % 1000)
        self.relativeCreated = (self.created - _START) * 1000
        self.thread = threading.get_ident()
        self.threadName = None
        self.processName = None
        self.process = _pid[0]
        frame: FrameType | None = sys._getframe(1)
        while frame is not None and frame.f_code.co_filename == _LOGGING_SOURCE:
            frame = frame.f_back
        if frame is None or pathname != _UNKNOWN_FILE:
            self.pathname, self.lineno, self.funcName = pathname, lineno, func or "(unknown function)"
            self.filename, self.module = _names_of(pathname)
            return
        code = frame.f_code
        self.pathname = code.co_filename
        self.filename, self.module = _names_of(code.co_filename)
        self.lineno = frame.f_lineno
        self.funcName = code.co_name


_START = logging._startTime  # type: ignore[attr-defined]  # logging's own start time, for relativeCreated


_pid = [os.getpid()]  # os.getpid() per record was a measurable share of the cost; refreshed after a fork
os.register_at_fork(after_in_child=lambda: _pid.__setitem__(0, os.getpid()))


def _names_of(path: str) -> tuple[str, str]:
    """Return the file name and the module name of ``path`` (cached: a process logs from few files)."""
    names = _file_names.get(path)
    if names is None:
        filename = os.path.basename(path)
        names = _file_names[path] = (filename, os.path.splitext(filename)[0])
    return names


class _LeanRecords:
    """Use :class:`_LeanRecord` while any LoggerFactory runs; put back what was there when the last one stops.

    Two documented switches: ``logging._srcfile = None`` (the logging HOWTO's "Optimization" section: no
    findCaller) and ``logging.setLogRecordFactory``. A record factory that someone else installed is kept.
    """

    _lock = threading.Lock()
    _holders = 0
    _saved: tuple[str | None, Callable[..., logging.LogRecord]] = (None, logging.LogRecord)

    @classmethod
    def acquire(cls) -> None:
        with cls._lock:
            if cls._holders == 0:
                cls._saved = (logging._srcfile, logging.getLogRecordFactory())
                if cls._saved[1] is logging.LogRecord:
                    logging._srcfile = None
                    logging.setLogRecordFactory(_LeanRecord)
            cls._holders += 1

    @classmethod
    def release(cls) -> None:
        with cls._lock:
            cls._holders -= 1
            if cls._holders == 0:
                logging._srcfile = cls._saved[0]
                logging.setLogRecordFactory(cls._saved[1])
