"""Bound what one request may cost the server while its body streams in: its size and its slowness.

:class:`RequestLimits` is a pure ASGI middleware (``app.add_middleware(RequestLimits, ...)``):

- A ``Content-Length`` above ``max_body_bytes`` is answered 413 before a byte of the body is read; a body
  without one (chunked) is counted as it arrives and refused the moment it passes the limit. So an upload never
  spools more than the limit to the temporary folder, whatever size it claims or turns out to have.
- A body that arrives slower than ``min_bytes_per_second`` is answered 408 once the time spent waiting for it
  passes ``grace_seconds`` plus the time its bytes so far would take at that rate. Only the time spent waiting
  for the client counts: a slow handler is not the client's fault.

Both answers carry ``Connection: close``, so the server drops the connection instead of reading the rest; so
does any answer the app gives before it has read the whole body (a 401 before the upload is read). Slow
request *heads* (slowloris) never reach the app; :mod:`shared.api.server` bounds them in the server.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared.api.errors import PayloadTooLargeError, RequestTimeoutError, error_response
from shared.errors import PipelineError

__all__ = ["RequestLimits"]


def _declared_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def _may_have_body(scope: Scope) -> bool:
    """Return whether the request announced a body (a length above 0, or chunked transfer)."""
    for name, value in scope.get("headers", ()):
        if name == b"transfer-encoding" or (name == b"content-length" and value.strip() not in {b"0", b""}):
            return True
    return False


class RequestLimits:
    """Refuse request bodies that are too large (413) or too slow (408), while they stream."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        max_body_bytes: int,
        min_bytes_per_second: int = 32 * 1024,
        grace_seconds: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.min_bytes_per_second = min_bytes_per_second
        self.grace_seconds = grace_seconds
        self._clock = clock

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _declared_length(scope)
        if declared is not None and declared > self.max_body_bytes:
            await error_response(PayloadTooLargeError(limit=self.max_body_bytes))(scope, receive, send)
            return
        await _Guard(self, scope, receive, send).run()


class _Guard:
    """One request under the limits: counts what arrives and replaces the answer when it refused the body."""

    def __init__(self, limits: RequestLimits, scope: Scope, receive: Receive, send: Send) -> None:
        self.limits = limits
        self.scope = scope
        self.receive = receive
        self.send = send
        self.received = 0
        self.waited = 0.0
        self.refused: PipelineError | None = None
        self.answered = False
        self.started = False
        self.body_complete = False

    async def run(self) -> None:
        try:
            await self.limits.app(self.scope, self.guarded_receive, self.guarded_send)
        except PipelineError as error:
            if error is not self.refused:
                raise
        if self.refused is not None and not self.answered and not self.started:
            await self._answer()

    async def guarded_receive(self) -> Message:
        if self.refused is not None:
            raise self.refused
        limits = self.limits
        allowed = limits.grace_seconds + self.received / limits.min_bytes_per_second - self.waited
        started = limits._clock()
        try:
            async with asyncio.timeout(max(allowed, 0.0)):
                message = await self.receive()
        except TimeoutError:
            self.refused = RequestTimeoutError(
                f"The request body arrived slower than {limits.min_bytes_per_second} bytes/s; "
                "send it again on a faster connection"
            )
            raise self.refused from None
        finally:
            self.waited += limits._clock() - started
        if message["type"] == "http.request":
            self.body_complete = not message.get("more_body", False)
            self.received += len(message.get("body", b""))
            if self.received > limits.max_body_bytes:
                self.refused = PayloadTooLargeError(limit=limits.max_body_bytes)
                raise self.refused
        return message

    async def guarded_send(self, message: Message) -> None:
        if self.refused is not None and not self.started:
            # Whatever the app made of the refused body (a 400 "error parsing the body", a 500), the answer is ours.
            if not self.answered:
                await self._answer()
            return
        if message["type"] == "http.response.start":
            self.started = True
            if not self.body_complete and _may_have_body(self.scope):
                # Answered before the body was read (401, a refused form): the rest of it is not wanted, and a
                # client still dripping it must not keep the connection, so the server closes after the answer.
                message = {**message, "headers": [*message.get("headers", []), (b"connection", b"close")]}
        await self.send(message)

    async def _answer(self) -> None:
        assert self.refused is not None  # noqa: S101 - only called once a body was refused
        self.answered = True
        response = error_response(self.refused)

        async def no_body() -> dict[str, Any]:
            return {"type": "http.disconnect"}

        await response(self.scope, no_body, self.send)
