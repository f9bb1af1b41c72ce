"""videogen-shared: the foundation every pipeline module builds on.

Import from the submodules (``shared.config``, ``shared.errors``, ``shared.database``...); the container that
wires them is ``shared.container.Container``. Nothing here runs at import.
"""

__all__ = ["__version__"]

__version__ = "0.2.0"
