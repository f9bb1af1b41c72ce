"""0.1.0's names still work in 0.2.0, each with a DeprecationWarning that names its new home."""

from __future__ import annotations

import importlib
import sys

import pytest
from shared.container import Container


def test_the_old_containers_import_warns_and_gives_the_shared_container() -> None:
    sys.modules.pop("containers", None)
    old = importlib.import_module("containers")  # `from containers import Container`, untyped for mypy
    with pytest.warns(DeprecationWarning, match=r"from shared\.container import Container"):
        found = old.Container
    assert Container is found
