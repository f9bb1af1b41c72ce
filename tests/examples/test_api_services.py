"""The gateway on the real services through starlette's TestClient: the container opens in TestClient's own loop,
and a database that goes down after the audio was stored leaves no audio behind."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest
from fastapi import Request
from pydantic import SecretStr
from starlette.testclient import TestClient

import containers
from examples import api
from shared.api import get_container
from shared.api.testing import MakeToken
from shared.config import Settings
from shared.demo import generate_song
from shared.lifecycle import resolve
from tests.fixtures.postgres import MakeUser
from tests.fixtures.servers import free_port, wait_for_port


@dataclass
class PgProxy:
    """socat relaying a loopback port to the machine's PostgreSQL; ``stop()`` kills it and every relay it forked."""

    port: int
    process: subprocess.Popen[bytes]

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)


@pytest.fixture
def pg_proxy() -> Iterator[PgProxy]:
    port = free_port()
    process = subprocess.Popen(
        ["socat", f"TCP-LISTEN:{port},bind=127.0.0.1,fork,reuseaddr", "TCP:127.0.0.1:5432"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its own process group: stop() ends the relays too, and nothing else
    )
    proxy = PgProxy(port, process)
    try:
        wait_for_port(port)
        yield proxy
    finally:
        proxy.stop()


@pytest.fixture
def gateway_settings(service_settings: Settings, api_settings: Settings, pg_dsn: str, pg_proxy: PgProxy) -> Settings:
    """The real services, the database reached through the proxy, and the token secret of ``make_token``."""
    parts = urlsplit(pg_dsn)
    proxied = urlunsplit(parts._replace(netloc=f"{parts.username or 'postgres'}@127.0.0.1:{pg_proxy.port}"))
    return service_settings.model_copy(
        update={
            "database_url": SecretStr(proxied),
            "supabase_url": api_settings.supabase_url,
            "jwt_secret_key": api_settings.jwt_secret_key,
            "db_connect_attempts": 2,
            "db_connect_timeout_seconds": 2.0,
        }
    )


def stored_files(settings: Settings) -> list[Path]:
    return sorted(path for path in settings.storage_local_root.rglob("*") if path.is_file())


def post_song(client: TestClient, token: str) -> tuple[int, str]:
    response = client.post(
        "/jobs",
        files={"audio": ("song.wav", generate_song(seconds=6), "audio/wav")},
        data={"prompt": "rain on a neon city"},
        headers={"Authorization": f"Bearer {token}"},
    )
    return response.status_code, response.json().get("error", {}).get("code", "")


async def test_the_container_opens_in_testclients_loop_and_closes_after(
    gateway_settings: Settings, make_user: MakeUser, make_token: MakeToken
) -> None:
    container = containers.Container()
    container.settings.override(gateway_settings)
    app = api.create_app(container)
    user = await make_user()
    test_loop = asyncio.get_running_loop()
    seen: dict[str, object] = {}

    @app.get("/probe")
    async def probe(request: Request) -> dict[str, bool]:
        db = await resolve(get_container(request).db)
        seen["loop"] = asyncio.get_running_loop()
        seen["thread"] = threading.current_thread()
        return {"ok": 1 == await db.fetchval("select 1")}

    with TestClient(app) as client:
        assert {"ok": True} == client.get("/probe").json()
        assert (201, "") == post_song(client, make_token(user))
    assert seen["loop"] is not test_loop
    assert seen["thread"] is not threading.current_thread()
    assert not container.db.initialized  # closed when the TestClient left
    assert 1 == len(stored_files(gateway_settings))


async def test_when_the_database_fails_after_the_upload_the_audio_is_deleted(
    gateway_settings: Settings, make_user: MakeUser, make_token: MakeToken, pg_proxy: PgProxy
) -> None:
    """Observed before: audio stored for a request that then failed stayed in storage (264 KB per request)."""
    container = containers.Container()
    container.settings.override(gateway_settings)
    user = await make_user()
    with TestClient(api.create_app(container)) as client:
        assert (201, "") == post_song(client, make_token(user))
        assert (404, "user_not_found") == post_song(client, make_token())  # a user that does not exist
        assert 1 == len(stored_files(gateway_settings))
        pg_proxy.stop()  # the database goes away after start-up
        assert (503, "database_unavailable") == post_song(client, make_token(user))
        health = client.get("/health")
    assert 1 == len(stored_files(gateway_settings))  # only the first job's audio
    assert (503, "down") == (health.status_code, health.json()["services"][0]["status"])
