"""The line 0.1.0's docs told module authors to write (the pytest11 entry point loads the same fixtures)."""

pytest_plugins = ["shared.testing.fixtures"]
