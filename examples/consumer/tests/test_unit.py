"""The stage on the fakes: no service runs; the fixtures come from videogen-shared's pytest plugin."""

from __future__ import annotations

import logging
from decimal import Decimal

import pytest
from shared.container_check import check_container
from shared.models import StageStatus
from shared.testing.fixtures import Fakes

from title_stage.container import StageContainer
from title_stage.stage import BUCKET, STAGE, title_job


async def test_the_stage_titles_stores_caches_and_completes(
    fake_container: StageContainer, fakes: Fakes, caplog: pytest.LogCaptureFixture
) -> None:
    job = await fakes.add_job(budget_limit=Decimal("1.00"), prompt="neon rain over a sleeping city")
    api = fake_container.title_api()
    with caplog.at_level(logging.INFO, logger="title_stage"):
        result = await title_job(job.id)
    assert "Neon Rain Over A Sleeping City" == result.title
    assert 2 == api.calls  # the first call failed with a 503 and was retried
    assert result.title.encode() == await fakes.storage.download_file(BUCKET, f"{job.id}/title.txt")
    assert result.title.encode() == await fakes.cache.get(f"title:{job.id}")
    [stage] = await fakes.jobs.list_stages(job.id)
    assert (STAGE, StageStatus.COMPLETED) == (stage.stage_name, stage.status)
    assert Decimal("0.0200") == (await fakes.jobs.get_job(job.id)).total_cost
    [line] = [record for record in caplog.records if record.getMessage().startswith("titled the video")]
    assert str(job.id) == str(getattr(line, "job_id", None))


async def test_the_container_keeps_every_shared_provider_and_adds_its_own(fake_container: StageContainer) -> None:
    names = set(StageContainer.providers)
    assert {"settings", "db", "redis", "jobs", "cost_tracker", "storage", "http_client", "title_api"} <= names
    assert not fake_container.title_api().closed


def test_the_container_is_wired_right_with_every_type_checked() -> None:
    """lifespan checks this at start; the test also imports every type an annotation names."""
    assert [] == check_container(StageContainer, every_type=True)
