"""The gateway under a real uvicorn on a free loopback port, with the settings of shared.api.server, and slow clients.

Observed before: 100 clients sending 1 B/s were all still connected after 25 s (uvicorn alone waits for a request
head for ever). Each client here is a real socket; the test asserts what the server did (closed the connection,
answered 408 or 413), never how fast.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import uvicorn

from examples import api
from shared.api.server import MAX_HEAD_BYTES, TimedH11Protocol, server_config
from shared.api.testing import MakeToken
from shared.config import Settings
from shared.container import Container
from shared.testing.fixtures import Fakes
from tests.fixtures.servers import free_port

SLOW_CLIENTS = 100
STEP = 0.1  # seconds between two bytes of a slow client
MAX_STEPS = 300  # a slow client gives up after this many bytes: the test cannot hang


@dataclass
class Server:
    port: int
    settings: Settings


@pytest.fixture
def server(api_container: Container, api_settings: Settings) -> Iterator[Server]:
    """Serve the gateway (on the fakes) with uvicorn in a thread of its own, stopped after the test."""
    settings = api_settings.model_copy(
        update={
            "api_head_timeout_seconds": 1.0,
            "api_body_grace_seconds": 1.0,
            "api_body_min_bytes_per_second": 1024,
            "api_keep_alive_seconds": 1.0,
            "audio_max_size_mb": 1,
        }
    )
    api_container.settings.override(settings)
    port = free_port()
    instance = uvicorn.Server(server_config(api.create_app(api_container), settings, port=port))
    thread = threading.Thread(target=instance.run, name="uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not instance.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert instance.started, "uvicorn did not start"
    try:
        yield Server(port, settings)
    finally:
        instance.should_exit = True
        thread.join(timeout=30)
        assert not thread.is_alive()


async def drip(port: int, head: bytes, body: bytes = b"", *, slow_head: bool = False) -> tuple[int, bytes]:
    """Send ``head`` (whole, or byte by byte if ``slow_head``), then ``body`` byte by byte, until the server answers
    or closes the connection; return how many bytes were sent and what the server answered."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    sent = 0
    answer = b""
    try:
        chunks = [head[i : i + 1] for i in range(len(head))] if slow_head else [head]
        chunks += [body[i : i + 1] for i in range(len(body))]
        for chunk in chunks[:MAX_STEPS]:
            if reader.at_eof():
                break
            writer.write(chunk)
            await writer.drain()
            sent += len(chunk)
            try:
                answer += await asyncio.wait_for(reader.read(65536), STEP)
            except TimeoutError:
                continue
            break  # the server answered, or closed the connection
        answer += await asyncio.wait_for(reader.read(), 10)  # the server has closed, or closes now
    except (ConnectionResetError, BrokenPipeError):
        pass
    finally:
        writer.close()
        with contextlib.suppress(ConnectionResetError, BrokenPipeError):
            await writer.wait_closed()
    return sent, answer


def post_head(length: int, token: str) -> bytes:
    return (
        f"POST /jobs HTTP/1.1\r\nhost: gw\r\nauthorization: Bearer {token}\r\n"
        f"content-type: multipart/form-data; boundary=b\r\ncontent-length: {length}\r\n\r\n"
    ).encode()


async def test_slow_request_heads_are_disconnected_and_others_still_served(server: Server) -> None:
    """Slowloris: every client sends its head one byte at a time; the server closes each one."""
    head = b"GET /health HTTP/1.1\r\nhost: gw\r\nx-padding: " + b"p" * 2000 + b"\r\n\r\n"
    results = await asyncio.gather(*(drip(server.port, head, slow_head=True) for _ in range(SLOW_CLIENTS)))
    assert all(sent < len(head) for sent, _ in results)  # none got its head through
    assert all(answer == b"" for _, answer in results)  # closed without an answer: the request never started
    _, answer = await drip(server.port, b"GET /health HTTP/1.1\r\nhost: gw\r\nconnection: close\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 503")  # served (the fakes have no database: health says so)


async def test_a_slow_body_gets_408_and_the_connection_is_closed(
    server: Server, make_token: MakeToken, fakes: Fakes
) -> None:
    token = make_token(fakes.jobs.add_user())
    body = b'--b\r\ncontent-disposition: form-data; name="audio"; filename="a.wav"\r\n\r\n' + b"\0" * 10_000
    sent, answer = await drip(server.port, post_head(len(body), token), body)
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert b"connection: close" in answer.lower()
    assert sent < len(post_head(len(body), token)) + len(body)
    assert {} == fakes.storage.objects


async def test_a_declared_500_mb_upload_is_refused_before_its_body(
    server: Server, make_token: MakeToken, fakes: Fakes
) -> None:
    head = post_head(500 * 1024 * 1024, make_token(fakes.jobs.add_user()))
    sent, answer = await drip(server.port, head)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert len(head) == sent  # only the head went over the wire


async def test_an_answer_before_the_body_was_read_closes_the_connection(server: Server) -> None:
    """An anonymous client dripping an upload gets its 401 and loses the connection, not a free ride."""
    head = post_head(10_000, "not-a-token")
    sent, answer = await drip(server.port, head, b"\0" * 10_000)
    assert answer.startswith(b"HTTP/1.1 401"), answer[:200]
    assert b"connection: close" in answer.lower()
    assert sent < len(head) + 10_000


def test_server_config_carries_the_settings(api_settings: Settings) -> None:
    config = server_config(object(), api_settings.model_copy(update={"api_head_timeout_seconds": 3.5}))
    assert isinstance(config.http, type)
    assert issubclass(config.http, TimedH11Protocol)
    assert (3.5, 5, 1000, MAX_HEAD_BYTES) == (
        config.http.head_timeout,
        config.timeout_keep_alive,
        config.limit_concurrency,
        config.h11_max_incomplete_event_size,
    )
