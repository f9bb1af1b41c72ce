"""Check that requirements-dev.lock still matches pyproject.toml, offline, in the venv the lock built.

Three checks, each of which a stale lock fails:
1. every requirement of pyproject.toml (the dependencies, and every extra the lock was compiled with) is pinned
   in the lock at a version its specifier admits;
2. the lock is closed: every requirement of every locked distribution, as installed, is pinned in the lock too
   (``pip check`` says the same from the installed side);
3. the lock holds nothing that pyproject.toml does not reach, so a dropped dependency leaves the lock too.

Run with the venv's interpreter: ``.venv/bin/python .ci/check_lock.py``. Exit status 1 lists every problem.
"""

from __future__ import annotations

import re
import sys
import tomllib
from importlib import metadata
from pathlib import Path
from typing import cast

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s\\;]+)", re.MULTILINE)
LOCKED_EXTRAS = ("dev",)  # what `make lock` compiles (`--extra dev`); dev pulls in the other extras


def locked_pins(lock: Path) -> dict[str, str]:
    return {canonicalize_name(name): version for name, version in PIN.findall(lock.read_text())}


def main() -> int:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    own = canonicalize_name(project["name"])
    extras: dict[str, list[str]] = project.get("optional-dependencies", {})
    pins = locked_pins(ROOT / "requirements-dev.lock")
    problems: list[str] = []
    environment = cast("dict[str, str]", default_environment())

    def applies(requirement: Requirement, extra: str = "") -> bool:
        return requirement.marker is None or requirement.marker.evaluate({**environment, "extra": extra})

    # 1. pyproject's own requirements, with its self-references (videogen-shared[api]) expanded.
    wanted: list[Requirement] = []
    pending = [(extra, text) for extra in LOCKED_EXTRAS for text in extras.get(extra, [])]
    pending += [("", text) for text in project.get("dependencies", [])]
    seen_extras: set[str] = set(LOCKED_EXTRAS)
    while pending:
        extra, text = pending.pop()
        requirement = Requirement(text)
        if not applies(requirement, extra):
            continue
        if canonicalize_name(requirement.name) == own:
            for name in requirement.extras - seen_extras:
                seen_extras.add(name)
                pending += [(name, item) for item in extras.get(name, [])]
            continue
        wanted.append(requirement)
    for requirement in wanted:
        name = canonicalize_name(requirement.name)
        if name not in pins:
            problems.append(f"{requirement} (pyproject.toml) is not in the lock")
        elif not requirement.specifier.contains(pins[name], prereleases=True):
            problems.append(f"{requirement} (pyproject.toml) is locked at {pins[name]}, outside its range")

    # 2 and 3. Walk the installed metadata from pyproject's requirements: the closure must equal the lock.
    reached: set[str] = set()
    stack = [(canonicalize_name(r.name), frozenset(r.extras)) for r in wanted]
    while stack:
        name, wanted_extras = stack.pop()
        key = name + "[" + ",".join(sorted(wanted_extras)) + "]"
        if key in reached:
            continue
        reached.add(key)
        if name not in pins:
            continue  # reported above or below
        try:
            distribution = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            problems.append(f"{name}=={pins[name]} is locked but not installed: run `make venv` first")
            continue
        if distribution.version != pins[name]:
            problems.append(f"{name} is installed at {distribution.version}, the lock says {pins[name]}")
        for text in distribution.requires or []:
            requirement = Requirement(text)
            child = canonicalize_name(requirement.name)
            if not any(applies(requirement, extra) for extra in ("", *wanted_extras)):
                # Locked for another interpreter (the lock targets every 3.11): reached, not installed here.
                if requirement.marker is not None and "extra" not in str(requirement.marker) and child in pins:
                    reached.add(child + "[]")
                continue
            if child not in pins:
                problems.append(f"{requirement} (required by {name}) is not in the lock")
            elif not requirement.specifier.contains(pins[child], prereleases=True):
                problems.append(f"{requirement} (required by {name}) is locked at {pins[child]}")
            stack.append((child, frozenset(requirement.extras)))
    reached_names = {key.split("[", 1)[0] for key in reached}
    problems += [
        f"{name}=={pins[name]} is locked, but nothing in pyproject.toml needs it"
        for name in sorted(set(pins) - reached_names)
    ]

    for problem in problems:
        print(f"lock check: {problem}", file=sys.stderr)
    if problems:
        print("lock check: run `make lock` to compile requirements-dev.lock from pyproject.toml again", file=sys.stderr)
        return 1
    print(f"lock check: requirements-dev.lock matches pyproject.toml ({len(pins)} pins)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
