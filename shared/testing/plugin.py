"""The ``pytest11`` entry point ``videogen_shared``: it loads :mod:`shared.testing.fixtures` by that module's name.

The entry point names this module rather than the fixtures themselves, so that the fixtures are registered once,
under their module's name, whichever way a module asks for them: by installing ``videogen-shared[testing]`` (this
entry point), by ``pytest_plugins = ["shared.testing.fixtures"]`` in its conftest (pytest skips a module that it
has registered already), or both. ``-p no:videogen_shared`` still turns the automatic loading off.
"""

pytest_plugins = ["shared.testing.fixtures"]

__all__: list[str] = []
