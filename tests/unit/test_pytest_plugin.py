"""The fixtures plugin loads once whichever way a module asks for it: the entry point, its conftest, or both."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

_TEST = """
from shared.testing.fixtures import Fakes


async def test_the_fakes_are_there(fakes: Fakes) -> None:
    assert (await fakes.add_job()).id is not None
"""

_INI = """[pytest]
asyncio_mode = auto
asyncio_default_fixture_loop_scope = function
asyncio_default_test_loop_scope = function
filterwarnings =
    error
    ignore:Module already imported so cannot be rewritten:pytest.PytestAssertRewriteWarning
"""


def _run(tmp_path: Path, conftest: str, *args: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "pytest.ini").write_text(_INI)
    (tmp_path / "conftest.py").write_text(conftest)
    (tmp_path / "test_module.py").write_text(_TEST)
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir", str(tmp_path), *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize(
    ("conftest", "args"),
    [
        pytest.param("", (), id="entry point only"),
        pytest.param('pytest_plugins = ["shared.testing.fixtures"]\n', (), id="entry point and conftest line"),
        pytest.param('pytest_plugins = ["shared.api.testing"]\n', (), id="entry point and the HTTP fixtures line"),
        pytest.param(
            'pytest_plugins = ["shared.testing.fixtures"]\n', ("-p", "no:videogen_shared"), id="conftest only"
        ),
    ],
)
def test_the_fixtures_load_once_whichever_way_they_are_asked_for(
    tmp_path: Path, conftest: str, args: tuple[str, ...]
) -> None:
    result = _run(tmp_path, conftest, *args)
    assert 0 == result.returncode, result.stdout + result.stderr
    assert "1 passed" in result.stdout


def test_no_videogen_shared_turns_the_fixtures_off(tmp_path: Path) -> None:
    result = _run(tmp_path, "", "-p", "no:videogen_shared")
    assert "fixture 'fakes' not found" in result.stdout
