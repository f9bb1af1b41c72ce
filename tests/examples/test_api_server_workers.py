"""Two gateway workers under shared.api.server's Supervisor, on a loaded host, with a slow start.

Observed before: uvicorn's supervisor killed the second worker 58 times in an 8-minute soak (it missed one 5 s
health ping while still importing on a busy host), said nothing (``log_config=None``), and the gateway served on
one worker; 122 requests went unanswered when that one was restarted. Here each worker takes 3 s to import before
it can answer a ping (the health check allows 1 s), two processes keep the CPUs busy, and one worker is killed.
"""

from __future__ import annotations

import http.client
import multiprocessing
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from tests.fixtures.servers import free_port

# Imported by the launcher and so by every worker's spawn bootstrap (as __mp_main__'s import), before uvicorn's
# ping thread runs: the part of a worker's start that uvicorn's own supervisor counted as a hang.
SLOW_DEPENDENCY = "import time\ntime.sleep(3)\n"

APP = """
import os
from pathlib import Path
from fastapi import FastAPI
from shared.logging import LoggerFactory

# The workers log as a module's container would (its logger_factory Resource).
LoggerFactory(level="INFO", stream=None, log_file=Path(os.environ["LOG_FILE"])).start()
app = FastAPI()


@app.get("/jobs/{job_id}")
async def job(job_id: str) -> dict[str, int]:
    return {"pid": os.getpid()}
"""

LAUNCHER = """
import sys
import vg_slow_dependency  # noqa: F401 - the slow start
from shared.api.server import serve
from shared.config import Settings

if __name__ == "__main__":
    serve("vg_workers_app:app", Settings(_env_file=None), port=int(sys.argv[1]), workers=2)
"""


def _burn() -> None:  # pragma: no cover - runs in a child process
    while True:
        pass


@pytest.fixture
def loaded_host() -> Iterator[None]:
    """Keep both CPUs busy for the test."""
    burners = [multiprocessing.get_context("spawn").Process(target=_burn, daemon=True) for _ in range(2)]
    for burner in burners:
        burner.start()
    try:
        yield
    finally:
        for burner in burners:
            burner.kill()
            burner.join()


def _get(port: int, path: str) -> int | None:
    """Return the pid of the worker that answered, or None when nobody did."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        connection.request("GET", path)
        answer = connection.getresponse()
        return int(orjson.loads(answer.read())["pid"]) if answer.status == 200 else None
    except OSError:
        return None
    finally:
        connection.close()


def _pids_serving(port: int, path: str, *, want: int, timeout: float, exclude: set[int] = frozenset()) -> set[int]:  # type: ignore[assignment]  # a frozenset default is a set for reading
    """Return the worker pids seen answering until ``want`` of them (not in ``exclude``) or the timeout."""
    seen: set[int] = set()
    deadline = time.monotonic() + timeout
    while len(seen - exclude) < want and time.monotonic() < deadline:
        pid = _get(port, path)
        if pid is not None:
            seen.add(pid)
        else:
            time.sleep(0.1)
    return seen - exclude


@pytest.mark.usefixtures("loaded_host")
def test_two_workers_start_slowly_serve_and_survive_one_being_killed(tmp_path: Path) -> None:
    (tmp_path / "vg_slow_dependency.py").write_text(SLOW_DEPENDENCY)
    (tmp_path / "vg_workers_app.py").write_text(APP)
    (tmp_path / "launcher.py").write_text(LAUNCHER)
    log_file = tmp_path / "gateway.jsonl"
    port = free_port()
    env = {
        **os.environ,
        "PYTHONPATH": str(tmp_path),
        "LOG_FILE": str(log_file),
        "LOG_CONSOLE": "false",
        "API_WORKER_HEALTHCHECK_SECONDS": "1",
        "API_WORKER_STARTUP_GRACE_SECONDS": "60",
    }
    supervisor = subprocess.Popen([sys.executable, str(tmp_path / "launcher.py"), str(port)], env=env, cwd=tmp_path)
    job_id = str(uuid.uuid4())
    path = f"/jobs/{job_id}"
    try:
        workers = _pids_serving(port, path, want=2, timeout=60)
        assert 2 == len(workers), "both workers serve within the grace"

        victim = min(workers)
        os.kill(victim, signal.SIGKILL)
        answered = [_get(port, path) for _ in range(50)]
        assert None not in answered, "the other worker kept serving while one was restarted"
        assert victim not in answered

        replacement = _pids_serving(port, path, want=1, timeout=60, exclude=workers)
        assert 1 == len(replacement), "a new worker took the killed one's place"
    finally:
        supervisor.send_signal(signal.SIGTERM)
        supervisor.wait(timeout=30)

    entries = [orjson.loads(line) for line in log_file.read_bytes().splitlines()]  # every line is JSON
    supervisor_lines = [entry["message"] for entry in entries if entry["logger"] == "shared.api.server"]
    assert 3 == sum("started" in line and line.startswith("worker") for line in supervisor_lines)
    assert any(f"worker [{victim}] died" in line for line in supervisor_lines)
    assert not any("killing it" in line for line in supervisor_lines), "no worker was killed for a slow start"
    access = [entry for entry in entries if entry["logger"] == "uvicorn.access"]
    assert access
    assert all(job_id == entry["job_id"] for entry in access)
