"""Turn what a paid provider answers when it refuses (HTTP 429/503, SDK exceptions) into RetryableError.

The one public place for it (``shared.paid.errors``): storage reads its Retry-After here too.

    RetryableError                      (shared.errors)
    ├── ProviderRateLimitedError        rate_limited          the provider said 429: wait ``retry_after``
    ├── ProviderOverloadedError         provider_overloaded   503/529/overloaded: wait and try again
    ├── RateLimitWaitError              rate_limit_wait       no slot within the admission's wait; try later
    └── RateLimiterUnavailableError     rate_limiter_unavailable  the limiter's store (Redis) is down: no call
                                                             is admitted (fail closed); try again later
    ValidationError                     (shared.errors)
    └── UnknownPriceError               unknown_price         the catalogue has no price: never priced at 0

:func:`provider_error` maps an ``httpx.Response`` (or any object with ``status_code`` and ``headers``) or an
exception of the OpenAI or Replicate SDKs, matched by class name and attributes so neither SDK is imported,
and returns None for anything that is not a passing refusal. Retry-After is read as delta-seconds or an HTTP
date, then ``retry-after-ms`` (OpenAI), then the ``x-ratelimit-reset-*`` headers (``6m0s``, ``1s``, ``20ms``).
"""

from __future__ import annotations

import email.utils
import math
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from shared.errors import (
    ProviderOverloadedError,
    ProviderRateLimitedError,
    RateLimiterUnavailableError,
    RateLimitWaitError,
    RetryableError,
    UnknownPriceError,
)

__all__ = [
    "ProviderOverloadedError",
    "ProviderRateLimitedError",
    "RateLimitHeaders",
    "RateLimitWaitError",
    "RateLimiterUnavailableError",
    "UnknownPriceError",
    "parse_duration",
    "parse_rate_limit_headers",
    "parse_retry_after",
    "provider_error",
]

# The longest wait a header may ask for that we honour (a day); longer ones are the provider's mistake.
MAX_RETRY_AFTER = 86_400.0
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
_UNIT_SECONDS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
# HTTP statuses that mean "not now": too many requests, overloaded, unavailable, gateway timeout, Anthropic's 529.
_RATE_LIMITED = 429
_OVERLOADED = frozenset({502, 503, 504, 529})
# SDK exception classes by name (openai.RateLimitError, openai.InternalServerError with a 503,
# replicate.exceptions.ReplicateError with status 429), so neither SDK has to be importable.
_RATE_LIMIT_NAMES = frozenset({"RateLimitError"})
_OVERLOAD_NAMES = frozenset({"APITimeoutError", "APIConnectionError", "InternalServerError", "ServiceUnavailableError"})


@dataclass(frozen=True, slots=True)
class RateLimitHeaders:
    """What a provider's ``x-ratelimit-*`` headers say (OpenAI's names; None where a header is absent)."""

    limit_requests: int | None = None
    limit_tokens: int | None = None
    remaining_requests: int | None = None
    remaining_tokens: int | None = None
    reset_requests: float | None = None
    reset_tokens: float | None = None

    @property
    def reset(self) -> float | None:
        """Return the wait until the exhausted budget resets (the longer of the two when both are spent)."""
        waits = [
            wait
            for remaining, wait in (
                (self.remaining_requests, self.reset_requests),
                (self.remaining_tokens, self.reset_tokens),
            )
            if wait is not None and remaining == 0
        ]
        if not waits:
            waits = [wait for wait in (self.reset_requests, self.reset_tokens) if wait is not None]
        return max(waits) if waits else None


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Return the seconds a Retry-After header asks to wait (delta-seconds or an HTTP date), or None.

    A date in the past or a negative number is 0; a value that is neither, or not finite, is None (ignored).
    """
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            moment = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if moment.tzinfo is None:
            return None
        seconds = max(0.0, moment.timestamp() - (time.time() if now is None else now))
    if not math.isfinite(seconds):
        return None
    return min(max(0.0, seconds), MAX_RETRY_AFTER)


def parse_duration(value: str | None) -> float | None:
    """Return the seconds of an ``x-ratelimit-reset-*`` value (``1s``, ``6m0s``, ``20ms``, ``0.5``), or None."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        parts = _DURATION.findall(value)
        if not parts or "".join(number + unit for number, unit in parts) != value:
            return None
        seconds = sum(float(number) * _UNIT_SECONDS[unit] for number, unit in parts)
    if not math.isfinite(seconds) or seconds < 0:
        return None
    return min(seconds, MAX_RETRY_AFTER)


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _lower(headers: Any) -> dict[str, str]:
    if headers is None:
        return {}
    items = headers.items() if isinstance(headers, Mapping) or hasattr(headers, "items") else headers
    return {str(name).lower(): str(value) for name, value in items}


def parse_rate_limit_headers(headers: Mapping[str, str] | Any) -> RateLimitHeaders:
    """Read OpenAI-style ``x-ratelimit-*`` headers (any casing) into a RateLimitHeaders."""
    found = _lower(headers)
    return RateLimitHeaders(
        limit_requests=_int(found.get("x-ratelimit-limit-requests")),
        limit_tokens=_int(found.get("x-ratelimit-limit-tokens")),
        remaining_requests=_int(found.get("x-ratelimit-remaining-requests")),
        remaining_tokens=_int(found.get("x-ratelimit-remaining-tokens")),
        reset_requests=parse_duration(found.get("x-ratelimit-reset-requests")),
        reset_tokens=parse_duration(found.get("x-ratelimit-reset-tokens")),
    )


def _wait_from_headers(headers: Any, *, now: float | None = None) -> float | None:
    """Return the wait the headers ask for: Retry-After, then retry-after-ms, then x-ratelimit-reset-*."""
    found = _lower(headers)
    wait = parse_retry_after(found.get("retry-after"), now=now)
    if wait is None and (millis := found.get("retry-after-ms")) is not None:
        seconds = parse_duration(millis)
        wait = None if seconds is None else seconds / 1000
    if wait is None:
        wait = parse_rate_limit_headers(found).reset
    return wait


def _status(obj: object) -> int | None:
    for name in ("status_code", "status"):
        value = getattr(obj, name, None)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def provider_error(answer: object, *, provider: str | None = None, now: float | None = None) -> RetryableError | None:
    """Return the RetryableError a provider's refusal means, or None when it is not a passing refusal.

    ``answer`` is an HTTP response (``status_code`` and ``headers``, as httpx's) or an exception: an
    ``httpx.HTTPStatusError`` (its ``response``), ``openai.RateLimitError`` / ``APIStatusError`` (``status_code``,
    ``response``), ``openai.APITimeoutError`` / ``APIConnectionError``, or ``replicate.exceptions.ReplicateError``
    (``status``, no headers). The SDKs are matched by class name and attributes, never imported.
    """
    name = type(answer).__name__
    response = getattr(answer, "response", None) if isinstance(answer, BaseException) else answer
    status = _status(answer)
    if status is None and response is not None:
        status = _status(response)
    headers = getattr(response, "headers", None) if response is not None else None
    wait = _wait_from_headers(headers, now=now) if headers is not None else None
    if status == _RATE_LIMITED or (status is None and name in _RATE_LIMIT_NAMES):
        error: RetryableError = ProviderRateLimitedError(provider=provider, retry_after=wait, status=_RATE_LIMITED)
    elif status in _OVERLOADED or (status is None and name in _OVERLOAD_NAMES) or name == "OverloadedError":
        error = ProviderOverloadedError(provider=provider, retry_after=wait, status=status)
    else:
        return None
    if isinstance(answer, BaseException):
        error.__cause__ = answer
    return error
