"""The demo runs end to end on the real local services and on the fakes, and says clearly when a service is down."""

from __future__ import annotations

import io
from pathlib import Path

from shared.config import Settings
from shared.demo import generate_song, run_demo
from shared.validation import validate_audio_file
from tests.fixtures.core import MakeSettings


async def test_demo_runs_end_to_end_on_the_local_services(service_settings: Settings, tmp_path: Path) -> None:
    out = io.StringIO()
    status = await run_demo(service_settings, out=out, log_dir=tmp_path)
    text = out.getvalue()
    assert 0 == status, text
    for expected in (
        "postgres  ok",
        "redis     ok",
        "REFUSED before spending",
        "analysis read back from the cache: identical",
        "signed URL for the audio",
        '"job_id":',
        "every component behaved as expected",
    ):
        assert expected in text
    assert (tmp_path / "demo.jsonl").exists()


async def test_demo_runs_offline_on_the_fakes(settings: Settings, tmp_path: Path) -> None:
    out = io.StringIO()
    assert 0 == await run_demo(settings, out=out, offline=True, log_dir=tmp_path)
    assert "storage  in memory" in out.getvalue()


async def test_demo_says_which_service_is_down_and_how_to_fix_it(make_settings: MakeSettings, tmp_path: Path) -> None:
    out = io.StringIO()
    settings = make_settings(database_url="postgresql://postgres@127.0.0.1:1/videogen")
    assert 1 == await run_demo(settings, out=out, log_dir=tmp_path)
    assert "PostgreSQL at 127.0.0.1:1" in out.getvalue()
    assert "make services" in out.getvalue()


async def test_demo_reports_a_down_redis_before_starting(
    make_settings: MakeSettings, pg_dsn: str, tmp_path: Path
) -> None:
    out = io.StringIO()
    settings = make_settings(database_url=pg_dsn, redis_url="redis://127.0.0.1:1/0")
    assert 1 == await run_demo(settings, out=out, log_dir=tmp_path)
    assert "redis     down" in out.getvalue()
    assert "--offline" in out.getvalue()


def test_generated_song_is_valid_audio() -> None:
    info = validate_audio_file(generate_song(seconds=6))
    assert ("wav", 1, 6.0) == (info.format, info.channels, round(info.duration_seconds, 1))
