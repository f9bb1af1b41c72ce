"""The test hygiene plugin (tests/fixtures/hygiene.py) fails what it promises to fail."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

_INI = """[pytest]
asyncio_mode = auto
asyncio_default_fixture_loop_scope = function
asyncio_default_test_loop_scope = function
filterwarnings =
    error
    ignore:Module already imported so cannot be rewritten:pytest.PytestAssertRewriteWarning
"""

_TESTS = """
import asyncio
import time

import pytest


@pytest.mark.time_limit(0.5)
def test_too_slow() -> None:
    time.sleep(5)


async def test_leaves_an_exception_on_the_loop() -> None:
    async def boom() -> None:
        raise RuntimeError("nobody awaited me")

    task = asyncio.ensure_future(boom())
    await asyncio.sleep(0.01)
    del task


def test_fine() -> None:
    pass
"""


@pytest.mark.time_limit(120)
def test_a_slow_test_and_an_exception_left_on_the_loop_fail(tmp_path: Path) -> None:
    (tmp_path / "pytest.ini").write_text(_INI)
    (tmp_path / "conftest.py").write_text('pytest_plugins = ["tests.fixtures.hygiene"]\n')
    (tmp_path / "test_hygiene_sample.py").write_text(_TESTS)
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:videogen_shared", "-rf"],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=100,
        check=False,
    )
    out = result.stdout
    assert "ran past its time limit of 0.5 s" in out, out
    assert "exceptions were left on the event loop" in out, out
    assert "1 failed, 2 passed, 1 error" in out, out  # the loop check fails the test at its teardown
