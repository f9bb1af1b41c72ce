"""JSON logging: one object per line, job context, redaction, rotation, and never blocking the caller."""

from __future__ import annotations

import asyncio
import io
import logging
import sys
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
import pytest

from shared.logging import (
    REDACTED,
    JsonFormatter,
    LoggerFactory,
    Redactor,
    _LeanRecord,
    current_job_id,
    get_logger,
    job_context,
)


@pytest.fixture
def stream() -> io.StringIO:
    return io.StringIO()


@pytest.fixture
def factory(stream: io.StringIO) -> Iterator[LoggerFactory]:
    instance = LoggerFactory(level="DEBUG", secrets=["super-secret-service-key"], stream=stream, root="vgtest")
    instance.start()
    yield instance
    instance.stop()


def lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [orjson.loads(line) for line in stream.getvalue().splitlines()]


def test_each_record_is_one_json_object_with_the_standard_fields(factory: LoggerFactory, stream: io.StringIO) -> None:
    factory.get_logger("vgtest.unit").info("hello %s", "world", extra={"clip_index": 3})
    factory.stop()
    [line] = lines(stream)
    assert "hello world" == line["message"]
    assert "INFO" == line["level"]
    assert "vgtest.unit" == line["logger"]
    assert "test_logging" == line["module"]
    assert 3 == line["clip_index"]
    stamp = datetime.fromisoformat(str(line["timestamp"]))
    assert 0 == stamp.utcoffset().total_seconds()  # type: ignore[union-attr]  # aware by construction
    assert line["job_id"] is None  # present, null outside a job


async def test_job_context_reaches_lines_logged_in_tasks_started_inside(
    factory: LoggerFactory, stream: io.StringIO
) -> None:
    log = factory.get_logger("vgtest.ctx")

    async def stage_work() -> None:
        await asyncio.sleep(0)
        log.info("inside task")

    with job_context(job_id="job-1", stage="clip_generation"):
        assert "job-1" == current_job_id()
        task = asyncio.create_task(stage_work())
    await task
    log.info("outside")
    factory.stop()
    inside, outside = lines(stream)
    assert ("job-1", "clip_generation") == (inside["job_id"], inside["stage"])
    assert outside["job_id"] is None
    assert current_job_id() is None


def test_nested_job_context_restores_the_outer_one() -> None:
    with job_context(job_id="outer"):
        with job_context(job_id="inner", stage="s"):
            assert "inner" == current_job_id()
        assert "outer" == current_job_id()


def test_secrets_and_credential_shapes_are_redacted_in_message_and_extras(
    factory: LoggerFactory, stream: io.StringIO
) -> None:
    jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjMifQ.abcdefghijk"
    factory.get_logger("vgtest.redact").warning(
        "calling with super-secret-service-key and sk-proj-abcdefgh12345678",
        extra={
            "headers": {"Authorization": "Bearer abc.def.ghijklmnop"},
            "token": jwt,
            "replicate": "r8_ABCDEFGH12345678",
            "dsn": "postgresql://postgres:pg-password@db.example.com:5432/postgres",
            "signed": "https://x.supabase.co/storage/v1/object/sign/b/p.mp4?token=abcdef123456",
        },
    )
    factory.stop()
    raw = stream.getvalue()
    for secret in (
        "super-secret-service-key",
        "sk-proj-abcdefgh12345678",
        "abc.def.ghijklmnop",
        jwt,
        "r8_ABCDEFGH12345678",
        "pg-password",
        "abcdef123456",
    ):
        assert secret not in raw
    [line] = lines(stream)
    assert REDACTED in str(line["message"])
    assert "db.example.com" in str(line["dsn"])


def test_redactor_catches_a_secret_with_json_escaped_characters() -> None:
    secret = 'pa"ss\\word-123'
    redact = Redactor([secret])
    line = orjson.dumps({"m": f"x {secret} y"}).decode()
    assert secret not in redact(line)
    assert orjson.dumps(secret).decode()[1:-1] not in redact(line)


def test_exceptions_carry_their_traceback(factory: LoggerFactory, stream: io.StringIO) -> None:
    log = factory.get_logger("vgtest.exc")
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        log.exception("stage failed")
    factory.stop()
    [line] = lines(stream)
    assert "Traceback" in str(line["exception"])
    assert "RuntimeError: boom" in str(line["exception"])


def test_level_filters_records(stream: io.StringIO) -> None:
    factory = LoggerFactory(level="WARNING", stream=stream, root="vgtest.level")
    factory.start()
    log = factory.get_logger("vgtest.level.x")
    log.info("dropped")
    log.warning("kept")
    factory.stop()
    assert ["kept"] == [line["message"] for line in lines(stream)]


def test_stop_flushes_everything_to_the_file_and_is_idempotent(tmp_path: Path) -> None:
    path = tmp_path / "logs" / "app.jsonl"
    factory = LoggerFactory(level="INFO", stream=None, log_file=path, root="vgtest.file")
    factory.start()
    log = factory.get_logger("vgtest.file")
    for i in range(500):
        log.info("line %d", i)
    factory.stop()
    factory.stop()
    assert not factory.running
    assert 500 == len(path.read_text().splitlines())


def test_the_file_is_reopened_after_an_external_rotation(tmp_path: Path) -> None:
    path = tmp_path / "app.jsonl"
    factory = LoggerFactory(level="INFO", stream=None, log_file=path, root="vgrot")
    factory.start()
    log = factory.get_logger("vgrot")
    log.info("before")
    factory.stop()
    path.rename(tmp_path / "app.jsonl.1")
    factory.start()
    log.info("after")
    factory.stop()
    assert ["before"] == [
        orjson.loads(line)["message"] for line in (tmp_path / "app.jsonl.1").read_bytes().splitlines()
    ]
    assert ["after"] == [orjson.loads(line)["message"] for line in path.read_bytes().splitlines()]


def test_every_line_has_job_id_null_outside_a_job(factory: LoggerFactory, stream: io.StringIO) -> None:
    log = get_logger("vgtest.jobid")
    log.info("outside")
    with job_context(job_id="j-1"):
        log.info("inside")
    factory.stop()
    assert [None, "j-1"] == [line["job_id"] for line in lines(stream)]


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def _log_here(log: logging.Logger) -> int:
    log.info("from a helper")
    return sys._getframe().f_lineno - 1


def test_lean_records_name_the_caller_as_the_standard_library_does(stream: io.StringIO) -> None:
    """The default's cheaper caller lookup gives the same module, function and line as findCaller."""
    found = []
    for lean in (True, False):
        capture = io.StringIO()
        factory = LoggerFactory(level="INFO", stream=capture, root="vglean", lean=lean).start()
        handler = _Capture()
        records = handler.records
        logging.getLogger("vglean").addHandler(handler)
        line = _log_here(get_logger("vglean.x"))
        try:
            raise ValueError("boom")
        except ValueError:
            get_logger("vglean.x").exception("failed")
        logging.getLogger("vglean").removeHandler(handler)
        factory.stop()
        first, second = records
        found.append((first.module, first.funcName, first.lineno, second.funcName, second.filename))
        assert [lean, lean] == [isinstance(r, _LeanRecord) for r in records]
        assert "test_logging" == orjson.loads(capture.getvalue().splitlines()[0])["module"]
        assert line == first.lineno
    assert found[0] == found[1]


def test_lean_records_are_undone_when_the_last_factory_stops() -> None:
    before = (logging.getLogRecordFactory(), logging._srcfile)
    first = LoggerFactory(stream=None, root="vglean.a").start()
    second = LoggerFactory(stream=None, root="vglean.b").start()
    first.stop()
    assert logging.getLogRecordFactory() is _LeanRecord
    second.stop()
    assert before == (logging.getLogRecordFactory(), logging._srcfile)


def test_a_record_factory_someone_else_installed_is_kept() -> None:
    original = logging.getLogRecordFactory()

    def custom(*args: Any, **kwargs: Any) -> logging.LogRecord:
        return logging.LogRecord(*args, **kwargs)

    logging.setLogRecordFactory(custom)
    try:
        factory = LoggerFactory(stream=None, root="vglean.c").start()
        assert custom is logging.getLogRecordFactory()
        factory.stop()
        assert custom is logging.getLogRecordFactory()
    finally:
        logging.setLogRecordFactory(original)


def test_get_logger_is_the_standard_logger_of_that_name() -> None:
    assert logging.getLogger("vgtest.named") is get_logger("vgtest.named")


def test_a_slow_handler_never_blocks_the_caller(stream: io.StringIO) -> None:
    """The caller only enqueues: writes happen on the listener thread."""
    release = threading.Event()
    writer_threads: set[str] = set()

    class SlowStream(io.StringIO):
        def write(self, s: str) -> int:
            writer_threads.add(threading.current_thread().name)
            release.wait(5)
            return super().write(s)

    slow = SlowStream()
    factory = LoggerFactory(level="INFO", stream=slow, root="vgslow")
    factory.start()
    started = time.perf_counter()
    for i in range(50):
        factory.get_logger("vgslow").info("line %d", i)
    elapsed = time.perf_counter() - started
    release.set()
    factory.stop()
    assert threading.current_thread().name not in writer_threads
    assert 50 == len(slow.getvalue().splitlines())
    assert elapsed < 5  # a blocking write would have held the caller for the 5 s wait


def test_unknown_types_in_extras_are_serialised_as_text(factory: LoggerFactory, stream: io.StringIO) -> None:
    factory.get_logger("vgtest.types").info("x", extra={"path": Path("/tmp/a"), "tags": {"a"}, "pair": (1, 2)})
    factory.stop()
    [line] = lines(stream)
    assert ("/tmp/a", ["a"], [1, 2]) == (line["path"], line["tags"], line["pair"])


def test_formatter_can_be_used_without_the_queue() -> None:
    record = logging.LogRecord("direct", logging.INFO, __file__, 1, "plain %d", (1,), None)
    line = orjson.loads(JsonFormatter().format(record))
    assert "plain 1" == line["message"]


def test_a_lone_surrogate_is_escaped_not_fatal(factory: LoggerFactory, stream: io.StringIO) -> None:
    """One surrogate in the message, an extra or an exception used to drop the whole line (ERROR lines too)."""
    bad = b"caf\xe9".decode("utf-8", "surrogateescape")
    log = factory.get_logger("vgtest.surrogate")
    try:
        raise ValueError(bad)
    except ValueError:
        log.exception("file %s failed", bad, extra={"path": bad, "nested": {bad: [bad]}})
    factory.stop()
    [line] = lines(stream)
    assert "file caf\\udce9 failed" == line["message"]
    assert "caf\\udce9" == line["path"]
    assert {"caf\\udce9": ["caf\\udce9"]} == line["nested"]
    assert "ValueError: caf\\udce9" in str(line["exception"])
    assert "ERROR" == line["level"]


@pytest.mark.parametrize(
    "hostile",
    ["eyJ-" * 10_000, "eyJa." * 8_000, "sk-" * 13_000, "Bearer " * 6_000, "?token=" * 6_000, "://a:" * 8_000],
)
def test_hostile_text_is_left_alone_and_a_token_after_it_still_redacted(hostile: str) -> None:
    """40 KB shaped to make a backtracking pattern quadratic (the JWT one took 2 s): benchmarks/bench_logging.py
    times it; here the result must be right."""
    jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjMifQ.abcdefghijk"
    redacted = Redactor()(f"{hostile} {jwt}")
    assert jwt not in redacted
    assert redacted.endswith(f" {REDACTED}")


def test_size_rotation_keeps_backup_count_files_each_under_max_bytes(tmp_path: Path) -> None:
    path = tmp_path / "app.jsonl"
    factory = LoggerFactory(level="INFO", stream=None, log_file=path, root="vgsize", max_bytes=20_000, backup_count=3)
    factory.start()
    log = factory.get_logger("vgsize")
    for i in range(2_000):
        log.info("line %d", i, extra={"index": i})
        if i % 100 == 0:
            factory.stop()  # a batch of at most 100 lines each, so the file rotates many times
            factory.start()
    factory.stop()
    files = [path, *(tmp_path / f"app.jsonl.{n}" for n in (1, 2, 3))]
    assert not (tmp_path / "app.jsonl.4").exists()
    assert all(file.stat().st_size <= 20_000 for file in files)
    indexes = [orjson.loads(line)["index"] for file in reversed(files) for line in file.read_bytes().splitlines()]
    assert indexes == sorted(indexes)  # the newest lines are in app.jsonl, the oldest kept in app.jsonl.3
    assert 1_999 == indexes[-1]


def test_a_failing_console_is_reported_once(capsys: pytest.CaptureFixture[str]) -> None:
    broken = io.StringIO()
    broken.close()
    factory = LoggerFactory(level="INFO", stream=broken, root="vgbroken")
    factory.start()
    log = factory.get_logger("vgbroken")
    for i in range(50):
        log.info("line %d", i)
        if i % 10 == 0:
            time.sleep(0.01)
    factory.stop()
    assert 1 == capsys.readouterr().err.count("writing log lines to the console failed")
