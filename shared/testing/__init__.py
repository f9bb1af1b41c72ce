"""Fakes honouring the same contracts as the real collaborators, and pytest fixtures, for module authors."""

__all__: list[str] = []
