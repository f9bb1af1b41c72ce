"""The guarded @inject: wired functions receive collaborators; unwired ones fail loudly."""

from __future__ import annotations

import sys

import pytest
from dependency_injector import containers, providers

from shared.wiring import NotWiredError, Provide, inject


class Greeter:
    def greet(self, name: str) -> str:
        return f"hello {name}"


class Box(containers.DeclarativeContainer):
    greeter = providers.Factory(Greeter)


@inject
def greet(name: str, greeter: Greeter = Provide[Box.greeter]) -> str:
    return greeter.greet(name)


@inject
async def greet_async(name: str, greeter: Greeter = Provide[Box.greeter]) -> str:
    return greeter.greet(name)


def test_calling_an_unwired_function_raises_not_wired_with_the_parameter() -> None:
    with pytest.raises(NotWiredError) as caught:
        greet("ada")
    assert "greeter" == caught.value.parameter
    assert "container.wire" in caught.value.message
    assert "not_wired" == caught.value.code


async def test_calling_an_unwired_coroutine_raises_not_wired() -> None:
    with pytest.raises(NotWiredError, match="greet_async"):
        await greet_async("ada")


async def test_wired_functions_receive_the_collaborator_and_overrides() -> None:
    box = Box()
    box.wire(modules=[sys.modules[__name__]])
    try:
        assert "hello ada" == greet("ada")
        assert "hello bob" == await greet_async("bob")

        class Loud(Greeter):
            def greet(self, name: str) -> str:
                return f"HELLO {name.upper()}"

        with box.greeter.override(providers.Factory(Loud)):
            assert "HELLO ADA" == greet("ada")
    finally:
        box.unwire()


def test_an_explicit_argument_needs_no_wiring() -> None:
    assert "hello ada" == greet("ada", greeter=Greeter())
    assert "hello ada" == greet("ada", Greeter())
