"""The paid API the stage calls, behind a Protocol: the real client in production, a simulation here."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import httpx

__all__ = ["MODEL", "SimulatedTitleApi", "TitleApi", "TitleSuggestion"]

MODEL = "gpt-4o-mini"


@dataclass(frozen=True, slots=True)
class TitleSuggestion:
    """What one call returns: the title and the provider's answer, whose ``usage`` prices the call."""

    title: str
    answer: dict[str, Any]


class TitleApi(Protocol):
    """The paid call (an OpenAI chat completion in production)."""

    async def suggest_title(self, prompt: str) -> TitleSuggestion: ...


class SimulatedTitleApi:
    """A stand-in for the paid API: answers HTTP 503 ``failures`` times, then a title with OpenAI-shaped usage."""

    def __init__(self, failures: int = 0) -> None:
        self.failures = failures
        self.calls = 0
        self.closed = False

    async def suggest_title(self, prompt: str) -> TitleSuggestion:
        """Return a title made from the prompt; the first ``failures`` calls raise httpx's 503 error."""
        self.calls += 1
        if self.calls <= self.failures:
            request = httpx.Request("POST", "https://api.openai.com/v1/chat/completions")
            busy = httpx.Response(503, headers={"Retry-After": "0"}, request=request)
            raise httpx.HTTPStatusError("503 Service Unavailable", request=request, response=busy)
        words = prompt.split()[:6]
        usage = {"prompt_tokens": 60 + 4 * len(prompt.split()), "completion_tokens": 4 * len(words)}
        answer = {"object": "chat.completion", "model": "gpt-4o-mini-2024-07-18", "usage": usage}
        return TitleSuggestion(title=" ".join(word.capitalize() for word in words), answer=answer)

    async def aclose(self) -> None:
        """Close the client (the real one closes its HTTP connections)."""
        self.closed = True
