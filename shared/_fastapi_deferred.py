"""Keep FastAPI out of a process that serves no HTTP: dependency-injector imports it at load when installed.

``dependency_injector.wiring`` runs ``from fastapi.params import Depends`` at import, to recognise
``Depends(Provide[...])`` markers (and Starlette and werkzeug, to skip their request objects), so every worker
and every ``maintain`` paid 0.46 s of FastAPI (issue 24). :func:`install` (called by ``shared/__init__.py``; it
only adds an import hook) makes that one import see none of them, and gives wiring a marker extractor and an
exclusion filter that look them up when a parameter is inspected instead: a parameter can only be a FastAPI
``Depends`` once FastAPI has been imported, by the app that uses it.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
from collections.abc import Sequence
from types import ModuleType
from typing import Any

__all__ = ["install"]

_WIRING = "dependency_injector.wiring"


# What wiring imports from web frameworks at load, each hidden during that import and looked up when used.
_WEB = ("fastapi", "starlette", "werkzeug")


def _fastapi_marker(param: Any) -> Any:
    """Return the dependency of a FastAPI ``Depends``, if FastAPI is loaded and ``param`` is one."""
    params = sys.modules.get("fastapi.params")
    if params is not None and isinstance(param, params.Depends):
        return param.dependency
    return None


def _excluded_web_object(obj: Any) -> bool:
    """Return whether wiring must not inspect ``obj``: a Starlette request class or a werkzeug local proxy."""
    requests = sys.modules.get("starlette.requests")
    if requests is not None and isinstance(obj, type) and issubclass(obj, requests.Request):
        return True
    local = sys.modules.get("werkzeug.local")
    return local is not None and isinstance(obj, local.LocalProxy)


class _WiringLoader(importlib.abc.Loader):
    def __init__(self, loader: importlib.abc.Loader) -> None:
        self._loader = loader

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self._loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        hidden = [name for name in _WEB if name not in sys.modules]
        for name in hidden:
            sys.modules[name] = None  # type: ignore[assignment] # None makes `import name` raise ImportError
        try:
            self._loader.exec_module(module)
        finally:
            for name in hidden:
                if sys.modules.get(name, ...) is None:
                    del sys.modules[name]
        module.MARKER_EXTRACTORS.append(_fastapi_marker)
        module.INSPECT_EXCLUSION_FILTERS.append(_excluded_web_object)


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != _WIRING:
            return None
        sys.meta_path.remove(self)
        if any(name in sys.modules for name in _WEB):  # a web app loaded first: wiring finds its framework as usual
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path, target)
        if spec is None or spec.loader is None:
            return None
        spec.loader = _WiringLoader(spec.loader)
        return spec


def install() -> None:
    """Defer FastAPI for dependency-injector's wiring module, unless it is loaded already (idempotent)."""
    if _WIRING in sys.modules or any(isinstance(finder, _Finder) for finder in sys.meta_path):
        return
    sys.meta_path.insert(0, _Finder())
