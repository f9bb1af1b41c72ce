"""videogen-shared: the foundation every pipeline module builds on.

Import from the submodules (``shared.config``, ``shared.errors``, ``shared.database``...); the container that
wires them is ``shared.container.Container``. Nothing here runs at import but an import hook that keeps
FastAPI out of processes that serve no HTTP (``shared._fastapi_deferred``).
"""

from shared import _fastapi_deferred

__all__ = ["__version__"]

_fastapi_deferred.install()

__version__ = "0.2.0"
