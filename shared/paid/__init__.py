"""Paid calls under control: admission (budget + rate + concurrency), provider errors, cost from usage.

- :mod:`shared.paid.errors`: provider refusals (429/503, Retry-After, x-ratelimit-*, SDK exceptions) ->
  RetryableError, in one place.
- :mod:`shared.paid.pricing`: the price catalogue (genai-prices for tokens, a versioned Replicate hardware table).
- :mod:`shared.paid.limiter`: rate and concurrency slots shared by every process (Redis, one Lua script).
- :mod:`shared.paid.admission`: ``PaidCalls.admit`` and ``track_usage``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from shared.paid.errors import (
    ProviderOverloadedError,
    ProviderRateLimitedError,
    RateLimiterUnavailableError,
    RateLimitHeaders,
    RateLimitWaitError,
    UnknownPriceError,
    parse_rate_limit_headers,
    parse_retry_after,
    provider_error,
)

if TYPE_CHECKING:
    from shared.paid.admission import PaidCall, PaidCalls, StageAttemptLike
    from shared.paid.limiter import Grant, RateLimiter, RateScope, key_id
    from shared.paid.pricing import PriceCatalogue, PricedUsage, ReplicatePrices

# Loaded when first used, so that storage (which reads Retry-After here) does not import asyncpg and redis.
_LAZY = {
    "PaidCall": "admission",
    "PaidCalls": "admission",
    "StageAttemptLike": "admission",
    "Grant": "limiter",
    "RateLimiter": "limiter",
    "RateScope": "limiter",
    "key_id": "limiter",
    "PriceCatalogue": "pricing",
    "PricedUsage": "pricing",
    "ReplicatePrices": "pricing",
}

__all__ = [
    "Grant",
    "PaidCall",
    "PaidCalls",
    "PriceCatalogue",
    "PricedUsage",
    "ProviderOverloadedError",
    "ProviderRateLimitedError",
    "RateLimitHeaders",
    "RateLimitWaitError",
    "RateLimiter",
    "RateLimiterUnavailableError",
    "RateScope",
    "ReplicatePrices",
    "StageAttemptLike",
    "UnknownPriceError",
    "key_id",
    "parse_rate_limit_headers",
    "parse_retry_after",
    "provider_error",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"shared.paid.{_LAZY[name]}"), name)
    msg = f"module 'shared.paid' has no attribute {name!r}"
    raise AttributeError(msg)
