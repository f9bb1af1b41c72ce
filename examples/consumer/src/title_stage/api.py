"""The paid API the stage calls, behind a Protocol: the real client in production, a simulation here."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Protocol

from shared.errors import RetryableError

__all__ = ["PRICE_PER_CALL", "SimulatedTitleApi", "TitleApi", "TitleSuggestion"]

PRICE_PER_CALL = Decimal("0.02")


@dataclass(frozen=True, slots=True)
class TitleSuggestion:
    """What one call returns: the title and what the call cost."""

    title: str
    cost: Decimal


class TitleApi(Protocol):
    """The paid call (an OpenAI chat completion in production)."""

    async def suggest_title(self, prompt: str) -> TitleSuggestion: ...


class SimulatedTitleApi:
    """A stand-in for the paid API: fails ``failures`` times with a 503, then answers at PRICE_PER_CALL."""

    def __init__(self, failures: int = 0) -> None:
        self.failures = failures
        self.calls = 0
        self.closed = False

    async def suggest_title(self, prompt: str) -> TitleSuggestion:
        """Return a title made from the prompt; the first ``failures`` calls raise a retryable error."""
        self.calls += 1
        if self.calls <= self.failures:
            raise RetryableError("the title API answered 503; try again", retry_after=0.01)
        words = prompt.split()[:6]
        return TitleSuggestion(title=" ".join(word.capitalize() for word in words), cost=PRICE_PER_CALL)

    async def aclose(self) -> None:
        """Close the client (the real one closes its HTTP connections)."""
        self.closed = True
