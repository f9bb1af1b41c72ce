"""Examples of a pipeline module and an API gateway built on videogen-shared."""
