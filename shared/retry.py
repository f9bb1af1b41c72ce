"""Retry sync and async calls with exponential backoff, built on tenacity.

``delay = base_delay * 2**attempt`` (by default 3 calls in all: 2 s, then 4 s, between them), optionally with
full jitter and a cap; a :class:`~shared.errors.RetryableError`'s ``retry_after`` is honoured; an optional total
``deadline`` is never passed, not even when a Retry-After asks for it. Every retry is logged with the attempt,
the delay, the error and the job id, never with the function's arguments (they can hold keys or signed URLs).
The last exception is re-raised unchanged, and an exception not named in ``retry_on`` is never retried.

The defaults are written once, in :class:`RetryPolicy`'s signature; :func:`retry_with_backoff` passes on only
the arguments it is given. :func:`set_testing` (after ``stamina.set_testing``) makes every wait zero for a test
session, so code keeps its production delays and its tests stay fast.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import random
import time
from collections.abc import Awaitable, Callable
from enum import Enum
from typing import Any, Final, Literal, ParamSpec, TypeVar, cast, overload

import tenacity

from shared.errors import PipelineError, RetryableError, ValidationError
from shared.telemetry import instruments

__all__ = ["RetryPolicy", "is_testing", "retry_with_backoff", "set_testing"]

P = ParamSpec("P")
R = TypeVar("R")

SyncSleep = Callable[[float], None]
AsyncSleep = Callable[[float], Awaitable[None]]


class _Unset(Enum):
    """The marker of an argument not given, so that its default stays RetryPolicy's."""

    UNSET = "unset"


UNSET: Final = _Unset.UNSET
_testing = False


def set_testing(testing: bool = True) -> None:
    """Make every retry wait zero seconds (``True``), or the policy's delays again (``False``).

    Call it in a test session (a fixture or conftest) instead of shortening the delays in the code under test:
    the attempts, the ``retry_on`` filter and the logging stay as in production.
    """
    global _testing  # noqa: PLW0603 - one process-wide switch, read on every wait
    _testing = testing


def is_testing() -> bool:
    """Return whether :func:`set_testing` has turned the waits off."""
    return _testing


class RetryPolicy:
    """Compute waits and decide when to stop; shared by the sync and async paths.

    Pass one to ``retry_with_backoff(policy=...)`` to share it between functions, or to seed its jitter
    (``rng=random.Random(7)``) so a test sees the same waits every run. Its signature holds the one copy of
    the defaults (3 attempts, 2 s base delay, no cap, no jitter, no deadline).
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
        """Return the seconds to wait before the next attempt (zero under :func:`set_testing`)."""
        if _testing:
            return 0.0
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
    max_attempts: int | Literal[_Unset.UNSET] = UNSET,
    base_delay: float | Literal[_Unset.UNSET] = UNSET,
    retry_on: tuple[type[BaseException], ...] = (RetryableError,),
    max_delay: float | Literal[_Unset.UNSET] | None = UNSET,
    jitter: bool | Literal[_Unset.UNSET] = UNSET,
    deadline: float | Literal[_Unset.UNSET] | None = UNSET,
    logger: logging.Logger | None = None,
    sleep: SyncSleep | AsyncSleep | None = None,
    policy: RetryPolicy | None = None,
) -> Callable[[Callable[P, R]], Callable[P, R]]: ...


def retry_with_backoff(
    __func: Callable[P, R] | None = None,
    *,
    max_attempts: int | Literal[_Unset.UNSET] = UNSET,
    base_delay: float | Literal[_Unset.UNSET] = UNSET,
    retry_on: tuple[type[BaseException], ...] = (RetryableError,),
    max_delay: float | Literal[_Unset.UNSET] | None = UNSET,
    jitter: bool | Literal[_Unset.UNSET] = UNSET,
    deadline: float | Literal[_Unset.UNSET] | None = UNSET,
    logger: logging.Logger | None = None,
    sleep: SyncSleep | AsyncSleep | None = None,
    policy: RetryPolicy | None = None,
) -> Callable[P, R] | Callable[[Callable[P, R]], Callable[P, R]]:
    """Decorate a sync or async function so that it retries with exponential backoff.

    Each policy argument left out takes :class:`RetryPolicy`'s default (3 calls, 2 s then 4 s between them).

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
            ``jitter`` and ``deadline``; passing it with any of them, even one equal to its default, is refused.
            Its ``rng`` seeds the jitter.

    Returns:
        The decorated function, with the same signature.

    Raises:
        ValidationError: a negative delay, fewer than one attempt, a deadline that is not positive, or a
            ``policy`` together with the arguments it replaces.
    """
    arguments: dict[str, Any] = {
        "max_attempts": max_attempts,
        "base_delay": base_delay,
        "max_delay": max_delay,
        "jitter": jitter,
        "deadline": deadline,
    }
    given = {name: value for name, value in arguments.items() if value is not UNSET}
    if policy is None:
        policy = RetryPolicy(**given)
    elif given:
        msg = (
            f"pass either policy= or {', '.join(sorted(given))}, not both: "
            "build the RetryPolicy with every setting you want instead"
        )
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
