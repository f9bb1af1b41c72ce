"""`/health` and `python -m shared doctor` read one list of services, declared beside each service in the container."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path

import pytest
from dependency_injector import containers, providers
from fastapi import FastAPI
from starlette.testclient import TestClient

from shared.api import add_health_route, container_lifespan
from shared.cli import main
from shared.config import Settings
from shared.container import Container
from shared.doctor import check_services, load_container, run_doctor
from shared.errors import ConfigError
from shared.health import HealthStatus, ServiceCheck, health_checked, service_checks
from shared.testing import FakeCache
from tests.fixtures.core import MakeSettings


class Echo:
    """A service of a module's own that can say whether it answers."""

    async def health_check(self) -> HealthStatus:
        return HealthStatus("echo", "ok", 0.1)


class EchoContainer(Container):
    """A module's container that adds one checked service."""

    echo = health_checked(providers.Singleton(Echo), name="echo")
    unchecked = providers.Singleton(Echo)  # not declared: neither /health nor doctor asks it


class CacheContainer(Container):
    """A module's container that replaces a checked service under the same name."""

    redis = providers.Object(FakeCache())  # type: ignore[assignment]  # a fake Redis: same health_check


def route_names(container_class: type[Container], settings: Settings) -> tuple[int, list[str]]:
    """Return the status and the service names of GET /health on an app over a started ``container_class``."""
    container = container_class()
    container.settings.override(providers.Object(settings))
    app = FastAPI(lifespan=container_lifespan(container))
    add_health_route(app)
    with TestClient(app) as client:
        answer = client.get("/health")
    return answer.status_code, [service["name"] for service in answer.json()["services"]]


def doctor_names(container_class: type[Container], settings: Settings) -> list[str]:
    """Return the service names that the doctor reports for ``container_class``."""
    return [result.name for result in asyncio.run(check_services(settings, container=container_class))]


def test_a_service_declared_in_a_module_container_is_checked_by_health_and_doctor(
    service_settings: Settings,
) -> None:
    status, route = route_names(EchoContainer, service_settings)
    doctor = doctor_names(EchoContainer, service_settings)
    assert (200, ["postgres", "redis", "storage", "echo"]) == (status, route)
    assert route == doctor


def test_the_shared_container_declares_its_services_once_for_both(service_settings: Settings) -> None:
    declared = [check.name for check in service_checks(Container)]
    assert ["postgres", "redis", "storage"] == declared
    assert (200, declared) == route_names(Container, service_settings)
    assert declared == doctor_names(Container, service_settings)


async def test_run_doctor_prints_a_module_service(service_settings: Settings) -> None:
    out = io.StringIO()
    assert 0 == await run_doctor(service_settings, out=out, container=EchoContainer, processes=None), out.getvalue()
    lines = {line.split()[0]: line.split()[1] for line in out.getvalue().splitlines()[2:-1]}
    assert {"postgres": "ok", "redis": "ok", "storage": "ok", "echo": "ok"} == lines


def test_a_replaced_service_stays_checked_under_its_name(service_settings: Settings) -> None:
    assert ServiceCheck("redis", "redis", ("shared.redis_client",)) in service_checks(CacheContainer)
    assert ["postgres", "redis", "storage"] == route_names(CacheContainer, service_settings)[1]
    assert ["postgres", "redis", "storage"] == doctor_names(CacheContainer, service_settings)


def test_a_container_without_a_declarative_class_declares_nothing() -> None:
    assert () == service_checks(containers.DynamicContainer())
    assert ["echo"] == [check.provider for check in service_checks(EchoContainer())][-1:]


async def test_a_service_that_never_answers_is_down_within_the_timeout_and_leaves_nothing_behind(
    make_settings: MakeSettings, redis_prefix: str
) -> None:
    """The doctor opens each service through the container; a hung connect is cancelled and its resources closed."""
    held: list[asyncio.StreamWriter] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)  # accept, never answer: a frozen PostgreSQL

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    settings = make_settings(
        database_url=f"postgresql://postgres@127.0.0.1:{port}/none",
        db_connect_timeout_seconds=30,
        redis_key_prefix=redis_prefix,
    )
    out = io.StringIO()
    try:
        status = await run_doctor(settings, out=out, timeout=0.5, processes=None)
    finally:
        for writer in held:
            writer.close()
        server.close()
        await server.wait_closed()
    lines = {line.split()[0]: line for line in out.getvalue().splitlines()[2:-1]}
    assert 1 == status
    assert "no answer within 0.5 s" in lines["postgres"]
    assert ["ok", "ok"] == [lines[name].split()[1] for name in ("redis", "storage")]


def test_the_doctor_command_checks_a_module_container_named_on_the_command_line(
    service_settings: Settings, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)  # no .env: the command reads only this environment
    for name in ("environment", "redis_key_prefix", "storage_backend", "storage_local_root"):
        monkeypatch.setenv(name.upper(), str(getattr(service_settings, name)))
    monkeypatch.setenv("DATABASE_URL", service_settings.database_dsn)
    out = io.StringIO()
    target = f"{__name__}:EchoContainer"
    assert 0 == main(["doctor", "--container", target, "--processes", "1"], out=out), out.getvalue()
    assert "echo" in [line.split()[0] for line in out.getvalue().splitlines()[2:-1]]


@pytest.mark.parametrize("target", ["no_such_module_here:Container", "shared.config:Settings"])
def test_a_container_that_is_not_one_is_a_config_error_saying_what_to_pass(target: str) -> None:
    with pytest.raises(ConfigError, match="module"):
        load_container(target)
    assert EchoContainer is load_container(f"{__name__}:EchoContainer")
