"""``python -m shared demo`` (``make demo``): one simulated job end to end through every component.

Against the configured services (by default the local PostgreSQL, Redis and filesystem storage; no ``.env``
needed): audio generated and validated, the job created, the audio uploaded, every stage run with its
progress, costs tracked under a budget that the last, expensive stage would pass (refused before any money
is spent, shown, not crashed), the analysis cached and read back, a signed URL, the job's JSON log lines and
a summary. The paid AI APIs are simulated; everything else is real.
"""

from __future__ import annotations

import io
import logging
import math
import struct
import tempfile
import time
import uuid
import wave
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import orjson

from shared.config import Settings
from shared.cost_tracking import BudgetStatus, CostLedger
from shared.errors import BudgetExceededError, PipelineError
from shared.jobs import JobStore
from shared.lifecycle import resolve
from shared.logging import job_context
from shared.models import AudioAnalysis, ClipBoundary, Job, JobStage, Mood, SongStructure, StageName
from shared.redis_client import Cache
from shared.storage import Storage

if TYPE_CHECKING:
    from shared.container import Container

__all__ = ["DEMO_BUDGET", "generate_song", "run_demo"]

DEMO_BUDGET = Decimal("2.0000")
SONG_SECONDS = 12
SAMPLE_RATE = 22_050

# (stage, simulated API, estimate, actual, progress after it) — the last one is too expensive on purpose.
PLAN: list[tuple[StageName, str, Decimal, Decimal, int]] = [
    (StageName.AUDIO_ANALYSIS, "openai-whisper", Decimal("0.0600"), Decimal("0.0480"), 15),
    (StageName.SCENE_PLANNING, "openai-gpt", Decimal("0.1200"), Decimal("0.0950"), 30),
    (StageName.REFERENCE_GENERATION, "replicate-sdxl", Decimal("0.2000"), Decimal("0.1600"), 45),
    (StageName.PROMPT_GENERATION, "openai-gpt", Decimal("0.0500"), Decimal("0.0310"), 55),
    (StageName.CLIP_GENERATION, "replicate-video", Decimal("1.2000"), Decimal("1.1250"), 85),
    (StageName.COMPOSITION, "replicate-upscale", Decimal("1.5000"), Decimal("1.4000"), 100),
]


def generate_song(seconds: int = SONG_SECONDS, rate: int = SAMPLE_RATE) -> bytes:
    """Return a mono 16-bit WAV: a 120 bpm click over a slow chord, ``seconds`` long."""
    frames = bytearray()
    for n in range(seconds * rate):
        t = n / rate
        chord = sum(math.sin(2 * math.pi * f * t) for f in (220.0, 277.2, 329.6)) / 6
        beat = math.exp(-40 * (t % 0.5)) * math.sin(2 * math.pi * 1000 * t)
        frames += struct.pack("<h", int(max(-1.0, min(1.0, chord + 0.5 * beat)) * 32000))
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as song:
        song.setnchannels(1)
        song.setsampwidth(2)
        song.setframerate(rate)
        song.writeframes(bytes(frames))
    return buffer.getvalue()


@dataclass
class _Report:
    out: TextIO
    started: float = field(default_factory=time.perf_counter)

    def say(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    def step(self, text: str) -> None:
        self.say(f"[{time.perf_counter() - self.started:6.2f} s] {text}")


def _analysis(job_id: uuid.UUID, duration: float) -> AudioAnalysis:
    beats = [round(0.5 * n, 3) for n in range(int(duration / 0.5))]
    half = round(duration / 2, 3)
    return AudioAnalysis(
        job_id=job_id,
        bpm=120,
        duration=duration,
        beat_timestamps=beats,
        song_structure=[
            SongStructure(type="verse", start=0, end=half, energy=0.4),
            SongStructure(type="chorus", start=half, end=duration, energy=0.9),
        ],
        mood=Mood(primary="hopeful", secondary=["dreamy"], energy_level="medium", confidence=0.87),
        clip_boundaries=[ClipBoundary(start=s, end=min(s + 4, duration)) for s in range(0, int(duration), 4)],
    )


@dataclass
class _Services:
    """What the demo job talks to: the container's real collaborators, or the fakes (``--offline``)."""

    jobs: JobStore
    ledger: CostLedger
    cache: Cache
    storage: Storage
    add_user: Callable[[], Awaitable[uuid.UUID]]
    register_job: Callable[[Job], None]


async def run_demo(settings: Settings, *, out: TextIO, offline: bool = False, log_dir: Path | None = None) -> int:
    """Run the demo job and print what happens; return 0 when every component behaved as it should."""
    from shared.container import Container  # noqa: PLC0415 - the CLI imports this module only for the demo
    from shared.lifecycle import lifespan  # noqa: PLC0415

    report = _Report(out)
    folder = log_dir or Path(tempfile.mkdtemp(prefix="videogen-demo-"))
    log_file = folder / "demo.jsonl"
    if not offline and not await _services_ready(settings, report):
        return 1
    container = Container()
    container.settings.override(settings.model_copy(update={"log_file": log_file, "log_console": False}))
    if offline:
        services = _fakes(container, settings)
    async with lifespan(container):
        if not offline:
            services = await _real(container)
        report.step("container started" + (" on the in-memory fakes (--offline)" if offline else ""))
        outcome = await _run_job(services, settings, report)
    report.say(_summary(outcome, log_file, settings, offline=offline))
    return 0 if outcome.ok else 1


async def _services_ready(settings: Settings, report: _Report) -> bool:
    """Check every service first (the doctor's checks), creating and migrating the development database."""
    from shared.doctor import check_services  # noqa: PLC0415
    from shared.migrations import ensure_database, migrate  # noqa: PLC0415

    if settings.environment == "development":
        try:
            await ensure_database(settings.database_dsn)
            applied = await migrate(settings.database_dsn)
        except PipelineError as error:
            report.say(f"cannot prepare the database: {error}")
            return False
        report.step(f"database ready ({len(applied)} migration(s) applied)" if applied else "database up to date")
    results = await check_services(settings)
    for result in results:
        report.step(
            f"{result.name:<9} {result.status} ({result.latency_ms:.1f} ms)"
            + (f": {result.detail}" if result.detail else "")
        )
    if all(result.ok for result in results):
        return True
    report.say("a service is down: start it (`make services`), fix the setting named above, or run with --offline")
    return False


def _fakes(container: Any, settings: Settings) -> _Services:
    from dependency_injector import providers  # noqa: PLC0415

    from shared.testing.cache import FakeCache  # noqa: PLC0415
    from shared.testing.costs import FakeCostTracker  # noqa: PLC0415
    from shared.testing.jobs import FakeJobStore  # noqa: PLC0415
    from shared.testing.storage import FakeStorage  # noqa: PLC0415

    jobs, cache, storage = FakeJobStore(), FakeCache(), FakeStorage()
    ledger = FakeCostTracker(default_budget=settings.default_job_budget, reservation_ttl=settings.reservation_ttl)
    for name, fake in (("db", None), ("redis", cache), ("jobs", jobs), ("cost_tracker", ledger), ("storage", storage)):
        getattr(container, name).override(providers.Object(fake))

    async def add_user() -> uuid.UUID:
        return jobs.add_user()

    return _Services(jobs, ledger, cache, storage, add_user, lambda job: ledger.add_job(job.id, job.budget_limit))


async def _real(container: Container) -> _Services:
    from shared.testing.users import create_user, unique_email  # noqa: PLC0415 - only the real services need it

    db = await resolve(container.db)

    async def add_user() -> uuid.UUID:
        # An email of its own per run: Supabase's auth.users has a unique index on email, so a fixed address
        # made the second run fail.
        return await create_user(db, email=unique_email("demo"))

    return _Services(
        await resolve(container.jobs),
        await resolve(container.cost_tracker),
        await resolve(container.redis),
        await resolve(container.storage),
        add_user,
        lambda _: None,
    )


@dataclass
class _Outcome:
    job: Job
    stages: list[JobStage]
    budget: BudgetStatus
    refused: BudgetExceededError | None
    cache_hit: bool
    signed_url: str

    @property
    def ok(self) -> bool:
        return self.refused is not None and self.cache_hit and self.budget.spent <= self.budget.limit


async def _run_job(services: _Services, settings: Settings, report: _Report) -> _Outcome:
    """Create the job and run every stage, the way the pipeline modules do."""
    from shared.validation import validate_audio_file, validate_prompt  # noqa: PLC0415

    log = logging.getLogger("videogen.demo")
    song = generate_song()
    info = validate_audio_file(song, max_size_mb=settings.audio_max_size_mb)
    prompt = validate_prompt("  A hopeful   night drive through a neon city  ")
    report.step(f"audio generated and validated: {info.format}, {info.duration_seconds:.1f} s, {info.sample_rate} Hz")
    user_id, job_id = await services.add_user(), uuid.uuid4()
    audio_path = f"{user_id}/{job_id}/song.wav"
    audio_url = await services.storage.upload_file("audio", audio_path, song, info.mime_type)
    job = await services.jobs.create_job(
        user_id=user_id, audio_url=audio_url, user_prompt=prompt, budget_limit=DEMO_BUDGET, job_id=job_id
    )
    services.register_job(job)
    report.step(f"job {job.id} created with a ${DEMO_BUDGET} budget; audio uploaded to audio/{audio_path}")

    analysis = _analysis(job.id, info.duration_seconds)
    refused = None
    for stage, api, estimate, actual, progress in PLAN:
        with job_context(job_id=job.id, stage=stage.value):
            await services.jobs.start_stage(job.id, stage)
            try:
                async with services.ledger.reserve(job.id, stage, api, estimate) as reservation:
                    log.info("calling %s (estimate $%s)", api, estimate)
                    await reservation.commit(actual)  # what the simulated paid call cost
            except BudgetExceededError as error:
                refused = error
                log.warning("budget would be exceeded; stage not run", extra={"requested": str(estimate)})
                await services.jobs.fail_stage(job.id, stage, error.message)
                report.step(f"{stage.value:<22} REFUSED before spending: {error.message}")
                break
            if stage is StageName.AUDIO_ANALYSIS:
                await services.cache.set_json(f"analysis:{job.id}", analysis, ttl=3600)
            await services.jobs.complete_stage(job.id, stage, {"api": api, "cost": str(actual)})
            await services.jobs.update_progress(job.id, stage, progress, estimated_remaining=(100 - progress) // 5)
            report.step(f"{stage.value:<22} done    ${actual:<7} progress {progress:3d}%")

    cached = await services.cache.get_json(f"analysis:{job.id}", model=AudioAnalysis)
    report.step("analysis read back from the cache: " + ("identical" if cached == analysis else "MISSING"))
    signed = await services.storage.get_signed_url("audio", audio_path, expires_in=600)
    if refused is not None:
        final = await services.jobs.fail_job(job.id, "stopped before composition: the budget would be exceeded")
    else:  # pragma: no cover - the plan is built to reach the budget
        final = await services.jobs.complete_job(job.id, f"audio/{audio_path}")
    return _Outcome(
        final,
        await services.jobs.list_stages(job.id),
        await services.ledger.get_budget(job.id),
        refused,
        cached == analysis,
        signed,
    )


def _summary(outcome: _Outcome, log_file: Path, settings: Settings, *, offline: bool) -> str:
    lines = [orjson.loads(line) for line in log_file.read_text(encoding="utf-8").splitlines() if line.strip()]
    mine = [line for line in lines if line.get("job_id") == str(outcome.job.id)]
    text = [f"\nsigned URL for the audio (valid 10 min):\n  {outcome.signed_url}"]
    text.append(f"\nthe job's JSON log lines ({len(mine)} of {len(lines)} lines in {log_file}):")
    text += ["  " + orjson.dumps(line).decode() for line in mine[:6]]
    job, budget = outcome.job, outcome.budget
    text += [
        "\nsummary",
        f"  job      {job.id}: {job.status.value} at {job.progress}% ({job.error_message or 'no error'})",
        *(f"  stage    {row.stage_name.value:<22} {row.status.value}" for row in outcome.stages),
        f"  money    ${budget.spent} spent of a ${budget.limit} budget; ${budget.reserved} still reserved",
        "  budget   "
        + ("held: the last stage was refused before any money was spent" if outcome.refused else "not reached"),
        f"  cache    {'hit: the analysis came back identical' if outcome.cache_hit else 'MISS'}",
        f"  storage  {'in memory' if offline else settings.storage_backend}",
        "\ndemo finished: every component behaved as expected" if outcome.ok else "\ndemo finished WITH PROBLEMS",
    ]
    return "\n".join(text)
