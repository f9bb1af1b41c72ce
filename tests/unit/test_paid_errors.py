"""Provider refusals become RetryableError in one place: HTTP answers, Retry-After, x-ratelimit-*, SDK errors."""

from __future__ import annotations

import pickle

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.errors import RetryableError, ValidationError
from shared.paid import (
    ProviderOverloadedError,
    ProviderRateLimitedError,
    parse_rate_limit_headers,
    parse_retry_after,
    provider_error,
)
from shared.paid.errors import RateLimiterUnavailableError, RateLimitWaitError, UnknownPriceError, parse_duration

NOW = 1445412480.0  # Wed, 21 Oct 2015 07:28:00 GMT
REQUEST = httpx.Request("POST", "https://api.openai.com/v1/chat/completions")


def answer(status: int, **headers: str) -> httpx.Response:
    return httpx.Response(status, headers=headers, request=REQUEST)


# Shaped like openai's exceptions (openai/_exceptions.py): APIStatusError carries status_code and the response.
class RateLimitError(Exception):
    def __init__(self, response: httpx.Response) -> None:
        super().__init__("Error code: 429")
        self.response = response
        self.status_code = response.status_code
        self.body = {"error": {"type": "requests"}}


class InternalServerError(RateLimitError):
    pass


class APITimeoutError(Exception):
    def __init__(self, request: httpx.Request) -> None:
        super().__init__("Request timed out.")
        self.request = request


# Shaped like replicate.exceptions.ReplicateError: status, title, detail, no headers.
class ReplicateError(Exception):
    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.title = "Too Many Requests"
        self.detail = detail


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, None),
        ("", None),
        ("7", 7.0),
        ("0.5", 0.5),
        ("-3", 0.0),
        ("soon", None),
        ("nan", None),
        ("Wed, 21 Oct 2015 07:28:10 GMT", 10.0),
        ("Wed, 21 Oct 2015 07:27:00 GMT", 0.0),
        ("1e9", 86400.0),
    ],
)
def test_retry_after_reads_seconds_and_http_dates(header: str | None, expected: float | None) -> None:
    assert expected == parse_retry_after(header, now=NOW)


@pytest.mark.parametrize(
    ("value", "expected"),
    [("1s", 1.0), ("6m0s", 360.0), ("20ms", 0.02), ("1h2m3s", 3723.0), ("0.25", 0.25), ("x", None), ("5s!", None)],
)
def test_rate_limit_reset_durations_are_read(value: str, expected: float | None) -> None:
    assert expected == parse_duration(value)


@given(st.text(max_size=40))
def test_retry_after_never_fails_on_any_text(text: str) -> None:
    seconds = parse_retry_after(text, now=NOW)
    assert seconds is None or 0.0 <= seconds <= 86400.0


@given(st.text(max_size=40))
def test_durations_never_fail_on_any_text(text: str) -> None:
    seconds = parse_duration(text)
    assert seconds is None or 0.0 <= seconds <= 86400.0


def test_429_with_retry_after_seconds_is_rate_limited() -> None:
    error = provider_error(answer(429, **{"Retry-After": "3"}), provider="openai")
    assert isinstance(error, ProviderRateLimitedError)
    assert isinstance(error, RetryableError)
    assert 3.0 == error.retry_after
    assert "openai" in str(error)


def test_503_with_an_http_date_is_overloaded() -> None:
    error = provider_error(answer(503, **{"Retry-After": "Wed, 21 Oct 2015 07:28:30 GMT"}), now=NOW)
    assert isinstance(error, ProviderOverloadedError)
    assert 30.0 == error.retry_after
    assert 503 == error.status


def test_x_ratelimit_reset_is_the_wait_when_retry_after_is_absent() -> None:
    headers = {
        "x-ratelimit-limit-requests": "500",
        "x-ratelimit-remaining-requests": "499",
        "x-ratelimit-reset-requests": "120ms",
        "x-ratelimit-limit-tokens": "30000",
        "x-ratelimit-remaining-tokens": "0",
        "x-ratelimit-reset-tokens": "6m0s",
    }
    error = provider_error(answer(429, **headers))
    assert error is not None
    assert 360.0 == error.retry_after
    parsed = parse_rate_limit_headers(headers)
    assert (500, 30000, 499, 0) == (
        parsed.limit_requests,
        parsed.limit_tokens,
        parsed.remaining_requests,
        parsed.remaining_tokens,
    )


def test_retry_after_ms_is_read_when_retry_after_is_absent() -> None:
    error = provider_error(answer(429, **{"retry-after-ms": "250"}))
    assert error is not None
    assert 0.25 == error.retry_after


@pytest.mark.parametrize("status", [200, 400, 401, 404, 422, 500])
def test_other_statuses_are_not_passing_refusals(status: int) -> None:
    assert provider_error(answer(status, **{"Retry-After": "1"})) is None


def test_an_httpx_status_error_is_mapped_through_its_response() -> None:
    response = answer(429, **{"Retry-After": "2"})
    exc = httpx.HTTPStatusError("429", request=REQUEST, response=response)
    error = provider_error(exc, provider="replicate")
    assert isinstance(error, ProviderRateLimitedError)
    assert exc is error.__cause__
    assert 2.0 == error.retry_after


def test_openai_rate_limit_error_keeps_its_retry_after() -> None:
    error = provider_error(RateLimitError(answer(429, **{"retry-after": "4"})), provider="openai")
    assert isinstance(error, ProviderRateLimitedError)
    assert 4.0 == error.retry_after


def test_openai_503_internal_server_error_is_overloaded() -> None:
    error = provider_error(InternalServerError(answer(503)), provider="openai")
    assert isinstance(error, ProviderOverloadedError)


def test_openai_timeout_is_overloaded_without_a_status() -> None:
    error = provider_error(APITimeoutError(REQUEST), provider="openai")
    assert isinstance(error, ProviderOverloadedError)
    assert error.status is None


def test_replicate_429_is_rate_limited_and_its_other_errors_are_not() -> None:
    assert isinstance(provider_error(ReplicateError(429, "throttled")), ProviderRateLimitedError)
    assert provider_error(ReplicateError(422, "bad input")) is None


def test_errors_survive_a_pickle_round_trip() -> None:
    for error in (
        ProviderRateLimitedError(provider="openai", retry_after=1.5),
        ProviderOverloadedError(provider="replicate", status=503),
        RateLimitWaitError(scope="openai/gpt-4o", retry_after=2.0),
        RateLimiterUnavailableError(retry_after=0.5),
        UnknownPriceError(provider="openai", model="gpt-9", unit="foo_tokens"),
    ):
        copy = pickle.loads(pickle.dumps(error))  # noqa: S301 - our own bytes
        assert (type(error), str(error), error.code) == (type(copy), str(copy), copy.code)


def test_unknown_price_is_a_validation_error_naming_model_and_unit() -> None:
    error = UnknownPriceError(provider="openai", model="gpt-9", unit="foo_tokens")
    assert isinstance(error, ValidationError)
    assert "gpt-9" in str(error)
    assert "foo_tokens" in str(error)
