"""A fault-injecting HTTP/1.1 proxy in front of a real server: it records every request and, when told,
answers a status of its own (5xx, 429 with Retry-After), drops the connection before answering, in the
middle of the request body (after passing some of it on) or of the response body, or sends the body slowly.
It counts the request-body bytes it passes on, so a test can tell what a client sent again.

One request per client connection (the proxy answers ``Connection: close``), so it never has to parse a
request body: the client's bytes are piped to the upstream as they come, whatever their framing. The
client's ``Host`` header is kept for a plain-HTTP upstream, so the gateway's TUS ``Location`` URLs point back
through the proxy. An ``https://`` upstream is reached over TLS with its own Host.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from dataclasses import dataclass, field
from types import TracebackType
from typing import Literal
from urllib.parse import urlsplit

__all__ = ["Fault", "FaultProxy", "Recorded"]

FaultKind = Literal["status", "drop", "drop_mid_body", "drop_mid_request", "drop_answer", "slow_body"]


@dataclass
class Fault:
    """What to do to the next ``times`` requests that match ``method`` and ``path_contains``, after ``skip``.

    ``drop_answer`` passes the whole request on and cuts the connection instead of relaying the answer.
    """

    kind: FaultKind
    method: str | None = None
    path_contains: str | None = None
    times: int = 1
    skip: int = 0  # matching requests let through untouched first
    status: int = 503
    retry_after: str | None = None
    body: bytes = b""
    content_type: str = "text/plain"
    after_bytes: int = 0  # drop_mid_body / drop_mid_request: body bytes passed on before the connection is cut
    piece: int = 4096  # slow_body: bytes per write
    delay: float = 0.05  # slow_body: seconds between writes

    def matches(self, method: str, path: str) -> bool:
        return (
            self.times > 0
            and (self.method is None or self.method == method)
            and (self.path_contains is None or self.path_contains in path)
        )


@dataclass
class Recorded:
    """One request as the proxy saw it (header names lower-cased), and the fault it met, if any."""

    method: str
    path: str
    headers: dict[str, str]
    fault: FaultKind | None = None
    status: int | None = None
    body_bytes: int = 0  # request-body bytes passed on to the upstream


@dataclass
class FaultProxy:
    """``async with FaultProxy("http://127.0.0.1:5054") as proxy``: clients call ``proxy.url`` instead."""

    upstream: str
    faults: list[Fault] = field(default_factory=list)
    requests: list[Recorded] = field(default_factory=list)
    _server: asyncio.Server | None = None
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    def __post_init__(self) -> None:
        parts = urlsplit(self.upstream)
        self._tls = parts.scheme == "https"
        self._host = parts.hostname or "127.0.0.1"
        self._port = parts.port or (443 if self._tls else 80)

    @property
    def url(self) -> str:
        assert self._server is not None
        port = self._server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    def add(self, fault: Fault) -> Fault:
        self.faults.append(fault)
        return fault

    def count(self, method: str | None = None, path_contains: str = "") -> int:
        """Requests seen so far, optionally of one method and with a path containing ``path_contains``."""
        return sum(1 for r in self.requests if (method in {None, r.method}) and path_contains in r.path)

    async def __aenter__(self) -> FaultProxy:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(BaseException):
                await task
        await self._server.wait_closed()

    def _take(self, method: str, path: str) -> Fault | None:
        for fault in self.faults:
            if fault.matches(method, path):
                if fault.skip > 0:
                    fault.skip -= 1
                    return None
                fault.times -= 1
                return fault
        return None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self._serve(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ssl.SSLError):
            pass
        finally:
            self._tasks.discard(task)
            writer.transport.abort()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        request_line, *header_lines = head.decode("latin-1").split("\r\n")
        method, target, _ = request_line.split(" ", 2)
        headers = [(name.strip(), value.strip()) for name, _, value in (h.partition(":") for h in header_lines if h)]
        record = Recorded(method, target, {name.lower(): value for name, value in headers})
        self.requests.append(record)
        fault = self._take(method, target)
        record.fault = fault.kind if fault else None
        if fault is not None and fault.kind == "drop":
            return  # closed before any answer (the finally aborts the connection)
        if fault is not None and fault.kind == "status":
            await self._discard_body(reader, record.headers)
            record.status = fault.status
            extra = f"Retry-After: {fault.retry_after}\r\n" if fault.retry_after is not None else ""
            writer.write(
                f"HTTP/1.1 {fault.status} Injected\r\nContent-Type: {fault.content_type}\r\n"
                f"Content-Length: {len(fault.body)}\r\n{extra}Connection: close\r\n\r\n".encode()
                + fault.body
            )
            await writer.drain()
            return
        await self._forward(reader, writer, method, target, headers, record, fault)

    @staticmethod
    async def _discard_body(reader: asyncio.StreamReader, headers: dict[str, str]) -> None:
        length = int(headers.get("content-length", "0") or 0)
        while length > 0:
            chunk = await reader.read(min(length, 1 << 16))
            if not chunk:
                return
            length -= len(chunk)

    async def _forward(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        method: str,
        target: str,
        headers: list[tuple[str, str]],
        record: Recorded,
        fault: Fault | None,
    ) -> None:
        up_reader, up_writer = await asyncio.open_connection(
            self._host, self._port, ssl=ssl.create_default_context() if self._tls else None
        )
        try:
            kept = [(n, v) for n, v in headers if n.lower() not in {"connection", "keep-alive"}]
            if self._tls:
                kept = [(n, v) for n, v in kept if n.lower() != "host"] + [("Host", self._host)]
            kept.append(("Connection", "close"))
            up_writer.write(
                f"{method} {target} HTTP/1.1\r\n".encode()
                + "".join(f"{n}: {v}\r\n" for n, v in kept).encode("latin-1")
                + b"\r\n"
            )
            if fault is not None and fault.kind == "drop_mid_request":
                await self._pipe(reader, up_writer, record, limit=fault.after_bytes)
                return  # cut: the upstream got exactly after_bytes of the body; the caller aborts the client
            pump = asyncio.create_task(self._pipe(reader, up_writer, record))
            try:
                response_head = await up_reader.readuntil(b"\r\n\r\n")
                status_line, *lines = response_head.decode("latin-1").split("\r\n")
                record.status = int(status_line.split(" ", 2)[1])
                if fault is not None and fault.kind == "drop_answer":
                    return  # the server did the work; the client never hears of it
                lines = [
                    h for h in lines if h and h.split(":", 1)[0].strip().lower() not in {"connection", "keep-alive"}
                ]
                writer.write(("\r\n".join([status_line, *lines, "Connection: close"]) + "\r\n\r\n").encode("latin-1"))
                await self._relay_body(up_reader, writer, fault)
            finally:
                pump.cancel()
                with contextlib.suppress(BaseException):
                    await pump
        finally:
            up_writer.transport.abort()

    @staticmethod
    async def _relay_body(up_reader: asyncio.StreamReader, writer: asyncio.StreamWriter, fault: Fault | None) -> None:
        if fault is not None and fault.kind == "drop_mid_body":
            remaining = fault.after_bytes
            while remaining > 0 and (chunk := await up_reader.read(min(remaining, 1 << 16))):
                writer.write(chunk)
                remaining -= len(chunk)
            await writer.drain()
            return  # cut: the caller aborts the connection mid-body
        piece = fault.piece if fault is not None and fault.kind == "slow_body" else 1 << 16
        while chunk := await up_reader.read(piece):
            writer.write(chunk)
            await writer.drain()
            if fault is not None and fault.kind == "slow_body":
                await asyncio.sleep(fault.delay)

    @staticmethod
    async def _pipe(
        source: asyncio.StreamReader, sink: asyncio.StreamWriter, record: Recorded, limit: int | None = None
    ) -> None:
        with contextlib.suppress(ConnectionError):
            while (limit is None or record.body_bytes < limit) and (chunk := await source.read(1 << 16)):
                if limit is not None:
                    chunk = chunk[: limit - record.body_bytes]
                sink.write(chunk)
                record.body_bytes += len(chunk)
                await sink.drain()
            if limit is not None:
                sink.close()  # a FIN after the bytes passed on, so the upstream keeps them
                with contextlib.suppress(ConnectionError):
                    await sink.wait_closed()
