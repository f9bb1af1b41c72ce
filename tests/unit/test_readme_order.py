"""The README reads top down for a newcomer: what it is, the two commands, the task list's names, the module
author's path (stage, paid call, progress, storage, tests), the operator's path, and the maintainers' details last."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"

# The headings, by the words they start with, in the order a newcomer meets them.
PATH = [
    "## Two commands",
    "## From the task list's names",
    "## Depending on videogen-shared from a module",
    "## Using it",
    "### Writing a stage",
    "### Calling a paid API",
    "### Progress",
    "### Storage",
    "### Testing a module",
    "## Running it in production",
    "## For maintainers",
]


def headings() -> list[str]:
    text = re.sub(r"```.*?```", "", README.read_text(encoding="utf-8"), flags=re.S)  # a `# comment` is no heading
    return re.findall(r"^#{1,3} .*$", text, flags=re.M)


def test_the_readme_follows_the_newcomers_path() -> None:
    found = headings()
    positions = [next((i for i, h in enumerate(found) if h.startswith(step)), -1) for step in PATH]
    assert -1 not in positions, [step for step, at in zip(PATH, positions, strict=True) if at == -1]
    assert sorted(positions) == positions, [found[i] for i in positions]


def test_the_maintainers_section_is_the_last() -> None:
    assert headings()[-1].startswith("## For maintainers")


def test_the_task_list_table_comes_before_any_lock_node_or_sql_detail() -> None:
    text = README.read_text(encoding="utf-8")
    table = text.index("## From the task list's names")
    assert all(text.find(word) < 0 or text.find(word) > table for word in ("Node", "requirements-dev.lock"))
