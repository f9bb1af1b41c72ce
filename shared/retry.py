"""Retry sync and async calls with exponential backoff, built on tenacity.

``delay = base_delay * 2**attempt`` (2, 4, 8 s by default), optionally with full jitter and a cap; a
:class:`~shared.errors.RetryableError`'s ``retry_after`` is honoured; an optional total ``deadline`` is never
passed, not even when a Retry-After asks for it. Every retry is logged with the attempt, the delay, the error
and the job id, never with the function's arguments (they can hold keys or signed URLs). The last exception
is re-raised unchanged, and an exception not named in ``retry_on`` is never retried.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any, ParamSpec, TypeVar, cast, overload

import tenacity

from shared.errors import PipelineError, RetryableError, ValidationError
from shared.telemetry import instruments

__all__ = ["RetryPolicy", "retry_with_backoff"]

P = ParamSpec("P")
R = TypeVar("R")

SyncSleep = Callable[[float], None]
AsyncSleep = Callable[[float], Awaitable[None]]


class RetryPolicy:
    """Compute waits and decide when to stop; shared by the sync and async paths.

    Pass one to ``retry_with_backoff(policy=...)`` to share it between functions, or to seed its jitter
    (``rng=random.Random(7)``) so a test sees the same waits every run. The defaults are those of
    :func:`retry_with_backoff`.
    """

    __slots__ = ("base_delay", "deadline", "jitter", "max_attempts", "max_delay", "rng")

    def __init__(
        self,
        *,
        max_attempts: int = 3,
        base_delay: float = 2.0,
        max_delay: float | None = None,
        jitter: bool = False,
        deadline: float | None = None,
        rng: random.Random | None = None,
    ) -> None:
        if max_attempts < 1:
            raise ValidationError("max_attempts must be at least 1", field="max_attempts")
        if base_delay < 0 or (max_delay is not None and max_delay < 0):
            raise ValidationError("delays must not be negative", field="base_delay")
        if deadline is not None and deadline <= 0:
            raise ValidationError("deadline must be positive", field="deadline")
        self.max_attempts = max_attempts
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.jitter = jitter
        self.deadline = deadline
        self.rng = rng or random.Random()  # noqa: S311 - jitter, not cryptography

    def wait(self, retry_state: tenacity.RetryCallState) -> float:
        """Return the seconds to wait before the next attempt."""
        attempt = retry_state.attempt_number - 1  # 0 for the first retry
        delay: float = self.base_delay * 2.0**attempt
        if self.max_delay is not None:
            delay = min(delay, self.max_delay)
        if self.jitter:
            delay = self.rng.uniform(0, delay)
        error = _error_of(retry_state)
        retry_after = error.retry_after if isinstance(error, RetryableError) else None
        if retry_after is not None and retry_after > delay:
            delay = float(retry_after)
        return delay

    def stop(self, retry_state: tenacity.RetryCallState) -> bool:
        """Stop after the last attempt, or when waiting would pass the deadline."""
        if retry_state.attempt_number >= self.max_attempts:
            return True
        if self.deadline is None:
            return False
        upcoming = retry_state.upcoming_sleep or 0.0
        elapsed = retry_state.seconds_since_start or 0.0
        return elapsed + upcoming > self.deadline


_DEFAULTS = (3, 2.0, None, False, None)


def _error_of(retry_state: tenacity.RetryCallState) -> BaseException | None:
    outcome = retry_state.outcome
    return outcome.exception() if outcome is not None and outcome.failed else None


def _copyable(func: Callable[..., Any]) -> tuple[str, ...]:
    """Return the metadata functools.wraps can copy (a mock's ``__qualname__`` is a Mock, which it refuses)."""
    kinds = (str, dict, tuple, type(None))
    return tuple(name for name in functools.WRAPPER_ASSIGNMENTS if isinstance(getattr(func, name, None), kinds))


def _log_retry(logger: logging.Logger, name: str) -> Callable[[tenacity.RetryCallState], None]:
    def before_sleep(retry_state: tenacity.RetryCallState) -> None:
        if (metrics := instruments()) is not None:
            metrics.retries.add(1, {"function": name})
        error = _error_of(retry_state)
        job_id = getattr(error, "job_id", None) if isinstance(error, PipelineError) else None
        extra: dict[str, Any] = {
            "attempt": retry_state.attempt_number,
            "delay_seconds": round(retry_state.upcoming_sleep, 3),
            "error_type": type(error).__name__,
            "error": str(error),
            "function": name,
        }
        if job_id is not None:
            extra["job_id"] = str(job_id)
        logger.warning(
            "retrying %s after %s (attempt %d, waiting %.2f s)",
            name,
            type(error).__name__,
            retry_state.attempt_number,
            retry_state.upcoming_sleep,
            extra=extra,
        )

    return before_sleep


@overload
def retry_with_backoff(
    __func: Callable[P, R],
) -> Callable[P, R]: ...


@overload
def retry_with_backoff(
    *,
    max_attempts: int = 3,
    base_delay: float = 2.0,
    retry_on: tuple[type[BaseException], ...] = (RetryableError,),
    max_delay: float | None = None,
    jitter: bool = False,
    deadline: float | None = None,
    logger: logging.Logger | None = None,
    sleep: SyncSleep | AsyncSleep | None = None,
    policy: RetryPolicy | None = None,
) -> Callable[[Callable[P, R]], Callable[P, R]]: ...


def retry_with_backoff(
    __func: Callable[P, R] | None = None,
    *,
    max_attempts: int = 3,
    base_delay: float = 2.0,
    retry_on: tuple[type[BaseException], ...] = (RetryableError,),
    max_delay: float | None = None,
    jitter: bool = False,
    deadline: float | None = None,
    logger: logging.Logger | None = None,
    sleep: SyncSleep | AsyncSleep | None = None,
    policy: RetryPolicy | None = None,
) -> Callable[P, R] | Callable[[Callable[P, R]], Callable[P, R]]:
    """Decorate a sync or async function so that it retries with exponential backoff.

    Args:
        max_attempts: calls in all, the first included.
        base_delay: seconds before the first retry; doubled for each one after.
        retry_on: exception types that are retried; anything else propagates at once.
        max_delay: cap on one wait (a Retry-After may still ask for more, up to the deadline).
        jitter: wait a random time between 0 and the computed delay ("full jitter").
        deadline: seconds in all, from the first call, past which no retry waits.
        logger: where retries are logged (default: ``shared.retry``).
        sleep: the sleep to use (a coroutine function for async code); tests pass one that does not sleep.
        policy: a :class:`RetryPolicy` to use instead of ``max_attempts``, ``base_delay``, ``max_delay``,
            ``jitter`` and ``deadline`` (passing both is refused); its ``rng`` seeds the jitter.

    Returns:
        The decorated function, with the same signature.

    Raises:
        ValidationError: a negative delay, fewer than one attempt, a deadline that is not positive, or a
            ``policy`` together with the arguments it replaces.
    """
    given = (max_attempts, base_delay, max_delay, jitter, deadline)
    if policy is None:
        policy = RetryPolicy(
            max_attempts=max_attempts, base_delay=base_delay, max_delay=max_delay, jitter=jitter, deadline=deadline
        )
    elif given != _DEFAULTS:
        msg = "pass either policy= or max_attempts/base_delay/max_delay/jitter/deadline, not both"
        raise ValidationError(msg, field="policy")
    log = logger or logging.getLogger("shared.retry")

    def decorate(func: Callable[P, R]) -> Callable[P, R]:
        name = getattr(func, "__qualname__", None)
        name = name if isinstance(name, str) else repr(func)
        common: dict[str, Any] = {
            "wait": policy.wait,
            "stop": policy.stop,
            "retry": tenacity.retry_if_exception_type(retry_on),
            "reraise": True,
            "before_sleep": _log_retry(log, name),
        }
        if inspect.iscoroutinefunction(func):
            async_func = cast("Callable[P, Awaitable[Any]]", func)
            async_sleep = cast("AsyncSleep", sleep) if sleep is not None else asyncio.sleep

            @functools.wraps(func, assigned=_copyable(func))
            async def async_wrapper(*args: P.args, **kwargs: P.kwargs) -> Any:
                retrying = tenacity.AsyncRetrying(sleep=async_sleep, **common)
                return await retrying(async_func, *args, **kwargs)

            return cast("Callable[P, R]", async_wrapper)

        sync_sleep = cast("SyncSleep", sleep) if sleep is not None else time.sleep

        @functools.wraps(func, assigned=_copyable(func))
        def sync_wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            retrying = tenacity.Retrying(sleep=sync_sleep, **common)
            return retrying(func, *args, **kwargs)

        return sync_wrapper

    if __func is not None:
        return decorate(__func)
    return decorate
