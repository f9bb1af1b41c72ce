"""`python -m shared maintain --every N`: one long-running process, stopped by SIGTERM between runs."""

from __future__ import annotations

import io
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import asyncpg
import pytest

from shared.cli import main
from shared.database import DatabaseClient
from shared.jobs import JobRepository
from shared.testing.databases import run_sync
from tests.fixtures.postgres import MakeUser
from tests.integration.test_maintenance import age_job, processing_job, reservation

ROOT = Path(__file__).resolve().parents[2]


class Maintainer:
    """The command in a process of its own, its output lines read as they come."""

    def __init__(self, dsn: str, every: str) -> None:
        env = {**os.environ, "DATABASE_URL": dsn, "ENVIRONMENT": "development", "PYTHONUNBUFFERED": "1"}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "shared", "maintain", "--every", every],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []
        self._queue: queue.Queue[str] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._queue.put(line.rstrip("\n"))

    def wait_for(self, prefix: str, timeout: float = 60) -> str:
        """Return the next line starting with ``prefix`` (keeping every line read in ``lines``)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self._queue.get(timeout=0.1)
            except queue.Empty:
                continue
            self.lines.append(line)
            if line.startswith(prefix):
                return line
        pytest.fail(f"no line starting with {prefix!r} within {timeout} s; output: {self.lines}")

    def close(self) -> None:
        """Kill it if it still runs, and close its pipe once the reader has drained it."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        self._reader.join(timeout=10)
        assert self.process.stdout is not None
        self.process.stdout.close()

    def stop(self) -> int:
        """SIGTERM it by its pid and return its exit status."""
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=30)


StartMaintainer = Callable[[str], Maintainer]


@pytest.fixture
def start(pg_dsn: str) -> Iterator[StartMaintainer]:
    started: list[Maintainer] = []

    def make(every: str) -> Maintainer:
        maintainer = Maintainer(pg_dsn, every)
        started.append(maintainer)
        return maintainer

    yield make
    for maintainer in started:
        maintainer.close()


def test_it_runs_again_and_again_and_sigterm_stops_it(start: StartMaintainer) -> None:
    maintainer = start("0.1")
    for number in (1, 2, 3):
        assert "released 0 expired reservation(s)" in maintainer.wait_for(f"run {number}:")

    assert 0 == maintainer.stop()
    maintainer.wait_for("stopped after")
    assert not any("Traceback" in line for line in maintainer.lines)


async def test_sigterm_during_a_run_lets_the_run_finish_first(start: StartMaintainer, pg_dsn: str) -> None:
    holder = await asyncpg.connect(pg_dsn)
    try:
        transaction = holder.transaction()
        await transaction.start()
        await holder.execute("lock table jobs in access exclusive mode")
        maintainer = start("60")
        maintainer.wait_for("maintenance every 60 s")
        while not await holder.fetchval(
            "select exists (select from pg_stat_activity"
            " where wait_event_type = 'Lock' and datname = current_database())"
        ):
            time.sleep(0.02)
        maintainer.process.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        assert maintainer.process.poll() is None, "stopped in the middle of a run"
        await transaction.commit()
    finally:
        await holder.close()

    maintainer.wait_for("run 1:")
    assert "stopped after 1 run(s)" == maintainer.wait_for("stopped")
    assert 0 == maintainer.process.wait(timeout=30)


async def test_a_failed_run_is_reported_and_the_next_one_still_runs(start: StartMaintainer, pg_dsn: str) -> None:
    connection = await asyncpg.connect(pg_dsn)
    try:
        await connection.execute("alter table job_cost_reservations rename to hidden_reservations")
        maintainer = start("0.1")
        assert "job_cost_reservations" in maintainer.wait_for("run 1 failed:")
        maintainer.wait_for("run 2 failed:")
        await connection.execute("alter table hidden_reservations rename to job_cost_reservations")
        maintainer.wait_for("run ")  # whichever run started before the rename
        assert "released 0 expired reservation(s)" in maintainer.wait_for("run ", timeout=30).split(": ", 1)[1]
    finally:
        await connection.close()
    assert 0 == maintainer.stop()
    maintainer.wait_for("stopped after")


@pytest.mark.parametrize("every", ["0", "-1", "soon", "inf", "nan"])
def test_every_must_be_a_positive_number_of_seconds(every: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["maintain", "--every", every], out=io.StringIO())
    assert 2 == exit_info.value.code
    assert f"--every: expected a positive number of seconds, got '{every}'" in capsys.readouterr().err


def test_in_process_a_failed_run_is_logged_and_sigterm_ends_the_loop(
    pg_dsn: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The same loop in this process: the rename makes runs fail, renaming back lets them succeed, then SIGTERM."""
    monkeypatch.setenv("DATABASE_URL", pg_dsn)
    monkeypatch.setenv("ENVIRONMENT", "development")
    monkeypatch.setenv("LOG_CONSOLE", "true")  # the command's JSON lines on stderr, read below
    out = io.StringIO()
    run_sync(_execute(pg_dsn, "alter table job_cost_reservations rename to hidden_reservations"))

    def drive() -> None:
        # No signal is sent before the loop prints its runs, so the loop's handler is installed by then.
        _wait_for_text(out, "run 1 failed:")
        run_sync(_execute(pg_dsn, "alter table hidden_reservations rename to job_cost_reservations"))
        _wait_for_text(out, "expired reservation(s)")
        os.kill(os.getpid(), signal.SIGTERM)

    driver = threading.Thread(target=drive)
    driver.start()
    status = main(["maintain", "--every", "0.05"], out=out)
    driver.join(timeout=60)

    assert 0 == status, out.getvalue()
    assert out.getvalue().rstrip().splitlines()[-1].startswith("stopped after")
    logged = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.startswith("{")]
    (failed,) = [line for line in logged if line["message"].startswith("maintenance run 1 failed")]
    assert ("ERROR", "shared.cli") == (failed["level"], failed["logger"])
    assert "UndefinedTableError" in failed["exception"]


def _wait_for_text(out: io.StringIO, text: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while text not in out.getvalue():
        if time.monotonic() > deadline:
            if "maintenance every" in out.getvalue() and "stopped after" not in out.getvalue():
                os.kill(os.getpid(), signal.SIGTERM)  # the loop's handler is in place: end it, so the test fails
            pytest.fail(f"{text!r} not printed within {timeout} s: {out.getvalue()}")
        time.sleep(0.02)


async def _execute(dsn: str, statement: str) -> None:
    connection = await asyncpg.connect(dsn)
    try:
        await connection.execute(statement)
    finally:
        await connection.close()


async def test_the_ids_it_acted_on_reach_the_json_log_file(
    db: DatabaseClient, jobs: JobRepository, make_user: MakeUser, pg_dsn: str, tmp_path: Path
) -> None:
    """The command as cron or a container runs it: its lines (with the ids) are in LOG_FILE, not lost."""
    held = await processing_job(jobs, make_user)
    expired = await reservation(db, held, expired=timedelta(hours=1))
    silent = await processing_job(jobs, make_user)
    await age_job(db, silent, timedelta(hours=1))
    log_file = tmp_path / "maintain.jsonl"
    env = {
        **os.environ,
        "DATABASE_URL": pg_dsn,
        "ENVIRONMENT": "development",
        "LOG_FILE": str(log_file),
        "LOG_CONSOLE": "false",
    }
    done = subprocess.run(
        [sys.executable, "-m", "shared", "maintain"],
        check=False,
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert 0 == done.returncode, done.stdout + done.stderr
    assert "released 1 expired reservation(s)" in done.stdout
    lines = [json.loads(line) for line in log_file.read_text().splitlines()]
    failed = [line for line in lines if line.get("job_ids") == [str(silent)]]
    released = [line for line in lines if line.get("reservation_ids") == [str(expired)]]
    assert ["WARNING"] == [line["level"] for line in failed]
    assert [[str(held)]] == [line["job_ids"] for line in released]
    assert 1 == sum("maintenance: failed" in line["message"] for line in lines)
