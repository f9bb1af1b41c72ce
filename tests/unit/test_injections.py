"""The Provide type check: it finds annotations their provider cannot satisfy, and passes the right ones."""

from __future__ import annotations

import types
from collections.abc import AsyncIterator, Iterator

import pytest
from dependency_injector import containers, providers

from shared.testing.injections import assert_injections, check_injections, provided_types
from shared.wiring import Provide, inject
from tests.unit.samples import injected


def test_reports_each_parameter_whose_provider_gives_another_type() -> None:
    problems = {(p.function.rsplit(".", 1)[-1], p.parameter) for p in check_injections(injected)}
    assert {("wrong_db", "pool"), ("run", "budget")} == problems


def test_assert_names_the_function_the_parameter_and_both_types() -> None:
    with pytest.raises(AssertionError) as caught:
        assert_injections(injected)
    assert "wrong_db(pool: int) is given DatabaseClient" in str(caught.value)


class Engine:
    pass


def engine_resource() -> Iterator[Engine]:
    yield Engine()


async def async_engine() -> AsyncIterator[Engine]:
    yield Engine()


def build_number() -> int:
    return 1


class Lab(containers.DeclarativeContainer):
    sync = providers.Resource(engine_resource)
    aio = providers.Resource(async_engine)
    number = providers.Factory(build_number)
    obj = providers.Object("text")
    choice = providers.Selector(
        providers.Object("local"), local=providers.Factory(Engine), other=providers.Factory(build_number)
    )
    dependency = providers.Dependency(instance_of=Engine)
    untyped = providers.Factory(lambda: 1)


def test_provided_types_of_each_provider_kind() -> None:
    assert [Engine] == provided_types(Lab.sync)
    assert [Engine] == provided_types(Lab.aio)
    assert [int] == provided_types(Lab.number)
    assert [str] == provided_types(Lab.obj)
    assert [Engine, int] == provided_types(Lab.choice)
    assert [Engine] == provided_types(Lab.dependency)
    assert [] == provided_types(Lab.untyped)


def test_selector_needs_every_option_to_fit() -> None:
    module = types.ModuleType("selector_sample")

    @inject
    def uses(engine: Engine = Provide[Lab.choice], either: Engine | int = Provide[Lab.choice]) -> object:
        return engine, either

    uses.__module__ = module.__name__
    module.uses = uses  # type: ignore[attr-defined]
    assert [("engine", "int")] == [(p.parameter, p.provided) for p in check_injections(module)]
