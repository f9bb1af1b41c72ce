"""A TCP proxy in front of PostgreSQL (or a pooler) that counts the client's round trips on the wire.

It reads the frontend protocol (after the untyped startup message, a type byte and a 4-byte length per
message) and counts each message after which the client waits for the server: Sync (``S``), Flush (``H``,
asyncpg's describe of an unnamed statement) and simple Query (``Q``). That count is the number of round trips,
whatever the TCP segments looked like. The backend's stream is relayed untouched.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections import Counter
from collections.abc import AsyncIterator

__all__ = ["WireCounter", "wire_counter"]

_WAITS = frozenset({ord("S"), ord("H"), ord("Q")})


class WireCounter:
    """Relay loopback connections to ``upstream_port``; count round trips and messages by type."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.round_trips = 0
        self.messages: Counter[str] = Counter()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def port(self) -> int:
        """Return the loopback port the proxy listens on."""
        assert self._server is not None  # noqa: S101 - started by wire_counter
        return int(self._server.sockets[0].getsockname()[1])

    def dsn(self, upstream_dsn: str) -> str:
        """Return ``upstream_dsn``'s database reached through this proxy (no TLS, so that it can read)."""
        database = upstream_dsn.rsplit("/", 1)[1].split("?", maxsplit=1)[0]
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}?sslmode=disable"

    def reset(self) -> None:
        """Start counting from zero."""
        self.round_trips = 0
        self.messages.clear()

    async def start(self) -> None:
        """Listen on a free loopback port."""
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)

    async def close(self) -> None:
        """Stop listening and close every relayed connection."""
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    async def _handle(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        server_reader, server_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        self._writers.update((client_writer, server_writer))
        up = asyncio.create_task(self._frontend(client_reader, server_writer))
        down = asyncio.create_task(self._relay(server_reader, client_writer))
        self._tasks.update((up, down))
        try:
            await asyncio.wait({up, down}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for writer in (client_writer, server_writer):
                writer.close()
                self._writers.discard(writer)
            for task in (up, down):
                task.cancel()
                self._tasks.discard(task)

    async def _frontend(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            (length,) = struct.unpack("!i", await reader.readexactly(4))
            writer.write(struct.pack("!i", length) + await reader.readexactly(length - 4))  # startup
            while True:
                head = await reader.readexactly(5)
                (length,) = struct.unpack("!i", head[1:])
                body = await reader.readexactly(length - 4)
                self.messages[chr(head[0])] += 1
                if head[0] in _WAITS:
                    self.round_trips += 1
                writer.write(head + body)

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(65536):
                writer.write(data)


@contextlib.asynccontextmanager
async def wire_counter(upstream_port: int) -> AsyncIterator[WireCounter]:
    """Yield a started WireCounter in front of ``upstream_port``; close it afterwards."""
    counter = WireCounter(upstream_port)
    await counter.start()
    try:
        yield counter
    finally:
        await counter.close()
