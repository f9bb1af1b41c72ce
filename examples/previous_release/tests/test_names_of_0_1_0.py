"""Every public name of 0.1.0 still resolves in this release; the ones that moved warn and name their new home."""

from __future__ import annotations

import importlib
import json
import warnings
from pathlib import Path

import pytest

NAMES = Path(__file__).with_name("public_api_0.1.0.json")  # .ci/public_api/0.1.0.json, copied in by consumer.sh
# What the 0.2.0 CHANGELOG says moved (Deprecated): this consumer expects a warning for these and no others.
MOVED = {"shared.cost_tracking.Money", "shared.rules.Money"}


def names_of_0_1_0() -> list[str]:
    snapshot: dict[str, list[str]] = json.loads(NAMES.read_text(encoding="utf-8"))
    return [f"{module}.{name}" for module, names in sorted(snapshot.items()) for name in names]


def resolve(dotted: str) -> list[str]:
    """Import ``module.name`` as 0.1.0's code did; return the DeprecationWarnings it raised."""
    module, name = dotted.rsplit(".", 1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        getattr(importlib.import_module(module), name)
    return [str(w.message) for w in caught if issubclass(w.category, DeprecationWarning)]


def test_the_list_of_0_1_0_is_there() -> None:
    assert len(names_of_0_1_0()) > 300


def test_every_name_of_0_1_0_resolves_and_only_the_moved_ones_warn() -> None:
    warned = {dotted: messages for dotted in names_of_0_1_0() if (messages := resolve(dotted))}
    assert MOVED == set(warned)
    for dotted, messages in warned.items():
        assert all("use " in message for message in messages), (dotted, messages)


@pytest.mark.parametrize("dotted", sorted(MOVED))
def test_a_moved_name_says_where_it_went(dotted: str) -> None:
    module, name = dotted.rsplit(".", 1)
    with pytest.warns(DeprecationWarning, match=r"use shared\.rules\.MoneyLike"):
        getattr(importlib.import_module(module), name)
