"""Rows come typed (asyncpg-stubs ships with videogen-shared), and the stage's own settings take effect."""

from __future__ import annotations

from decimal import Decimal
from typing import assert_type

import asyncpg
import pytest
from shared.testing import run_stage
from shared.testing.fixtures import Fakes
from shared.testing.users import create_job_for_new_user

from title_stage.container import StageContainer
from title_stage.stage import STAGE, stages


async def test_rows_are_typed_records(real_container: StageContainer) -> None:
    job = await create_job_for_new_user(real_container.db(), budget_limit=Decimal(1), user_prompt="paper boats")
    db = real_container.db()
    row = await db.fetchrow("select id, budget_limit from public.jobs where id = $1", job.id)
    assert row is not None
    assert_type(row, asyncpg.Record)
    assert (job.id, Decimal("1.0000")) == (row["id"], row["budget_limit"])
    rows = await db.fetch("select id from public.jobs where id = $1", job.id)
    assert_type(rows, list[asyncpg.Record])
    assert [job.id] == [r["id"] for r in rows]


async def test_the_stage_reads_its_own_setting(
    fake_container: StageContainer, fakes: Fakes, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TITLE_MAX_WORDS", "2")
    fake_container.title_settings.reset()  # built at start from the environment of then
    job = await fakes.add_job(prompt="neon rain over a sleeping city")
    run = await run_stage(stages, STAGE.value, container=fake_container, job_id=job.id)
    assert run.result is not None
    assert "Neon Rain" == run.result["title"]
