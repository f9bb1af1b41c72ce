"""The stage on the fakes: no service runs; the fixtures come from videogen-shared's pytest plugin."""

from __future__ import annotations

import logging
from decimal import Decimal

import pytest
from shared.container_check import check_container
from shared.models import JobStatus
from shared.testing import run_stage
from shared.testing.fixtures import Fakes

from title_stage.api import MODEL, SimulatedTitleApi
from title_stage.container import StageContainer
from title_stage.stage import BUCKET, STAGE, stages


async def test_the_stage_titles_stores_caches_and_moves_the_progress(
    fake_container: StageContainer, fakes: Fakes, caplog: pytest.LogCaptureFixture
) -> None:
    prompt = "neon rain over a sleeping city"
    job = await fakes.add_job(budget_limit=Decimal("1.00"), prompt=prompt)
    api = fake_container.title_api()
    with caplog.at_level(logging.INFO, logger="title_stage"):
        run = await run_stage(stages, STAGE.value, container=fake_container, job_id=job.id)
    assert run.result is not None
    title = run.result["title"]
    assert "Neon Rain Over A Sleeping City" == title
    assert (2, 2) == (run.attempts, api.calls)  # the API's 503 ended the first attempt; the engine ran it again
    assert title.encode() == await fakes.storage.download_file(BUCKET, f"{job.id}/title.txt")
    assert title.encode() == await fakes.cache.get(f"title:{job.id}")
    answer = (await SimulatedTitleApi().suggest_title(prompt)).answer
    priced = fake_container.price_catalogue().price_openai(answer, model=MODEL)
    after = await fakes.jobs.get_job(job.id)
    assert (JobStatus.PROCESSING, 25) == (after.status, after.progress)
    assert priced.cost.quantize(Decimal("0.0001"), rounding="ROUND_CEILING") == after.total_cost
    [line] = [record for record in caplog.records if record.getMessage().startswith("titled the video")]
    assert str(job.id) == str(getattr(line, "job_id", None))


async def test_the_container_keeps_every_shared_provider_and_adds_its_own(fake_container: StageContainer) -> None:
    names = set(StageContainer.providers)
    shared = {"settings", "db", "redis", "jobs", "stages", "cost_tracker", "paid_calls", "storage", "http_client"}
    assert shared | {"title_api", "title_settings"} <= names
    assert not fake_container.title_api().closed


def test_the_container_is_wired_right_with_every_type_checked() -> None:
    """lifespan checks this at start; the test also imports every type an annotation names."""
    assert [] == check_container(StageContainer, every_type=True)
