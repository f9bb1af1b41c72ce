"""Keep ``KILL_WORKERS`` stage workers alive, forked from one pre-imported process, and SIGKILL some of them.

``python -m tests.integration.stage_kill_supervisor`` (the kill test starts it with the worker's environment).
A worker started as ``python -m shared worker`` spends seconds importing on a loaded machine; forked from here
it only opens its pool, so hundreds of kills fit in a test. Each worker runs
:mod:`tests.integration.stage_kill_module` with the engine's own await points wrapped so that the module's plan
can kill there too: ``claimed`` (the item is held, its handler not started), ``completing`` (the handler
returned, the completion not sent) and ``completed`` (the completion committed, the delivery not acknowledged).

Besides the planned kills, ``KILL_EXTERNAL`` workers are SIGKILLed at random moments, about every
``KILL_EXTERNAL_EVERY`` seconds, wherever they are. On SIGTERM the workers drain and stop, and a summary of every
worker's end is written to ``KILL_SUMMARY`` as JSON.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import shared.container
import shared.lifecycle
from shared.config import Settings
from shared.stages import StageContext, StageWorker, _Handler, run_worker
from tests.integration.stage_kill_module import kill_point

TARGET = "tests.integration.stage_kill_module"
PRELOADED = (shared.container, shared.lifecycle)  # what run_worker imports, paid once here and not per worker
_attempt = StageWorker._attempt
_complete = StageWorker._complete


async def _planned_attempt(self: StageWorker, spec: _Handler, ctx: StageContext, max_attempts: int) -> None:
    kill_point(ctx.item, "claimed")
    await _attempt(self, spec, ctx, max_attempts)


async def _planned_complete(self: StageWorker, ctx: StageContext, result: Mapping[str, Any] | None) -> None:
    kill_point(ctx.item, "completing")
    await _complete(self, ctx, result)
    kill_point(ctx.item, "completed")


def _worker(concurrency: int) -> None:
    """The child: a stage worker until SIGTERM (or a SIGKILL)."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    random.seed()
    StageWorker._attempt = _planned_attempt  # type: ignore[method-assign]
    StageWorker._complete = _planned_complete  # type: ignore[method-assign]
    code = 0
    try:
        asyncio.run(run_worker(Settings(), TARGET, concurrency=concurrency))
    except BaseException:
        import traceback  # noqa: PLC0415

        with open(f"{os.environ['KILL_SUMMARY']}.{os.getpid()}.error", "w", encoding="utf-8") as out:
            traceback.print_exc(file=out)  # read into the summary: stderr may be the logs' stream
        code = 1
    sys.stderr.flush()
    os._exit(code)


def main() -> None:
    workers = int(os.environ.get("KILL_WORKERS", "3"))
    concurrency = int(os.environ.get("KILL_CONCURRENCY", "4"))
    external = int(os.environ.get("KILL_EXTERNAL", "0"))
    every = float(os.environ.get("KILL_EXTERNAL_EVERY", "1"))
    stopping: list[int] = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(1))
    children: set[int] = set()
    summary: dict[str, Any] = {"spawned": 0, "sigkilled": 0, "external": 0, "other_exits": []}

    def spawn() -> None:
        pid = os.fork()
        if pid == 0:
            _worker(concurrency)
        children.add(pid)
        summary["spawned"] += 1

    for _ in range(workers):
        spawn()
    next_external = time.monotonic() + random.uniform(0.5, 1.5) * every
    while not stopping:
        pid, status = os.waitpid(-1, os.WNOHANG) if children else (0, 0)
        if pid:
            children.discard(pid)
            if os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL:
                summary["sigkilled"] += 1
            else:  # it stopped on an error (PostgreSQL out of connections, say): not at once again
                summary["other_exits"].append(status)
                time.sleep(0.5)
            spawn()
            continue
        if summary["external"] < external and time.monotonic() >= next_external and children:
            os.kill(random.choice(sorted(children)), signal.SIGKILL)
            summary["external"] += 1
            next_external = time.monotonic() + random.uniform(0.5, 1.5) * every
        time.sleep(0.01)
    for pid in children:
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 30
    while children and time.monotonic() < deadline:
        pid, status = os.waitpid(-1, os.WNOHANG)
        if pid:
            children.discard(pid)
            if os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL:
                summary["sigkilled"] += 1
            elif status != 0:
                summary["other_exits"].append(status)
        else:
            time.sleep(0.05)
    for pid in children:  # did not drain in time: reported, then stopped
        summary["other_exits"].append("no drain")
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    errors = sorted(Path(os.environ["KILL_SUMMARY"]).parent.glob(Path(os.environ["KILL_SUMMARY"]).name + ".*.error"))
    summary["errors"] = [error.read_text()[-2000:] for error in errors]
    with open(os.environ["KILL_SUMMARY"], "w", encoding="utf-8") as out:
        json.dump(summary, out)


if __name__ == "__main__":
    main()
