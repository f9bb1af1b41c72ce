"""retry_with_backoff: delays, jitter, caps, Retry-After, deadlines, logging, sync and async; no real sleep."""

from __future__ import annotations

import logging
import random

import pytest

from shared.errors import RetryableError, ValidationError
from shared.retry import RetryPolicy, is_testing, retry_with_backoff, set_testing


class Sleeps:
    """Record the delays instead of sleeping."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)

    async def async_sleep(self, seconds: float) -> None:
        self.delays.append(seconds)


class Flaky:
    """Fail with the given errors in turn, then return 'ok'."""

    def __init__(self, *errors: BaseException) -> None:
        self.errors = list(errors)
        self.calls = 0

    def __call__(self, *args: object, **kwargs: object) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "ok"


async def test_async_function_is_retried_with_doubling_delays() -> None:
    sleeps, flaky = Sleeps(), Flaky(RetryableError("a"), RetryableError("b"))

    @retry_with_backoff(sleep=sleeps.async_sleep)
    async def call() -> str:
        return flaky()

    assert "ok" == await call()
    assert [2.0, 4.0] == sleeps.delays
    assert 3 == flaky.calls


def test_sync_function_is_retried_with_doubling_delays() -> None:
    sleeps, flaky = Sleeps(), Flaky(RetryableError("a"), RetryableError("b"), RetryableError("c"))
    call = retry_with_backoff(max_attempts=4, base_delay=2.0, sleep=sleeps)(flaky)
    assert "ok" == call()
    assert [2.0, 4.0, 8.0] == sleeps.delays


def test_last_exception_is_reraised_unchanged() -> None:
    last = RetryableError("third")
    flaky = Flaky(RetryableError("first"), RetryableError("second"), last)
    call = retry_with_backoff(sleep=Sleeps())(flaky)
    with pytest.raises(RetryableError) as caught:
        call()
    assert last is caught.value
    assert 3 == flaky.calls


def test_an_error_not_named_is_never_retried() -> None:
    flaky = Flaky(ValidationError("bad input"))
    call = retry_with_backoff(sleep=Sleeps())(flaky)
    with pytest.raises(ValidationError):
        call()
    assert 1 == flaky.calls


def test_retry_on_names_the_retried_types() -> None:
    sleeps, flaky = Sleeps(), Flaky(ConnectionError("reset"))
    call = retry_with_backoff(retry_on=(ConnectionError,), base_delay=0.5, sleep=sleeps)(flaky)
    assert "ok" == call()
    assert [0.5] == sleeps.delays


def test_delay_is_capped() -> None:
    sleeps = Sleeps()
    flaky = Flaky(*(RetryableError(str(i)) for i in range(4)))
    call = retry_with_backoff(max_attempts=5, base_delay=2.0, max_delay=5.0, sleep=sleeps)(flaky)
    assert "ok" == call()
    assert [2.0, 4.0, 5.0, 5.0] == sleeps.delays


def test_full_jitter_stays_between_zero_and_the_delay() -> None:
    policy = RetryPolicy(
        max_attempts=10, base_delay=1.0, max_delay=None, jitter=True, deadline=None, rng=random.Random(7)
    )
    sleeps = Sleeps()
    flaky = Flaky(*(RetryableError(str(i)) for i in range(5)))
    call = retry_with_backoff(max_attempts=6, base_delay=1.0, jitter=True, sleep=sleeps)(flaky)
    assert "ok" == call()
    assert all(0 <= delay <= 2**i for i, delay in enumerate(sleeps.delays))
    assert len(set(sleeps.delays)) > 1
    assert policy.jitter


def test_a_policy_with_a_seeded_rng_gives_the_same_waits_every_time() -> None:
    """Before: retry_with_backoff took no RetryPolicy, so its rng seam could not be used."""
    runs = []
    for _ in range(2):
        sleeps = Sleeps()
        policy = RetryPolicy(max_attempts=6, base_delay=1.0, jitter=True, rng=random.Random(7))
        call = retry_with_backoff(policy=policy, sleep=sleeps)(Flaky(*(RetryableError(str(i)) for i in range(5))))
        assert "ok" == call()
        runs.append(sleeps.delays)
    expected = random.Random(7)
    assert [expected.uniform(0, 2.0**i) for i in range(5)] == runs[0]
    assert runs[0] == runs[1]


def test_a_policy_and_the_arguments_it_replaces_are_refused_together() -> None:
    with pytest.raises(ValidationError, match="either policy"):
        retry_with_backoff(policy=RetryPolicy(), max_attempts=5)


def test_retry_after_is_honoured_when_longer_than_the_backoff() -> None:
    sleeps, flaky = Sleeps(), Flaky(RetryableError("slow down", retry_after=30), RetryableError("again"))
    call = retry_with_backoff(sleep=sleeps)(flaky)
    assert "ok" == call()
    assert [30.0, 4.0] == sleeps.delays


def test_retry_after_never_waits_past_the_deadline() -> None:
    sleeps, flaky = Sleeps(), Flaky(RetryableError("slow down", retry_after=60))
    call = retry_with_backoff(max_attempts=5, deadline=10, sleep=sleeps)(flaky)
    with pytest.raises(RetryableError):
        call()
    assert [] == sleeps.delays
    assert 1 == flaky.calls


def test_deadline_stops_retries_whose_backoff_would_pass_it() -> None:
    sleeps = Sleeps()
    flaky = Flaky(*(RetryableError(str(i)) for i in range(5)))
    call = retry_with_backoff(max_attempts=6, base_delay=2.0, deadline=7.0, sleep=sleeps)(flaky)
    with pytest.raises(RetryableError):
        call()
    assert [2.0, 4.0] == sleeps.delays  # the next wait (8 s) would pass the 7 s deadline


def test_every_retry_is_logged_with_attempt_delay_error_and_job_but_no_arguments(
    caplog: pytest.LogCaptureFixture,
) -> None:
    flaky = Flaky(RetryableError("upstream 503", job_id="job-42"))
    call = retry_with_backoff(sleep=Sleeps())(flaky)
    with caplog.at_level(logging.WARNING, logger="shared.retry"):
        assert "ok" == call("sk-secret-argument", token="signed-url-token")
    [record] = caplog.records
    fields = vars(record)
    assert 1 == fields["attempt"]
    assert 2.0 == fields["delay_seconds"]
    assert "RetryableError" == fields["error_type"]
    assert "job-42" == fields["job_id"]
    text = record.getMessage() + str(vars(record))
    assert "sk-secret-argument" not in text
    assert "signed-url-token" not in text


def test_decorator_works_without_parentheses_and_keeps_the_name() -> None:
    @retry_with_backoff
    def plain() -> int:
        return 1

    assert 1 == plain()
    assert "plain" == plain.__name__


@pytest.mark.parametrize(
    "kwargs",
    [{"max_attempts": 0}, {"base_delay": -1.0}, {"max_delay": -1.0}, {"deadline": 0.0}],
)
def test_nonsense_policies_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValidationError, match="must"):
        retry_with_backoff(**kwargs)  # type: ignore[call-overload]  # deliberately loose test input


async def test_a_mock_of_a_paid_api_can_be_wrapped_and_retried() -> None:
    """Module authors mock the paid APIs with autospec; its method's metadata is not a string."""
    from unittest import mock  # noqa: PLC0415

    class Api:
        async def call(self) -> str:
            return "real"

    api = mock.create_autospec(Api, instance=True)
    api.call.side_effect = [RetryableError("busy"), "answer"]

    async def no_sleep(_: float) -> None:
        return None

    wrapped = retry_with_backoff(base_delay=0, sleep=no_sleep)(api.call)
    assert "answer" == await wrapped()
    assert 2 == api.call.call_count


def test_the_defaults_are_three_calls_two_then_four_seconds() -> None:
    waits: list[float] = []
    call = retry_with_backoff(sleep=waits.append)(Flaky(RetryableError("a"), RetryableError("b"), RetryableError("c")))
    with pytest.raises(RetryableError, match="c"):
        call()
    assert [2.0, 4.0] == waits


@pytest.mark.parametrize("argument", ["max_attempts", "base_delay", "max_delay", "jitter", "deadline"])
def test_a_policy_with_any_other_setting_is_refused_even_one_equal_to_its_default(argument: str) -> None:
    defaults = {"max_attempts": 3, "base_delay": 2.0, "max_delay": None, "jitter": False, "deadline": None}
    with pytest.raises(ValidationError, match=f"either policy= or {argument}"):
        retry_with_backoff(policy=RetryPolicy(), **{argument: defaults[argument]})  # type: ignore[call-overload]  # the mix under test


def test_set_testing_makes_every_wait_zero_and_keeps_the_attempts() -> None:
    waits: list[float] = []
    call = retry_with_backoff(max_attempts=3, base_delay=5.0, sleep=waits.append)(
        Flaky(RetryableError("a", retry_after=9.0), RetryableError("b"))
    )
    set_testing()
    try:
        assert is_testing()
        call()
    finally:
        set_testing(False)
    assert [0.0, 0.0] == waits
    assert not is_testing()


def test_the_retry_testing_fixture_turns_the_waits_off(retry_testing: None) -> None:
    del retry_testing
    waits: list[float] = []
    retry_with_backoff(sleep=waits.append)(Flaky(RetryableError("a")))()
    assert [0.0] == waits
