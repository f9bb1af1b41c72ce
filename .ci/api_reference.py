"""Write docs/api.md, the reference of every public name and every public method, from the docstrings.

    python .ci/api_reference.py write    # `make api-docs`: after adding or changing a public name or method
    python .ci/api_reference.py check    # exit 1 naming what docs/api.md lacks

The public names are the ``__all__`` of every public module (the list ``.ci/public_api.py`` keeps). A public
method is a function, classmethod, staticmethod or property that a public class of this package defines or
inherits from another class of this package, with no leading underscore. Each one is listed with its signature
and the first line of its docstring; one without a docstring is listed as undocumented, which
``tests/unit/test_api_reference.py`` refuses: every public method is documented, or is not public.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import inspect
import sys
import typing
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from public_api import ROOT, public_names

from shared._provided import admits

REFERENCE = ROOT / "docs" / "api.md"
UNDOCUMENTED = "UNDOCUMENTED"
_PACKAGE = "shared"
_METHOD_KINDS = (staticmethod, classmethod, property, functools.cached_property)


@dataclass(frozen=True, slots=True)
class Entry:
    """One line of the reference: what is named, how it is called, and its summary."""

    name: str
    signature: str
    summary: str

    def line(self, indent: str = "") -> str:
        return f"{indent}- `{self.name}{self.signature}`: {self.summary}"


def _ours(obj: object) -> bool:
    module = getattr(obj, "__module__", None) or ""
    return module == _PACKAGE or module.startswith(f"{_PACKAGE}.")


def _summary(obj: object) -> str:
    doc = inspect.getdoc(obj)
    return doc.strip().split("\n\n", 1)[0].replace("\n", " ") if doc else UNDOCUMENTED


def _default(value: object) -> str:
    if value is None or isinstance(value, bool | int | float):
        return repr(value)
    if isinstance(value, str) and len(value) <= 24:
        return repr(value)
    return "..."


def _signature(obj: Any, *, bound: bool = False) -> str:
    """Return ``(a, b=1, *, c=...)``: names and simple defaults, never a value's repr that changes per run."""
    try:
        signature = inspect.signature(obj)
    except (TypeError, ValueError):
        return "(...)"
    parts: list[str] = []
    star = False
    for index, parameter in enumerate(signature.parameters.values()):
        if bound and index == 0 and parameter.name in {"self", "cls"}:
            continue
        if parameter.kind is parameter.VAR_POSITIONAL:
            parts.append(f"*{parameter.name}")
            star = True
            continue
        if parameter.kind is parameter.VAR_KEYWORD:
            parts.append(f"**{parameter.name}")
            continue
        if parameter.kind is parameter.KEYWORD_ONLY and not star:
            parts.append("*")
            star = True
        text = parameter.name
        if parameter.default is not parameter.empty:
            text += f"={_default(parameter.default)}"
        parts.append(text)
    return f"({', '.join(parts)})"


def public_methods(cls: type[Any]) -> dict[str, Any]:
    """Return the public methods and properties that ``cls`` defines or inherits from this package's classes.

    A dataclass's or a pydantic model's fields are data, not methods, even when their default is a function.
    """
    fields = {field.name for field in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else set()
    fields |= set(getattr(cls, "model_fields", {}))
    members: dict[str, Any] = {}
    for klass in reversed(cls.__mro__):
        if not _ours(klass):
            continue
        for name, value in vars(klass).items():
            if name in fields or name.startswith("_"):
                continue
            if isinstance(value, _METHOD_KINDS) or inspect.isfunction(value):
                members[name] = value
    return members


def _method_summary(cls: type[Any], name: str) -> str:
    """Return the method's summary; one without a docstring takes its contract's: the Protocol it implements, or
    the documented class that implements the same Protocol (a fake's ``get`` is the real client's ``get``)."""
    summary = _summary(getattr(cls, name))
    if summary != UNDOCUMENTED:
        return summary
    for other in _documenting(cls, name):
        inherited = _summary(getattr(other, name))
        if inherited != UNDOCUMENTED:
            return f"{inherited} (as `{other.__name__}.{name}`)"
    return summary


def _documenting(cls: type[Any], name: str) -> list[type[Any]]:
    """Return the public classes that may document ``cls.name``: the Protocols it shares with them first."""
    classes = [c for _, c in public_classes()]
    protocols = [c for c in classes if getattr(c, "_is_protocol", False) and name in vars(c)]
    mine = [p for p in protocols if p is cls or admits(p, cls)]
    found = [p for p in mine if p is not cls]
    for other in classes:
        if other is not cls and other not in found and name in vars(other) and any(admits(p, other) for p in mine):
            found.append(other)
    return found


def _method_entry(cls: type[Any], name: str, member: Any) -> Entry:
    qualified = f"{cls.__name__}.{name}"
    if isinstance(member, property | functools.cached_property):
        return Entry(qualified, "", f"(property) {_method_summary(cls, name)}")
    function = member.__func__ if isinstance(member, staticmethod | classmethod) else member
    bound = not isinstance(member, staticmethod)
    return Entry(qualified, _signature(function, bound=bound), _method_summary(cls, name))


@functools.cache
def public_classes() -> tuple[tuple[str, type[Any]], ...]:
    """Return each public class of this package once, with the first public module that exports it."""
    return tuple(_public_classes())


def _public_classes() -> Iterator[tuple[str, type[Any]]]:
    seen: set[int] = set()
    for module_name, names in sorted(public_names().items()):
        module = importlib.import_module(module_name)
        for name in names:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                value = getattr(module, name, None)
            if inspect.isclass(value) and _ours(value) and id(value) not in seen:
                seen.add(id(value))
                yield module_name, value


def _home(value: object, exported_by: str) -> str:
    """Return where ``value`` is documented in full: its own module when that is public, else the exporter."""
    module = getattr(value, "__module__", "") or ""
    return module if module in _public_modules() else exported_by


@functools.cache
def _public_modules() -> frozenset[str]:
    return frozenset(public_names())


def render() -> str:
    """Return the text of docs/api.md."""
    names = public_names()
    homes: dict[int, str] = {}
    for module_name, exported in sorted(names.items()):
        module = importlib.import_module(module_name)
        for name in exported:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                value = getattr(module, name, None)
            if (inspect.isclass(value) or inspect.isfunction(value)) and _ours(value):
                homes.setdefault(id(value), _home(value, module_name))
    lines = [
        "# API reference",
        "",
        "Every public name of videogen-shared, module by module, and every public method of its classes, with the",
        "first line of its docstring. Generated by `.ci/api_reference.py` (`make api-docs`) from the code;",
        "`tests/unit/test_api_reference.py` fails when a public name or method is missing here or has no docstring.",
        "The README shows how the pieces fit together; this file lists each one.",
    ]
    for module_name, exported in sorted(names.items()):
        if not exported:
            continue
        module = importlib.import_module(module_name)
        lines += ["", f"## `{module_name}`", "", _summary(module), ""]
        for name in exported:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                value = getattr(module, name, None)
            home = homes.get(id(value), module_name)
            if home != module_name:
                lines.append(f"- `{name}`: see `{home}`")
            elif (inspect.isclass(value) or inspect.isfunction(value)) and not _ours(value):
                lines.append(f"- `{name}`: from `{value.__module__}` (its own documentation)")
            elif inspect.isclass(value):
                lines.append(Entry(name, "", f"(class) {_summary(value)}").line())
                lines += [
                    _method_entry(value, method, member).line("  ") for method, member in public_methods(value).items()
                ]
            elif inspect.isfunction(value) or inspect.isbuiltin(value):
                lines.append(Entry(name, _signature(value), _summary(value)).line())
            elif hasattr(value, "_get_wrapped_function"):  # a pytest fixture
                lines.append(f"- `{name}`: (pytest fixture) {_summary(value)}")
            elif typing.get_origin(value) is not None or isinstance(value, typing.TypeVar):
                lines.append(f"- `{name}`: a type alias")
            else:
                lines.append(f"- `{name}`: {type(value).__name__}")
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    """Run ``write`` or ``check``; return the exit status."""
    if argv not in (["write"], ["check"]):
        print(__doc__)
        return 2
    text = render()
    if argv == ["write"]:
        REFERENCE.parent.mkdir(parents=True, exist_ok=True)
        REFERENCE.write_text(text, encoding="utf-8")
        return 0
    current = REFERENCE.read_text(encoding="utf-8") if REFERENCE.exists() else ""
    missing = [line for line in text.splitlines() if line.startswith(("- `", "  - `")) and line not in current]
    for line in missing:
        print(f"docs/api.md lacks: {line.strip()}")
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
