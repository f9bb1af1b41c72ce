"""Record the package's public names, or check that none of a release's names went without a CHANGELOG note.

    python .ci/public_api.py record .ci/public_api/0.2.0.json   # at a release: every public module's __all__
    python .ci/public_api.py check .ci/public_api/0.1.0.json    # CI: the last release's names against today's

A name of the last release that is gone (its module gone, or the name out of the module's ``__all__``) fails the
check unless the CHANGELOG's newest section names it (`name` or `module.name`, in backticks) under Removed,
Deprecated or Changed, where its migration note belongs. ``tests/unit/test_public_api.py`` runs the check.
"""

from __future__ import annotations

import importlib
import json
import pkgutil
import re
import sys
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NOTED_IN = ("Removed", "Deprecated", "Changed")


def public_names(package: str = "shared") -> dict[str, list[str]]:
    """Return every public module of ``package`` with its sorted ``__all__``."""
    root = importlib.import_module(package)
    names: dict[str, list[str]] = {package: sorted(getattr(root, "__all__", []))}
    for info in pkgutil.walk_packages(root.__path__, prefix=f"{package}."):
        if any(part.startswith("_") for part in info.name.split(".")):
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            module = importlib.import_module(info.name)
        names[info.name] = sorted(getattr(module, "__all__", []))
    return names


def newest_notes(changelog: str) -> str:
    """Return the Removed, Deprecated and Changed subsections of the CHANGELOG's newest release section."""
    sections = re.split(r"^## ", changelog, flags=re.M)
    newest = next((section for section in sections[1:] if section.startswith("[")), "")
    parts = re.split(r"^### ", newest, flags=re.M)
    return "\n".join(part for part in parts[1:] if part.split("\n", 1)[0].strip() in NOTED_IN)


def missing_without_note(snapshot: dict[str, list[str]], current: dict[str, list[str]], changelog: str) -> list[str]:
    """Return ``module.name`` for each name of ``snapshot`` that is gone from ``current`` and not in the notes."""
    notes = newest_notes(changelog)
    problems = []
    for module, names in sorted(snapshot.items()):
        now = set(current.get(module, ()))
        for name in names:
            if name in now:
                continue
            if f"`{name}`" in notes or f"`{module}.{name}`" in notes or f"`{module}`" in notes:
                continue
            problems.append(f"{module}.{name}")
    return problems


def main(argv: list[str]) -> int:
    """Run ``record PATH`` or ``check PATH``; return the exit status."""
    if len(argv) != 2 or argv[0] not in {"record", "check"}:
        print(__doc__)
        return 2
    command, path = argv[0], Path(argv[1])
    if command == "record":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(public_names(), indent=1, sort_keys=True) + "\n", encoding="utf-8")
        return 0
    snapshot = json.loads(path.read_text(encoding="utf-8"))
    problems = missing_without_note(snapshot, public_names(), (ROOT / "CHANGELOG.md").read_text(encoding="utf-8"))
    for problem in problems:
        print(f"{problem}: gone since {path.stem} without a Removed/Deprecated/Changed note in CHANGELOG.md")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
