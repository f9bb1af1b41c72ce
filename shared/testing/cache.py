"""FakeCache: the Cache contract in memory with TTLs, for one process (tests and offline demos)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar, overload

import orjson
import pydantic

from shared.health import HealthStatus
from shared.redis_client import (
    DEFAULT_MAX_VALUE_BYTES,
    Ttl,
    decode_json,
    encode_json,
    ttl_milliseconds,
    validate_key,
    validate_value,
)

__all__ = ["FakeCache"]

T = TypeVar("T")


class FakeCache:
    """In-memory Cache: the same answers as RedisClient, TTLs included (``clock`` lets a test move time)."""

    def __init__(
        self, *, clock: Callable[[], float] = time.monotonic, max_value_bytes: int = DEFAULT_MAX_VALUE_BYTES
    ) -> None:
        self._clock = clock
        self._max_value = max_value_bytes
        self._values: dict[str, tuple[bytes, float | None]] = {}

    def _live(self, key: str) -> bytes | None:
        entry = self._values.get(validate_key(key))
        if entry is None:
            return None
        value, expires = entry
        if expires is not None and self._clock() >= expires:
            del self._values[key]
            return None
        return value

    async def get(self, key: str) -> bytes | None:
        return self._live(key)

    async def set(self, key: str, value: bytes | str, ttl: Ttl = None) -> bool:
        milliseconds = ttl_milliseconds(ttl)
        validate_value(value, self._max_value)
        data = value.encode() if isinstance(value, str) else bytes(value)
        expires = None if milliseconds is None else self._clock() + milliseconds / 1000
        self._values[validate_key(key)] = (data, expires)
        return True

    async def delete(self, *keys: str) -> int:
        present = [key for key in dict.fromkeys(keys) if self._live(key) is not None]
        for key in present:
            del self._values[key]
        return len(present)

    async def exists(self, key: str) -> bool:
        return self._live(key) is not None

    @overload
    async def get_json(self, key: str, model: None = None) -> Any: ...
    @overload
    async def get_json(self, key: str, model: type[T]) -> T | None: ...
    async def get_json(self, key: str, model: type[T] | None = None) -> T | Any | None:
        raw = self._live(key)
        if raw is None:
            return None
        try:
            return decode_json(raw, model)
        except (orjson.JSONDecodeError, pydantic.ValidationError):
            del self._values[key]
            return None

    async def set_json(self, key: str, value: Any, ttl: Ttl = None) -> bool:
        return await self.set(key, encode_json(value), ttl)

    async def get_many(self, keys: Iterable[str]) -> dict[str, bytes | None]:
        return {key: self._live(key) for key in dict.fromkeys(keys)}

    async def set_many(self, mapping: Mapping[str, bytes | str], ttl: Ttl = None) -> bool:
        ttl_milliseconds(ttl)
        for key, value in mapping.items():
            validate_key(key)
            validate_value(value, self._max_value)
        for key, value in mapping.items():
            await self.set(key, value, ttl)
        return True

    async def health_check(self) -> HealthStatus:
        return HealthStatus("redis", "ok", 0.0)
