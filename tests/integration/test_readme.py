"""The README's usage examples run as written against the local services, and its settings table is complete."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from shared.config import Settings

README = Path(__file__).resolve().parents[2] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)


def test_the_readme_has_examples() -> None:
    assert len(BLOCKS) >= 5


@pytest.mark.parametrize("number", range(len(BLOCKS)))
def test_readme_example_runs(number: int, pg_dsn: str, redis_prefix: str, tmp_path: Path) -> None:
    script = tmp_path / f"example_{number}.py"
    script.write_text(BLOCKS[number], encoding="utf-8")
    env = {
        **os.environ,
        "ENVIRONMENT": "development",
        "DATABASE_URL": pg_dsn,
        "REDIS_KEY_PREFIX": redis_prefix,
        "STORAGE_BACKEND": "local",
        "STORAGE_LOCAL_ROOT": str(tmp_path / "storage"),
        "LOG_CONSOLE": "false",
    }
    result = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,  # no .env here: the example sees only its environment
        timeout=120,
        check=False,
    )
    assert 0 == result.returncode, result.stderr[-3000:]


def test_settings_table_names_every_setting() -> None:
    text = README.read_text(encoding="utf-8")
    missing = [name.upper() for name in Settings.model_fields if f"`{name.upper()}`" not in text]
    assert [] == missing
