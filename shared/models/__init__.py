"""The pydantic models every pipeline stage exchanges."""

__all__: list[str] = []
