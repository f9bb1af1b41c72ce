"""Serve an app with uvicorn, with limits on slow clients that uvicorn alone does not have.

uvicorn (0.54) waits for a request head for as long as the client keeps the connection open: its keep-alive
timer runs only between requests and stops at the first byte, so a client sending one byte a second holds a
connection forever (slowloris). :func:`server_config` returns a ``uvicorn.Config`` whose HTTP/1.1 protocol
closes a connection whose request head is not complete ``API_HEAD_TIMEOUT_SECONDS`` after the connection opened
(or after the first byte of a later request on it). Slow bodies are the app's part: :class:`~shared.api.RequestLimits`
answers 408 to a body slower than ``API_BODY_MIN_BYTES_PER_SECOND`` after ``API_BODY_GRACE_SECONDS``.

The settings, and what each bounds:

============================== ======= ========================================================================
setting                        default what it bounds
============================== ======= ========================================================================
API_HEAD_TIMEOUT_SECONDS       10      time to send the request line and headers (then the connection closes)
API_BODY_GRACE_SECONDS         10      time a body may lag before its rate is enforced
API_BODY_MIN_BYTES_PER_SECOND  32768   slowest accepted upload rate (RequestLimits, 408 below it)
API_KEEP_ALIVE_SECONDS         5       idle time between two requests on one connection
API_MAX_CONNECTIONS            1000    open connections and tasks; past it uvicorn answers 503
(fixed)                        16 KiB  largest request head (h11_max_incomplete_event_size)
============================== ======= ========================================================================

Run: ``shared.api.server.serve(app, settings, host="0.0.0.0", port=8000)`` (the uvicorn CLI cannot take this
protocol class, so a module starts uvicorn from Python).

Several workers (``API_WORKERS``, or ``serve(..., workers=N)``; the app then given as an import string such as
``"examples.api:create_app"`` with ``factory=True``): one supervisor process binds the socket and starts N
worker processes that accept on it. uvicorn's own supervisor kills a worker that misses one 5 s health ping,
starting up included, so on a busy host a worker still importing its app was killed again and again and the
gateway served on one worker without a word. :class:`Supervisor` gives each new worker
``API_WORKER_STARTUP_GRACE_SECONDS`` (60) to become ready before the health ping applies, restarts a worker that
died (the others keep serving meanwhile) and logs every event (started, ready, died, restarted, killed) as JSON
lines through the same LOG_FILE and console as the workers.

Every access line (``uvicorn.access``) carries the route's ``job_id`` when the route has one
(``GET /jobs/{job_id}``), so "what happened to job X" is one search of the log.
"""

from __future__ import annotations

import asyncio
import logging
import os
import pickle
import time
from typing import Any, ClassVar

import h11
import uvicorn
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.config import STARTUP_FAILURE
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.supervisors.multiprocess import Multiprocess, Process

from shared.config import Settings
from shared.logging import LoggerFactory, job_context

__all__ = [
    "MAX_HEAD_BYTES",
    "AccessJobId",
    "ServerConfig",
    "Supervisor",
    "TimedH11Protocol",
    "serve",
    "server_config",
    "timed_protocol",
]

_log = logging.getLogger("shared.api.server")

MAX_HEAD_BYTES = 16 * 1024


class TimedH11Protocol(H11Protocol):
    """uvicorn's HTTP/1.1 protocol, closing a connection whose request head takes longer than ``head_timeout``."""

    head_timeout: ClassVar[float] = 10.0
    _head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]  # as uvicorn's own
        super().connection_made(transport)
        self._arm_head_timer()

    def data_received(self, data: bytes) -> None:
        if self._head_timer is None and self.conn.their_state is h11.IDLE:
            self._arm_head_timer()  # the first byte of a later request on a kept-alive connection
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE:
            self._cancel_head_timer()  # the head is complete: the body is RequestLimits' business

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        super().connection_lost(exc)

    def _arm_head_timer(self) -> None:
        self._cancel_head_timer()
        self._head_timer = self.loop.call_later(self.head_timeout, self._head_timed_out)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self.logger.info("closing a connection whose request head took longer than %g s", self.head_timeout)
            self.transport.close()


def timed_protocol(head_timeout: float) -> type[TimedH11Protocol]:
    """Return the protocol class with ``head_timeout`` seconds for each request head."""
    return type("TimedH11Protocol", (TimedH11Protocol,), {"head_timeout": head_timeout})


class AccessJobId:
    """Put the route's ``job_id`` path parameter on the log lines written while the response starts.

    uvicorn writes its access line when the app sends ``http.response.start``, in the app's context; the router
    has put ``path_params`` in the (shared) scope by then. Installed by :class:`ServerConfig` around every app.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_job(message: Message) -> None:
            job_id = scope.get("path_params", {}).get("job_id") if message["type"] == "http.response.start" else None
            if job_id is None:
                await send(message)
                return
            with job_context(job_id=str(job_id)):
                await send(message)

        await self.app(scope, receive, send_with_job)


class ServerConfig(uvicorn.Config):
    """uvicorn's Config that wraps the app in :class:`AccessJobId` and survives the trip to a worker process.

    The protocol class made for a head timeout (:func:`timed_protocol`) cannot be pickled by reference, so a
    worker process receives the timeout and makes the class again.
    """

    def load(self) -> None:
        """Load the app as uvicorn does, wrapped in :class:`AccessJobId`."""
        super().load()
        self.loaded_app = AccessJobId(self.loaded_app)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        http = state.get("http")
        if isinstance(http, type) and issubclass(http, TimedH11Protocol):
            state["http"] = ("timed", http.head_timeout)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        http = state.get("http")
        if isinstance(http, tuple) and http[0] == "timed":
            state["http"] = timed_protocol(http[1])
        self.__dict__.update(state)


def server_config(
    app: Any, settings: Settings, *, host: str = "127.0.0.1", port: int = 8000, **options: Any
) -> uvicorn.Config:
    """Return the uvicorn configuration for ``app`` with the limits of ``settings`` (``options`` win)."""
    values: dict[str, Any] = {
        "host": host,
        "port": port,
        "http": timed_protocol(settings.api_head_timeout_seconds),
        "ws": "none",
        "lifespan": "on",
        "timeout_keep_alive": max(1, round(settings.api_keep_alive_seconds)),
        "limit_concurrency": settings.api_max_connections,
        "h11_max_incomplete_event_size": MAX_HEAD_BYTES,
        "timeout_graceful_shutdown": max(1, round(settings.shutdown_timeout_seconds)),
        "server_header": False,
        "log_config": None,  # the container's JSON logging, not uvicorn's own
        "workers": settings.api_workers,
        "timeout_worker_healthcheck": max(1, round(settings.api_worker_healthcheck_seconds)),
    }
    values.update(options)
    return ServerConfig(app, **values)


class Supervisor(Multiprocess):
    """uvicorn's supervisor with a start-up grace for each worker, and its events in the log.

    A worker that has not yet answered "ready" is only checked for being alive until ``startup_grace`` seconds
    have passed since it started (a slow import is not a hung worker); after that, or once it is ready, the
    health ping of ``timeout_worker_healthcheck`` seconds applies, as in uvicorn. A worker that died or hung is
    replaced; the others serve meanwhile.
    """

    def __init__(self, config: uvicorn.Config, sockets: list[Any], *, startup_grace: float) -> None:
        super().__init__(config, sockets)
        self.startup_grace = startup_grace
        self._started_at: dict[int, float] = {}
        self._ready: set[int] = set()

    def _start(self, process: Process) -> Process:
        process.start()
        self._started_at[id(process)] = time.monotonic()
        _log.info("worker [%s] started", process.pid, extra={"worker_pid": process.pid})
        return process

    def init_processes(self) -> None:
        """Start the workers, each timed from its start for the grace period."""
        for _ in range(self.processes_num):
            self.processes.append(self._start(Process(self.config, self.sockets)))

    @staticmethod
    def _ping(process: Process, timeout: float) -> bool | None:
        """Return the worker's "started" flag, or None without an answer in ``timeout``; old answers skipped."""
        try:
            while process.parent_conn.poll(0):  # answers to pings that timed out earlier
                process.parent_conn.recv()
            process.parent_conn.send(b"ping")
            if process.parent_conn.poll(timeout):
                started: bool = process.parent_conn.recv()
                return started
        except (OSError, EOFError, pickle.UnpicklingError):
            return None
        return None

    def keep_subprocess_alive(self) -> None:
        """Replace each worker that died, or that is past its grace and does not answer the health ping."""
        if self.should_exit.is_set():
            return
        for index, process in enumerate(self.processes):
            key = id(process)
            # A worker uvicorn started itself (SIGHUP's restart_all, SIGTTIN) is timed from when first seen.
            age = time.monotonic() - self._started_at.setdefault(key, time.monotonic())
            if process.process.is_alive():
                if key in self._ready:
                    if self._ping(process, self.config.timeout_worker_healthcheck) is not None:
                        continue
                    why = f"did not answer the health check within {self.config.timeout_worker_healthcheck} s"
                else:
                    if self._ping(process, 0.2):
                        self._ready.add(key)
                        _log.info(
                            "worker [%s] ready after %.1f s",
                            process.pid,
                            age,
                            extra={"worker_pid": process.pid, "startup_seconds": round(age, 1)},
                        )
                        continue
                    if age < self.startup_grace:
                        continue
                    why = f"was not ready within the start-up grace of {self.startup_grace:g} s"
                _log.error("worker [%s] %s; killing it", process.pid, why, extra={"worker_pid": process.pid})
                process.kill()
            process.join()
            self._ready.discard(key)
            self._started_at.pop(key, None)
            if process.exitcode == STARTUP_FAILURE:
                _log.error(
                    "worker [%s] failed to start (the app, TLS or the socket is broken); stopping",
                    process.pid,
                    extra={"worker_pid": process.pid, "exit_code": process.exitcode},
                )
                self.should_exit.set()
                return
            if self.should_exit.is_set():
                return
            _log.warning(
                "worker [%s] died (exit code %s); starting another, the others keep serving",
                process.pid,
                process.exitcode,
                extra={"worker_pid": process.pid, "exit_code": process.exitcode},
            )
            self.processes[index] = self._start(Process(self.config, self.sockets))


def serve(
    app: Any,
    settings: Settings,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    workers: int | None = None,
    **options: Any,
) -> None:
    """Run ``app`` under uvicorn with the limits of ``settings`` until the process is stopped.

    Args:
        app: the ASGI app; with more than one worker, an import string (``"examples.api:create_app"``, with
            ``factory=True`` for a function that builds it), which each worker process imports.
        settings: the limits, ``API_WORKERS`` and the log settings.
        host: the address to listen on.
        port: the port to listen on.
        workers: worker processes (default ``API_WORKERS``); 1 serves in this process.
        options: uvicorn.Config arguments, which win over the settings.
    """
    config = server_config(app, settings, host=host, port=port, workers=workers or settings.api_workers, **options)
    if config.workers <= 1:
        uvicorn.Server(config).run()
        return
    if not isinstance(app, str):
        from shared.errors import ConfigError  # noqa: PLC0415 - only this path needs it

        raise ConfigError(
            "serving with more than one worker needs the app as an import string, such as "
            "'examples.api:create_app' with factory=True: each worker process imports it"
        )
    # The supervisor's own lines (workers started, ready, died) go where the workers' go, as JSON.
    logs = LoggerFactory(
        level=settings.log_level,
        secrets=settings.secret_values(),
        log_file=settings.log_file,
        max_bytes=settings.log_max_bytes,
        backup_count=settings.log_backup_count,
    ).start()
    try:
        _log.info(
            "supervisor [%s] serving on %s:%s with %d workers",
            os.getpid(),
            host,
            port,
            config.workers,
            extra={"workers": config.workers},
        )
        Supervisor(config, [config.bind_socket()], startup_grace=settings.api_worker_startup_grace_seconds).run()
    finally:
        logs.stop()
