"""The stage on the real local services: PostgreSQL (a database of the test's own), Redis, local storage."""

from __future__ import annotations

from decimal import Decimal

from shared.models import StageStatus
from shared.testing.users import create_job_for_new_user

from title_stage.container import StageContainer
from title_stage.stage import BUCKET, title_job


async def test_the_stage_runs_end_to_end_on_the_real_services(real_container: StageContainer) -> None:
    job = await create_job_for_new_user(
        real_container.db(), budget_limit=Decimal(1), user_prompt="a tide of paper boats"
    )
    result = await title_job(job.id)
    assert "A Tide Of Paper Boats" == result.title
    storage = real_container.storage()
    assert result.title.encode() == await storage.download_file(BUCKET, f"{job.id}/title.txt")
    assert result.title.encode() == await real_container.redis().get(f"title:{job.id}")
    [stage] = await real_container.jobs().list_stages(job.id)
    assert StageStatus.COMPLETED == stage.status
    assert Decimal("0.0200") == await real_container.cost_tracker().get_total_cost(job.id)
