"""`doctor` against the real Storage server reached without Supabase's API gateway, with a new sb_secret_ key."""

from __future__ import annotations

import io

import pytest
from pydantic import SecretStr

from shared.doctor import check_storage, run_doctor
from tests.fixtures.core import MakeSettings
from tests.fixtures.storage import StorageTarget

KEY = "sb_secret_N7UND0UgjKTVK-Uodkm0Hg_xSvEMPvz"


async def test_doctor_says_an_sb_secret_key_needs_the_gateway(
    storage_target: StorageTarget, make_settings: MakeSettings
) -> None:
    if storage_target.server is None:
        pytest.skip("needs the local real Storage server (STORAGE_IT_URL names another)")
    settings = make_settings(
        storage_backend="supabase", supabase_url=storage_target.url, supabase_service_key=SecretStr(KEY)
    )
    out = io.StringIO()

    status = await run_doctor(settings, out=out, checks={"storage": check_storage})

    text = out.getvalue()
    assert 1 == status
    assert "Invalid Compact JWS" in text
    assert "without Supabase's API gateway" in text
    assert KEY not in text
