"""The line 0.1.0's docs gave module authors. The pytest11 entry point loads the same fixtures already; both
together must work (the fixtures load once), so this project keeps the line to prove it."""

pytest_plugins = ["shared.testing.fixtures"]
