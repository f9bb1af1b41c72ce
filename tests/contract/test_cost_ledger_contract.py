"""One contract for every CostLedger: the PostgreSQL CostTracker and the in-memory FakeCostTracker."""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from shared.cost_tracking import CostLedger, CostTracker, to_money
from shared.database import DatabaseClient, init_database
from shared.errors import BudgetExceededError, InvalidStateError, JobNotFoundError, ValidationError
from shared.jobs import JobRepository
from shared.maintenance import MaintenancePolicy, maintain
from shared.models import StageName
from shared.testing.costs import FakeCostTracker

CLIPS = StageName.CLIP_GENERATION


@dataclass
class Ledger:
    """A CostLedger with what the contract needs around it: making jobs and letting reservations expire."""

    tracker: CostLedger
    make_job: Callable[[Decimal | None], Awaitable[uuid.UUID]]
    expire_reservations: Callable[[], Awaitable[None]]
    # Expire every active reservation and run maintain's release over them (their workers paused past the TTL).
    lapse_reservations: Callable[[], Awaitable[None]]


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 11, 25, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture(params=["postgres", "fake"])
async def ledger(request: pytest.FixtureRequest) -> AsyncIterator[Ledger]:
    if request.param == "fake":
        clock = Clock()
        fake = FakeCostTracker(default_budget=Decimal(50), clock=clock)

        async def make_fake_job(budget: Decimal | None) -> uuid.UUID:
            job_id = uuid.uuid4()
            fake.add_job(job_id, budget)
            return job_id

        async def advance() -> None:
            clock.now += timedelta(minutes=16)

        async def lapse() -> None:
            await advance()
            fake.release_expired()

        yield Ledger(fake, make_fake_job, advance, lapse)
        return
    settings = request.getfixturevalue("make_settings")(database_url=request.getfixturevalue("pg_dsn"))
    async for db in init_database(settings):
        yield postgres_ledger(db)


def postgres_ledger(db: DatabaseClient) -> Ledger:
    jobs = JobRepository(db)
    tracker = CostTracker(db, default_budget=Decimal(50), reservation_ttl=timedelta(minutes=15))

    async def make_job(budget: Decimal | None) -> uuid.UUID:
        user = uuid.uuid4()
        await db.execute("insert into auth.users (id) values ($1)", user)
        job = await jobs.create_job(user_id=user, audio_url="a.mp3", user_prompt="p", budget_limit=budget)
        return job.id

    async def expire() -> None:
        await db.execute("update job_cost_reservations set expires_at = now() - interval '1 second'")

    async def lapse() -> None:
        await expire()
        policy = MaintenancePolicy(
            stage_timeout=timedelta(days=1), release_grace=timedelta(0), retention=timedelta(days=30)
        )
        await maintain(db, policy)

    return Ledger(tracker, make_job, expire, lapse)


async def test_implements_the_protocol(ledger: Ledger) -> None:
    assert isinstance(ledger.tracker, CostLedger)


async def test_track_cost_adds_to_the_total(ledger: Ledger) -> None:
    job = await ledger.make_job(None)
    first = await ledger.tracker.track_cost(job, CLIPS, "replicate", Decimal("1.25"))
    await ledger.tracker.track_cost(job, StageName.PROMPT_GENERATION, "openai", "0.0042")
    assert (job, CLIPS, "replicate", Decimal("1.2500")) == (first.job_id, first.stage_name, first.api_name, first.cost)
    assert Decimal("1.2542") == await ledger.tracker.get_total_cost(job)
    assert [Decimal("1.25"), Decimal("0.0042")] == [c.cost for c in await ledger.tracker.list_costs(job)]


async def test_same_idempotency_key_counts_once_and_returns_the_first_row(ledger: Ledger) -> None:
    job = await ledger.make_job(None)
    first = await ledger.tracker.track_cost(job, CLIPS, "replicate", Decimal(2), idempotency_key="clip-1")
    again = await ledger.tracker.track_cost(job, CLIPS, "replicate", Decimal(5), idempotency_key="clip-1")
    other_job = await ledger.make_job(None)
    elsewhere = await ledger.tracker.track_cost(other_job, CLIPS, "replicate", Decimal(5), idempotency_key="clip-1")
    assert first == again
    assert Decimal(2) == await ledger.tracker.get_total_cost(job)
    assert Decimal(5) == elsewhere.cost


async def test_unknown_job_is_an_error_never_zero(ledger: Ledger) -> None:
    missing = uuid.uuid4()
    calls: list[Awaitable[object]] = [
        ledger.tracker.get_total_cost(missing),
        ledger.tracker.track_cost(missing, CLIPS, "replicate", 1),
        ledger.tracker.check_budget(missing, 1),
        ledger.tracker.enforce_budget_limit(missing),
    ]
    for call in calls:
        with pytest.raises(JobNotFoundError):
            await call
    with pytest.raises(JobNotFoundError):
        async with ledger.tracker.reserve(missing, CLIPS, "replicate", 1):
            pytest.fail("reserved on a job that does not exist")


@pytest.mark.parametrize("bad", [Decimal(-1), Decimal("NaN"), Decimal("Infinity"), "abc", float("inf"), -0.01, True])
async def test_bad_amounts_are_validation_errors(ledger: Ledger, bad: object) -> None:
    job = await ledger.make_job(None)
    with pytest.raises(ValidationError):
        await ledger.tracker.track_cost(job, CLIPS, "replicate", bad)  # type: ignore[arg-type] # bad on purpose
    with pytest.raises(ValidationError):
        async with ledger.tracker.reserve(job, CLIPS, "replicate", bad):  # type: ignore[arg-type] # bad on purpose
            pytest.fail("reserved a bad amount")
    assert Decimal(0) == await ledger.tracker.get_total_cost(job)


async def test_bad_names_are_validation_errors(ledger: Ledger) -> None:
    job = await ledger.make_job(None)
    with pytest.raises(ValidationError, match="unknown stage"):
        await ledger.tracker.track_cost(job, "dancing", "x", 1)  # type: ignore[arg-type] # bad on purpose
    with pytest.raises(ValidationError, match="api_name"):
        await ledger.tracker.track_cost(job, CLIPS, " ", 1)
    with pytest.raises(ValidationError, match="idempotency_key"):
        await ledger.tracker.track_cost(job, CLIPS, "x", 1, idempotency_key="")


async def test_budget_counts_spent_and_active_reservations(ledger: Ledger) -> None:
    job = await ledger.make_job(Decimal(10))
    await ledger.tracker.track_cost(job, CLIPS, "replicate", 4)
    assert await ledger.tracker.check_budget(job, 6)
    async with ledger.tracker.reserve(job, CLIPS, "replicate", 3):
        assert not await ledger.tracker.check_budget(job, 4)
        assert await ledger.tracker.check_budget(job, 3)
        assert await ledger.tracker.check_budget(job, 4, limit=Decimal(20))  # an explicit limit wins
        status = await ledger.tracker.get_budget(job)
        assert (Decimal(4), Decimal(3), Decimal(10), Decimal(3)) == (
            status.spent,
            status.reserved,
            status.limit,
            status.available,
        )
    assert await ledger.tracker.check_budget(job, 6)  # released on the way out


async def test_job_without_a_budget_uses_the_default(ledger: Ledger) -> None:
    job = await ledger.make_job(None)
    assert await ledger.tracker.check_budget(job, 50)
    assert not await ledger.tracker.check_budget(job, "50.0001")


async def test_reserve_refuses_before_any_money_is_spent(ledger: Ledger) -> None:
    job = await ledger.make_job(Decimal(5))
    await ledger.tracker.track_cost(job, CLIPS, "replicate", 3)
    with pytest.raises(BudgetExceededError) as caught:
        async with ledger.tracker.reserve(job, CLIPS, "replicate", Decimal("2.5")):
            pytest.fail("the block ran although the estimate does not fit")
    error = caught.value
    assert (job, Decimal(3), Decimal(0), Decimal(5), Decimal("2.5")) == (
        error.job_id,
        error.spent,
        error.reserved,
        error.limit,
        error.requested,
    )


async def test_commit_records_the_actual_cost_once(ledger: Ledger) -> None:
    job = await ledger.make_job(Decimal(10))
    async with ledger.tracker.reserve(job, CLIPS, "replicate", 4) as reservation:
        first = await reservation.commit(Decimal("3.5"))
        second = await reservation.commit(Decimal(9))
    assert first == second
    assert first == reservation.committed
    assert Decimal("3.5") == await ledger.tracker.get_total_cost(job)
    assert Decimal(0) == (await ledger.tracker.get_budget(job)).reserved


async def test_reservation_released_when_block_raises(ledger: Ledger) -> None:
    job = await ledger.make_job(Decimal(10))
    with pytest.raises(RuntimeError):
        async with ledger.tracker.reserve(job, CLIPS, "replicate", 8):
            raise RuntimeError("the paid API failed")
    assert Decimal(0) == (await ledger.tracker.get_budget(job)).reserved
    async with ledger.tracker.reserve(job, CLIPS, "replicate", 8) as reservation:
        await reservation.commit(8)
    assert Decimal(8) == await ledger.tracker.get_total_cost(job)


async def test_commit_after_maintain_released_a_paused_workers_hold_is_recorded_as_an_overrun(
    ledger: Ledger, caplog: pytest.LogCaptureFixture
) -> None:
    """Issue 19: 1.40 really spent on a 1.00 budget shows 1.40 in the ledger, the lapsed 0.70 as overrun."""
    job = await ledger.make_job(Decimal("1.00"))
    with caplog.at_level(logging.WARNING, logger="shared.cost_tracking"):
        async with ledger.tracker.reserve(job, CLIPS, "replicate", "0.70") as paused:
            await ledger.lapse_reservations()  # the worker was paused past TTL + grace; maintain released it
            assert Decimal(0) == (await ledger.tracker.get_budget(job)).reserved
            async with ledger.tracker.reserve(job, CLIPS, "replicate", "0.70") as other:
                await other.commit("0.70")
            first = await paused.commit("0.70")  # the worker wakes up: the money was spent
            assert first == await paused.commit("0.70")  # once
    status = await ledger.tracker.get_budget(job)
    assert (Decimal("1.40"), Decimal("0.70"), Decimal("0.40")) == (status.spent, status.overrun, status.over_limit)
    assert Decimal("1.40") == sum(cost.cost for cost in await ledger.tracker.list_costs(job))
    (record,) = [r for r in caplog.records if getattr(r, "reservation_id", None) == str(paused.id)]
    fields = ("actual_cost", "overrun", "spent", "limit")
    assert str(job) == record.job_id  # type: ignore[attr-defined] # a log extra
    assert (Decimal("0.70"), Decimal("0.70"), Decimal("1.40"), Decimal(1)) == tuple(
        Decimal(getattr(record, name)) for name in fields
    )
    assert not hasattr(record, "estimated_cost")  # nothing was held any more: no estimate to compare with
    assert "lapsed" in record.getMessage()
    assert "over its budget" in record.getMessage()


async def test_a_lapsed_commit_within_the_budget_is_warned_without_a_refusal(
    ledger: Ledger, caplog: pytest.LogCaptureFixture
) -> None:
    job = await ledger.make_job(Decimal(10))
    with caplog.at_level(logging.WARNING, logger="shared.cost_tracking"):
        async with ledger.tracker.reserve(job, CLIPS, "replicate", "0.70") as paused:
            await ledger.lapse_reservations()
            await paused.commit("0.70")
    (record,) = [r for r in caplog.records if getattr(r, "reservation_id", None) == str(paused.id)]
    message = record.getMessage()
    assert "lapsed" in message
    assert str(job) in message
    assert str(paused.id) in message
    assert "over its budget" not in message  # 0.70 of 10: nothing is refused
    spent, limit = record.spent, record.limit  # type: ignore[attr-defined] # log extras
    assert f"spent {spent} of its budget {limit}" in message  # the figures in the line, not only in its extras
    assert (Decimal("0.70"), Decimal("0.70"), Decimal(10)) == tuple(
        Decimal(getattr(record, name)) for name in ("actual_cost", "spent", "limit")
    )


@pytest.mark.parametrize("bad", [Decimal(-1), "abc", float("nan")])
async def test_a_bad_actual_cost_is_refused_by_name_and_records_nothing(ledger: Ledger, bad: object) -> None:
    job = await ledger.make_job(Decimal(10))
    async with ledger.tracker.reserve(job, CLIPS, "replicate", 1) as reservation:
        with pytest.raises(ValidationError) as refused:
            await reservation.commit(bad)  # type: ignore[arg-type] # the point: a value of the wrong kind
        assert "actual_cost" == refused.value.field
        assert reservation.committed is None
        committed = await reservation.commit("0.80")  # a good amount afterwards is recorded
    assert Decimal("0.80") == committed.cost == await ledger.tracker.get_total_cost(job)


async def test_commit_after_its_own_block_released_it_is_refused(ledger: Ledger) -> None:
    job = await ledger.make_job(None)
    async with ledger.tracker.reserve(job, CLIPS, "replicate", 1) as reservation:
        pass
    with pytest.raises(InvalidStateError, match="released"):
        await reservation.commit(1)
    assert Decimal(0) == await ledger.tracker.get_total_cost(job)


async def test_stale_reservation_stops_counting_after_its_ttl(ledger: Ledger) -> None:
    job = await ledger.make_job(Decimal(10))
    async with ledger.tracker.reserve(job, CLIPS, "replicate", 9) as stale:
        assert not await ledger.tracker.check_budget(job, 2)
        await ledger.expire_reservations()  # the worker holding it died
        assert await ledger.tracker.check_budget(job, 10)
        # Committed late, the money is still recorded: it was spent.
        await stale.commit(9)
    assert Decimal(9) == await ledger.tracker.get_total_cost(job)


async def test_overshoot_is_recorded_truthfully_warned_and_blocks_more(
    ledger: Ledger, caplog: pytest.LogCaptureFixture
) -> None:
    job = await ledger.make_job(Decimal(10))
    with caplog.at_level(logging.WARNING, logger="shared.cost_tracking"):
        async with ledger.tracker.reserve(job, CLIPS, "replicate", 8) as reservation:
            await reservation.commit(12)
    assert Decimal(12) == await ledger.tracker.get_total_cost(job)
    assert any("over its budget" in record.getMessage() for record in caplog.records)
    with pytest.raises(BudgetExceededError):
        await ledger.tracker.enforce_budget_limit(job)
    with pytest.raises(BudgetExceededError):
        async with ledger.tracker.reserve(job, CLIPS, "replicate", 0):
            pytest.fail("reserved on a job over its budget")


async def test_track_cost_past_the_budget_is_recorded_and_warned(
    ledger: Ledger, caplog: pytest.LogCaptureFixture
) -> None:
    job = await ledger.make_job(Decimal(1))
    with caplog.at_level(logging.WARNING, logger="shared.cost_tracking"):
        await ledger.tracker.track_cost(job, CLIPS, "replicate", 2)
    assert any("over its budget" in record.getMessage() for record in caplog.records)
    await ledger.tracker.enforce_budget_limit(job, limit=Decimal(2))  # within an explicit, higher limit


def test_to_money_rounds_up_to_four_places() -> None:
    assert Decimal("0.0002") == to_money(Decimal("0.00011"))
    assert Decimal("0.1000") == to_money(0.1)
    with pytest.raises(ValidationError, match="more than the ledger holds"):
        to_money(Decimal("1e9"))


async def test_cost_pages_iteration_and_summary_agree(ledger: Ledger) -> None:
    job = await ledger.make_job(None)
    spend = [
        (StageName.SCENE_PLANNING, "openai", "0.10"),
        (CLIPS, "replicate", "0.50"),
        (CLIPS, "replicate", "0.25"),
        (CLIPS, "openai", "0.05"),
        (StageName.COMPOSITION, "replicate", "1.00"),
    ]
    for n, (stage, api, cost) in enumerate(spend):
        await ledger.tracker.track_cost(job, stage, api, cost, idempotency_key=f"k{n}")
    everything = await ledger.tracker.list_costs(job)
    walked = []
    page = await ledger.tracker.list_costs(job, limit=2)
    while page:
        walked.extend(page)
        page = await ledger.tracker.list_costs(job, limit=2, after=page[-1].created_at, after_id=page[-1].id)
    assert [row.id for row in everything] == [row.id for row in walked]
    assert 5 == len(everything)
    assert [row.id for row in everything] == [row.id async for row in ledger.tracker.iter_costs(job, page_size=2)]
    summary = await ledger.tracker.cost_summary(job)
    assert (5, Decimal("1.90")) == (summary.total.calls, summary.total.cost)
    assert (3, Decimal("0.80")) == (summary.by_stage[CLIPS].calls, summary.by_stage[CLIPS].cost)
    assert (3, Decimal("1.75")) == (summary.by_api["replicate"].calls, summary.by_api["replicate"].cost)
    assert {StageName.SCENE_PLANNING, CLIPS, StageName.COMPOSITION} == set(summary.by_stage)
    with pytest.raises(ValidationError) as refused:
        await ledger.tracker.list_costs(job, after_id=everything[0].id)
    assert "after_id" == refused.value.field
    with pytest.raises(JobNotFoundError):
        await ledger.tracker.cost_summary(uuid.uuid4())


async def test_every_attempt_of_an_effect_holds_one_reservation_and_records_it_once(ledger: Ledger) -> None:
    """Issue 19: a re-run keyed like the attempt that died takes over its hold and never records the cost twice."""
    job = await ledger.make_job(Decimal("1.00"))
    first, second, third = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    dead = ledger.tracker.reserve(job, CLIPS, "replicate", "0.70", attempt_id=first, idempotency_key="run:clip")
    held = await dead.__aenter__()  # its worker dies holding it: the block is never left
    async with ledger.tracker.reserve(
        job, CLIPS, "replicate", "0.70", attempt_id=second, idempotency_key="run:clip"
    ) as rerun:
        assert (held.id, Decimal("0.70")) == (rerun.id, (await ledger.tracker.get_budget(job)).reserved)
        recorded = await rerun.commit("0.60")
    async with ledger.tracker.reserve(
        job, CLIPS, "replicate", "0.70", attempt_id=third, idempotency_key="run:clip"
    ) as again:  # the attempt that committed died before its stage completed
        assert Decimal(0) == (await ledger.tracker.get_budget(job)).reserved
        assert recorded == await again.commit("0.60")
    await dead.__aexit__(None, None, None)
    status = await ledger.tracker.get_budget(job)
    assert (Decimal("0.60"), Decimal(0)) == (status.spent, status.reserved)
    assert [Decimal("0.60")] == [cost.cost for cost in await ledger.tracker.list_costs(job)]


async def test_a_released_effect_is_held_again_by_a_later_attempt_only(ledger: Ledger) -> None:
    job = await ledger.make_job(Decimal("1.00"))
    attempt = uuid.uuid4()
    async with ledger.tracker.reserve(job, CLIPS, "replicate", "0.70", attempt_id=attempt, idempotency_key="k"):
        pass  # left without a commit: released
    with pytest.raises(BudgetExceededError):  # the same attempt does not get a released hold back
        async with ledger.tracker.reserve(job, CLIPS, "replicate", "0.70", attempt_id=attempt, idempotency_key="k"):
            pytest.fail("held again by the attempt that released it")
    async with ledger.tracker.reserve(
        job, CLIPS, "replicate", "0.70", attempt_id=uuid.uuid4(), idempotency_key="k"
    ) as later:
        assert Decimal("0.70") == (await ledger.tracker.get_budget(job)).reserved
        await later.commit("0.70")
    assert Decimal("0.70") == await ledger.tracker.get_total_cost(job)


async def test_iteration_yields_every_row_once_in_order_whatever_the_page_size(ledger: Ledger) -> None:
    job = await ledger.make_job(None)
    for n in range(7):
        await ledger.tracker.track_cost(job, CLIPS, "replicate", f"0.0{n + 1}", idempotency_key=f"k{n}")
    everything = await ledger.tracker.list_costs(job)
    assert 7 == len(everything)
    for size in (1, 3, 4, 7, 8):  # a page's second row is not its last one (3, 4), a last page partly full
        walked = [row.id async for row in ledger.tracker.iter_costs(job, page_size=size)]
        assert [row.id for row in everything] == walked


async def test_costs_recorded_at_one_instant_are_paged_by_id(db: DatabaseClient) -> None:
    """Rows of one transaction share created_at: the cursor's id breaks the tie, so no row is lost or repeated."""
    ledger = postgres_ledger(db)
    job = await ledger.make_job(None)
    async with db.transaction():  # now() is the transaction's start: every row gets the same created_at
        for n in range(6):
            await ledger.tracker.track_cost(job, CLIPS, "replicate", "0.01", idempotency_key=f"k{n}")
    everything = await ledger.tracker.list_costs(job)
    assert 1 == len({row.created_at for row in everything})
    assert sorted(row.id for row in everything) == [row.id for row in everything]
    for size in (1, 2, 4):
        assert [row.id for row in everything] == [
            row.id async for row in ledger.tracker.iter_costs(job, page_size=size)
        ]


async def test_a_job_without_costs_sums_to_zero(ledger: Ledger) -> None:
    job = await ledger.make_job(None)
    summary = await ledger.tracker.cost_summary(job)
    assert (job, 0, Decimal(0), {}, {}) == (
        summary.job_id,
        summary.total.calls,
        summary.total.cost,
        summary.by_stage,
        summary.by_api,
    )
    assert [] == [row async for row in ledger.tracker.iter_costs(job)]


async def test_summary_names_its_job_and_unknown_jobs_are_named_in_the_error(ledger: Ledger) -> None:
    job = await ledger.make_job(None)
    await ledger.tracker.track_cost(job, CLIPS, "replicate", "0.50")
    assert job == (await ledger.tracker.cost_summary(job)).job_id
    missing = uuid.uuid4()
    calls: list[Callable[[], Awaitable[object]]] = [
        lambda: ledger.tracker.get_total_cost(missing),
        lambda: ledger.tracker.get_budget(missing),
        lambda: ledger.tracker.track_cost(missing, CLIPS, "replicate", 1),
        lambda: ledger.tracker.check_budget(missing, 1),
        lambda: ledger.tracker.enforce_budget_limit(missing),
        lambda: ledger.tracker.cost_summary(missing),
    ]
    for call in calls:
        with pytest.raises(JobNotFoundError) as caught:
            await call()
        assert missing == caught.value.job_id
