"""The rules the money and job modules share with their fakes: limits at their edges, typed fields, log lines."""

from __future__ import annotations

import inspect
import logging
import uuid
from collections.abc import Callable
from decimal import Decimal

import pytest

from shared.cost_tracking import BudgetStatus, warn_overrun, warn_overshoot
from shared.errors import ValidationError
from shared.models import StageName
from shared.rules import check_job_input, check_names, check_page_limit, check_progress, check_text

JOB = uuid.UUID(int=7)
RESERVATION = uuid.UUID(int=9)


@pytest.mark.parametrize(("progress", "remaining"), [(0, None), (100, 0), (1, 1), (99, 3600)])
def test_progress_at_its_edges_is_accepted(progress: int, remaining: int | None) -> None:
    check_progress(progress, remaining)


@pytest.mark.parametrize(("progress", "remaining"), [(-1, None), (101, None), (True, None), (50, -1)])
def test_progress_past_its_edges_is_refused(progress: int, remaining: int | None) -> None:
    with pytest.raises(ValidationError) as caught:
        check_progress(progress, remaining)
    assert "progress" == caught.value.field


@pytest.mark.parametrize("limit", [1, 1000])
def test_page_limit_at_its_edges_is_accepted(limit: int) -> None:
    check_page_limit(limit)


@pytest.mark.parametrize("limit", [0, 1001])
def test_page_limit_past_its_edges_is_refused(limit: int) -> None:
    with pytest.raises(ValidationError) as caught:
        check_page_limit(limit)
    assert "limit" == caught.value.field


@pytest.mark.parametrize("text", ["", " ", "\n"])
def test_empty_text_is_refused_with_its_field(text: str) -> None:
    with pytest.raises(ValidationError) as caught:
        check_text(text, "video_url")
    assert "video_url" == caught.value.field
    check_text("x", "video_url")


@pytest.mark.parametrize(
    ("audio", "prompt", "field"), [("", "p", "audio_url"), (" ", "p", "audio_url"), ("a", "", "user_prompt")]
)
def test_job_input_names_the_empty_field(audio: str, prompt: str, field: str) -> None:
    with pytest.raises(ValidationError) as caught:
        check_job_input(audio, prompt, None)
    assert field == caught.value.field


def test_job_input_returns_the_budget_as_money() -> None:
    assert check_job_input("a", "p", None) is None
    assert Decimal("1.5000") == check_job_input("a", "p", 1.5)


def test_names_at_their_edges_are_accepted() -> None:
    assert StageName.COMPOSITION == check_names("composition", "a")
    assert StageName.COMPOSITION == check_names(StageName.COMPOSITION, "a" * 100, "k" * 200)
    assert StageName.COMPOSITION == check_names(StageName.COMPOSITION, "a", "k")


@pytest.mark.parametrize(
    ("stage", "api", "key", "field"),
    [
        ("dancing", "a", None, "stage_name"),
        ("composition", "", None, "api_name"),
        ("composition", "a" * 101, None, "api_name"),
        ("composition", "a", "", "idempotency_key"),
        ("composition", "a", "k" * 201, "idempotency_key"),
    ],
)
def test_names_past_their_edges_are_refused(stage: str, api: str, key: str | None, field: str) -> None:
    with pytest.raises(ValidationError) as caught:
        check_names(stage, api, key)
    assert field == caught.value.field


def test_budget_status_figures() -> None:
    status = BudgetStatus(JOB, spent=Decimal(4), reserved=Decimal(3), limit=Decimal(10), overrun=Decimal(1))
    assert (Decimal(3), Decimal(0), Decimal(1)) == (status.available, status.over_limit, status.overrun)
    assert status.allows(Decimal(3))
    assert not status.allows(Decimal("3.0001"))
    over = BudgetStatus(JOB, spent=Decimal(12), reserved=Decimal(1), limit=Decimal(10))
    assert (Decimal(0), Decimal(2), Decimal(0)) == (over.available, over.over_limit, over.overrun)


def test_overrun_is_one_warning_line_with_both_figures(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="shared.cost_tracking"):
        warn_overrun(JOB, RESERVATION, estimate=Decimal(4), actual=Decimal(7), spent=Decimal(9), limit=Decimal(10))
    (record,) = caplog.records
    assert (
        f"job {JOB}: actual cost 7 is above its estimate 4 (overrun 3); spent 9 of its budget 10" == record.getMessage()
    )
    assert logging.WARNING == record.levelno
    fields = {
        name: getattr(record, name)
        for name in ("job_id", "reservation_id", "estimated_cost", "actual_cost", "overrun", "spent", "limit")
    }
    assert {
        "job_id": str(JOB),
        "reservation_id": str(RESERVATION),
        "estimated_cost": "4",
        "actual_cost": "7",
        "overrun": "3",
        "spent": "9",
        "limit": "10",
    } == fields


def test_overrun_past_the_budget_says_so(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="shared.cost_tracking"):
        warn_overrun(JOB, RESERVATION, estimate=Decimal(4), actual=Decimal(12), spent=Decimal(12), limit=Decimal(10))
        warn_overrun(JOB, RESERVATION, estimate=Decimal(4), actual=Decimal(10), spent=Decimal(10), limit=Decimal(10))
    first, at_the_limit = (r.getMessage() for r in caplog.records)
    assert first.endswith("spent 12 of its budget 10; over its budget, further reservations are refused")
    assert at_the_limit.endswith("spent 10 of its budget 10")


def test_overshoot_warning_carries_its_figures(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="shared.cost_tracking"):
        warn_overshoot(JOB, Decimal(12), Decimal(10), estimate=None, actual=Decimal(3))
        warn_overshoot(JOB, Decimal(12), Decimal(10), estimate=Decimal(2), actual=Decimal(3))
    first, second = caplog.records
    assert f"job {JOB} spent 12, over its budget 10; further reservations are refused" == first.getMessage()
    assert logging.WARNING == first.levelno
    fields = [
        tuple(getattr(r, name) for name in ("job_id", "spent", "limit", "estimated_cost", "actual_cost"))
        for r in (first, second)
    ]
    assert [(str(JOB), "12", "10", None, "3"), (str(JOB), "12", "10", "2", "3")] == fields


HUGE = 10**5000  # more digits than Python will write out (4300): repr() itself raises ValueError


async def _entry_points(amount: object) -> None:
    """Hand ``amount`` to each entry point that takes money (the fakes share to_money with the real classes)."""
    from shared.testing import FakeCostTracker  # noqa: PLC0415 - kept with the one test that needs it

    job = uuid.uuid4()
    tracker = FakeCostTracker()
    tracker.add_job(job)
    calls: list[Callable[[], object]] = [
        lambda: check_job_input("s3://a", "prompt", amount),  # type: ignore[arg-type] # hostile input on purpose
        lambda: FakeCostTracker(default_budget=amount),  # type: ignore[arg-type]
        lambda: tracker.track_cost(job, StageName.AUDIO_ANALYSIS, "openai", amount),  # type: ignore[arg-type]
        lambda: tracker.get_budget(job, amount),  # type: ignore[arg-type]
        lambda: tracker.reserve(job, StageName.AUDIO_ANALYSIS, "openai", amount).__aenter__(),  # type: ignore[arg-type]
        lambda: tracker.reserve(job, StageName.AUDIO_ANALYSIS, "openai", 1, amount).__aenter__(),  # type: ignore[arg-type]
    ]
    for call in calls:
        with pytest.raises(ValidationError, match=r"more than the ledger holds|characters long"):
            result = call()
            if inspect.isawaitable(result):
                await result


@pytest.mark.parametrize("amount", [HUGE, -HUGE, "9" * 5000], ids=["huge-int", "huge-negative-int", "long-text"])
async def test_an_amount_too_large_to_write_out_is_a_validation_error_at_every_entry_point(amount: object) -> None:
    await _entry_points(amount)
