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
"""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from shared.config import Settings

__all__ = ["MAX_HEAD_BYTES", "TimedH11Protocol", "serve", "server_config", "timed_protocol"]

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
    }
    values.update(options)
    return uvicorn.Config(app, **values)


def serve(app: Any, settings: Settings, *, host: str = "127.0.0.1", port: int = 8000, **options: Any) -> None:
    """Run ``app`` under uvicorn with the limits of ``settings`` until the process is stopped."""
    uvicorn.Server(server_config(app, settings, host=host, port=port, **options)).run()
