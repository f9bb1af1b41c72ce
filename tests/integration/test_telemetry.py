"""OpenTelemetry on the real services, through the SDK's in-memory exporter and a real Prometheus scrape.

Every span of a stage run carries job_id and stage, every log line written in a trace carries its ids, one trace
spans two worker processes, and the Prometheus endpoint serves every metric of issue 22 with plausible values.
"""

from __future__ import annotations

import asyncio
import io
import json
import multiprocessing
import re
import socket
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from concurrent.futures import ProcessPoolExecutor
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import containers
from shared import telemetry
from shared.config import RateLimits, Settings
from shared.cost_tracking import CostTracker
from shared.database import DatabaseClient
from shared.errors import BudgetExceededError, RetryableError
from shared.jobs import JobRepository
from shared.lifecycle import lifespan, resolve
from shared.logging import LoggerFactory, get_logger
from shared.models import StageName
from shared.retry import retry_with_backoff
from shared.validation import validate_prompt
from tests.fixtures.core import MakeSettings
from tests.fixtures.postgres import MakeUser
from tests.integration import telemetry_workers

ROOT = Path(__file__).resolve().parents[2]
STAGE = StageName.CLIP_GENERATION
MODEL = "gpt-4o-mini"


@pytest.fixture
def otel_settings(make_settings: MakeSettings, pg_dsn: str, redis_prefix: str) -> Settings:
    return make_settings(
        database_url=pg_dsn,
        redis_key_prefix=redis_prefix,
        paid_key_prefix=redis_prefix,
        paid_limits={f"openai/{MODEL}": RateLimits(rpm=1000, tpm=1_000_000, rps=100, concurrency=10)},
        otel_enabled=True,
        otel_db_spans="statement",
        otel_exporter_prometheus_port=0,
        otel_metrics_query_timeout_seconds=5.0,
    )


@pytest.fixture
async def traced(otel_settings: Settings) -> AsyncIterator[tuple[Any, InMemorySpanExporter]]:
    """A started container with telemetry on, its spans going to an in-memory exporter."""
    instance = containers.Container()
    instance.settings.override(otel_settings)
    exporter = InMemorySpanExporter()
    async with lifespan(instance):
        running = telemetry.current_telemetry()
        assert running is not None
        running.tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
        yield instance, exporter
    assert telemetry.current_telemetry() is None


async def new_job(db: DatabaseClient, make_user: MakeUser, budget: Decimal = Decimal(10)) -> uuid.UUID:
    job = await JobRepository(db).create_job(
        user_id=await make_user(), audio_url="a.mp3", user_prompt="p", budget_limit=budget
    )
    return job.id


def test_off_every_helper_is_a_no_op(make_settings: MakeSettings) -> None:
    assert telemetry.configure(make_settings()) is None
    assert telemetry.current_telemetry() is None
    assert telemetry.instruments() is None
    assert telemetry.inject_trace_context() is None
    assert telemetry.span("x") is telemetry.span("y")  # one shared empty context manager
    job_id = uuid.uuid4()
    with telemetry.stage_span(job_id=job_id, stage="clip_generation", item="3", attempt=1, trace_context=None):
        from shared.logging import current_job_id, current_stage  # noqa: PLC0415

        assert (str(job_id), "clip_generation") == (current_job_id(), current_stage())


def test_importing_shared_telemetry_imports_no_opentelemetry_module() -> None:
    """Its own imports only: redis-py and FastAPI import parts of the API themselves when it is installed."""
    code = (
        "import sys, shared.logging, shared.errors; before = set(sys.modules); import shared.telemetry; "
        "print(sorted(m for m in set(sys.modules) - before if m.startswith('opentelemetry')))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert "[]" == result.stdout.strip()


def test_otel_sdk_disabled_turns_it_off(make_settings: MakeSettings, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    assert telemetry.configure(make_settings(otel_enabled=True)) is None


async def test_every_span_of_a_stage_run_carries_job_id_and_stage(
    traced: tuple[Any, InMemorySpanExporter], make_user: MakeUser
) -> None:
    container, exporter = traced
    db = await resolve(container.db)
    job_id = await new_job(db, make_user)
    redis = await resolve(container.redis)
    storage = await resolve(container.storage)
    paid = await resolve(container.paid_calls)
    tracker: CostTracker = await resolve(container.cost_tracker)
    exporter.clear()
    async with telemetry.stage_span(job_id=job_id, stage=STAGE.value, item="1", attempt=1, trace_context=None):
        validate_prompt("a calm song about the sea")
        await redis.set("k", b"v")
        await redis.get("k")
        await storage.upload_file("clips", f"{job_id}/a.bin", b"0123456789")
        await tracker.track_cost(job_id, STAGE, "replicate/musicgen", Decimal("0.5"))
        async with paid.admit(
            job_id, STAGE, provider="openai", model=MODEL, estimate={"input_tokens": 10, "output_tokens": 10}
        ):
            await db.fetchval("select 1")
    spans = exporter.get_finished_spans()
    names = {finished.name for finished in spans}
    expected = {
        f"stage {STAGE.value}",
        "validation.prompt",
        "storage.upload",
        "cost.track",
        "cost.reserve",
        "paid.rate_slot",
        f"chat {MODEL}",
        "SELECT",
        "SET",
        "GET",
    }
    assert expected <= names
    missing = [
        finished.name
        for finished in spans
        if (finished.attributes or {}).get("job_id") != str(job_id)
        or (finished.attributes or {}).get("stage") != STAGE.value
    ]
    assert [] == missing
    assert len({finished.context.trace_id for finished in spans}) == 1
    chat = next(finished for finished in spans if finished.name == f"chat {MODEL}")
    assert {"gen_ai.request.model": MODEL, "gen_ai.provider.name": "openai"}.items() <= dict(
        chat.attributes or {}
    ).items()


async def test_by_default_statements_are_counted_on_the_enclosing_span(
    make_settings: MakeSettings, db: DatabaseClient
) -> None:
    exporter = InMemorySpanExporter()
    running = telemetry.configure(make_settings(otel_enabled=True), span_exporters=[exporter], simple=True)
    assert running is not None
    try:
        await db.fetchval("select 1")  # outside any span: nothing recorded
        async with telemetry.stage_span(job_id=uuid.uuid4(), stage="composition", trace_context=None):
            for _ in range(3):
                await db.fetchval("select 1")
    finally:
        running.shutdown()
    (stage,) = exporter.get_finished_spans()
    attributes = dict(stage.attributes or {})
    assert 3 == attributes["db.client.statements"]
    seconds = attributes["db.client.seconds"]
    assert isinstance(seconds, float)
    assert 0 < seconds < 5


def test_a_paid_call_span_carries_genai_usage_and_cost_only_behind_the_flag(make_settings: MakeSettings) -> None:
    for flag in (False, True):
        exporter = InMemorySpanExporter()
        running = telemetry.configure(
            make_settings(otel_enabled=True, otel_genai_cost=flag), span_exporters=[exporter], simple=True
        )
        assert running is not None
        try:
            with telemetry.paid_call_span(provider="openai", model=MODEL) as call:
                call.usage({"input_tokens": Decimal(700), "output_tokens": Decimal(150)}, Decimal("0.0002"))
        finally:
            running.shutdown()
        (finished,) = exporter.get_finished_spans()
        attributes = dict(finished.attributes or {})
        assert (700, 150) == (attributes["gen_ai.usage.input_tokens"], attributes["gen_ai.usage.output_tokens"])
        assert flag == ("gen_ai.usage.cost" in attributes)


async def test_every_log_line_in_a_trace_carries_its_ids(traced: tuple[Any, InMemorySpanExporter]) -> None:
    container, exporter = traced
    db = await resolve(container.db)
    stream = io.StringIO()
    factory = LoggerFactory(stream=stream, level="DEBUG").start()
    log = get_logger("tests.telemetry")
    try:
        log.info("before the trace")
        with telemetry.span("request"):
            for index in range(50):
                log.info("line %d", index)
            async with telemetry.stage_span(job_id=uuid.uuid4(), stage="composition", trace_context=None):
                for index in range(50):
                    log.warning("inner %d", index)
                    await db.fetchval("select 1")
        log.info("after the trace")
    finally:
        factory.stop()
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    ours = [line for line in lines if line["logger"] == "tests.telemetry"]
    assert 102 == len(ours)
    inside = ours[1:-1]
    spans = {format(finished.context.span_id, "016x"): finished for finished in exporter.get_finished_spans()}
    traces = {format(finished.context.trace_id, "032x") for finished in spans.values()}
    assert 1 == len(traces)
    assert [] == [line for line in inside if line.get("trace_id") not in traces or line.get("span_id") not in spans]
    assert "trace_id" not in ours[0]
    assert "trace_id" not in ours[-1]
    assert {spans[line["span_id"]].name for line in inside} == {"request", "stage composition"}


@pytest.mark.slow
async def test_one_trace_spans_two_worker_processes(db: DatabaseClient, make_user: MakeUser, pg_dsn: str) -> None:
    job_id = str(await new_job(db, make_user))
    spawn = multiprocessing.get_context("spawn")
    loop = asyncio.get_running_loop()
    with ProcessPoolExecutor(1, mp_context=spawn) as submitter, ProcessPoolExecutor(1, mp_context=spawn) as worker:
        submitted = await loop.run_in_executor(submitter, telemetry_workers.submit, pg_dsn, job_id, "composition")
        ran = await loop.run_in_executor(worker, telemetry_workers.run_stage, pg_dsn, job_id, "composition")
        pids = {
            await loop.run_in_executor(submitter, _pid),
            await loop.run_in_executor(worker, _pid),
        }
    assert 2 == len(pids)
    submit = next(record for record in submitted if record["name"] == "submit")
    stage = next(record for record in ran if record["name"] == "stage composition")
    assert submit["trace_id"] == stage["trace_id"]
    assert submit["span_id"] == stage["parent_id"]
    # The claim's SELECT ran before the stage span, in a trace of its own; everything inside joins the submitter's.
    in_trace = [record for record in ran if record["trace_id"] == submit["trace_id"]]
    assert ["UPDATE", "stage composition"] == sorted(record["name"] for record in in_trace)
    assert all(record["attributes"].get("job_id") == job_id for record in in_trace)
    assert all(record["attributes"].get("stage") == "composition" for record in in_trace)


def _pid() -> int:
    import os  # noqa: PLC0415

    return os.getpid()


_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (\S+)$")


def _samples(text: str) -> dict[str, list[tuple[str, float]]]:
    samples: dict[str, list[tuple[str, float]]] = {}
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if match:
            samples.setdefault(match[1], []).append((match[2] or "", float(match[3])))
    return samples


async def test_a_prometheus_scrape_serves_every_metric_with_plausible_values(
    traced: tuple[Any, InMemorySpanExporter], make_user: MakeUser
) -> None:
    container, _ = traced
    db = await resolve(container.db)
    redis = await resolve(container.redis)
    paid = await resolve(container.paid_calls)
    tracker: CostTracker = await resolve(container.cost_tracker)
    running = telemetry.current_telemetry()
    assert running is not None
    assert running.prometheus_port is not None
    job_id = await new_job(db, make_user, budget=Decimal(1))
    await tracker.track_cost(job_id, STAGE, "replicate/musicgen", Decimal("0.25"))
    with pytest.raises(BudgetExceededError):
        async with tracker.reserve(job_id, STAGE, "openai/gpt-4o", Decimal(5)):
            pass
    await redis.set("hit", b"1")
    await redis.get("hit")
    await redis.get("miss")
    calls = 0

    @retry_with_backoff(max_attempts=2, base_delay=0.001)
    async def flaky() -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RetryableError("once")

    await flaky()
    with pytest.raises(ValueError, match="boom"):
        async with telemetry.stage_span(job_id=job_id, stage="composition", trace_context=None):
            raise ValueError("boom")
    async with telemetry.stage_span(job_id=job_id, stage="composition", trace_context=None):
        pass
    for stage, status, heartbeat in (
        ("audio_analysis", "queued", None),
        ("scene_planning", "queued", None),
        ("clip_generation", "running", "now() - interval '1 hour'"),
    ):
        running_fields = ", attempt_id, heartbeat_at, started_at" if status == "running" else ""
        running_values = f", gen_random_uuid(), {heartbeat}, now()" if status == "running" else ""
        await db.execute(
            f"insert into public.stage_runs (job_id, stage, status, queued_at{running_fields}) "
            f"values ($1, $2, $3, now() - interval '30 seconds'{running_values})",
            job_id,
            stage,
            status,
        )
    await db.execute(
        "insert into pgqueuer.pgqueuer (priority, status, entrypoint) values (0, 'queued', 'audio_analysis')"
    )
    async with (
        paid.admit(job_id, STAGE, provider="openai", model=MODEL, estimate={"input_tokens": 10, "output_tokens": 10}),
        httpx.AsyncClient() as client,
    ):
        response = await client.get(f"http://127.0.0.1:{running.prometheus_port}/metrics", timeout=10)
    assert 200 == response.status_code
    samples = _samples(response.text)

    def value(name: str, labels: str = "") -> float:
        found = [number for label, number in samples.get(name, []) if all(part in label for part in labels.split(","))]
        assert found, f"{name} {labels} not in the scrape"
        return sum(found)

    assert 0.25 == pytest.approx(value("videogen_cost_USD_total", 'api="replicate",model="musicgen"'))
    assert 1 == value("videogen_budget_refusals_total", 'api="openai"')
    assert 1 == value("videogen_paid_rate_limit_wait_seconds_count", f'model="{MODEL}"')
    assert 0 <= value("videogen_paid_rate_limit_wait_seconds_sum") < 5
    assert 1 == value("videogen_paid_concurrency_in_use", f'model="{MODEL}"')
    assert 1 == value("videogen_retries_total", 'function="')
    assert 1 == value("videogen_cache_requests_total", 'result="hit"')
    assert 1 == value("videogen_cache_requests_total", 'result="miss"')
    assert 5 <= value("videogen_db_pool_acquire_wait_seconds_count")
    assert 0 <= value("videogen_db_pool_acquire_wait_seconds_sum") < 5
    assert 2 == value("videogen_stage_duration_seconds_count", 'stage="composition"')
    assert 1 == value("videogen_stage_failures_total", 'reason="ValueError"')
    assert 1 == value("videogen_queue_depth", 'stage="audio_analysis"')
    assert 29 <= value("videogen_queue_oldest_age_seconds", 'stage="scene_planning"') < 600
    assert 1 == value("videogen_stages_running", 'stage="clip_generation"')
    assert 1 == value("videogen_stages_stale_heartbeats", 'stage="clip_generation"')
    assert 1 == value("videogen_pgqueuer_jobs", 'entrypoint="audio_analysis",status="queued"')
    assert 1 <= value("videogen_holds_active")
    assert 0 < value("videogen_holds_amount_USD") < 1
    assert 0.25 == pytest.approx(value("videogen_spend_today_USD", 'api="replicate/musicgen"'))
    # The README's "Metrics and traces" names exactly what an operator scrapes.
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("### Metrics and traces", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"`(videogen_[A-Za-z_]+)", section))
    assert len(documented) >= 17
    scraped = {re.sub(r"_(bucket|count|sum|created)$", "", name) for name in samples if name.startswith("videogen_")}
    assert [] == sorted(documented - scraped), "documented in the README but not served"
    assert [] == sorted(scraped - documented), "served but not documented in the README"


def test_fastapi_requests_are_traced_once_telemetry_runs(make_settings: MakeSettings) -> None:
    from fastapi import FastAPI  # noqa: PLC0415
    from starlette.testclient import TestClient  # noqa: PLC0415

    app = FastAPI()

    @app.get("/jobs/{job_id}")
    def read_job(job_id: uuid.UUID) -> dict[str, str]:
        with telemetry.job_context(job_id), telemetry.span("load job"):
            return {"id": str(job_id)}

    telemetry.instrument_fastapi(app)  # where the app is built, before telemetry starts
    exporter = InMemorySpanExporter()
    running = telemetry.configure(make_settings(otel_enabled=True), span_exporters=[exporter], simple=True)
    assert running is not None
    job_id = uuid.uuid4()
    try:
        with TestClient(app) as client:
            assert 200 == client.get(f"/jobs/{job_id}").status_code
    finally:
        running.shutdown()
    spans = exporter.get_finished_spans()
    names = {finished.name for finished in spans}
    assert {"GET /jobs/{job_id}", "load job"} <= names
    inner = next(finished for finished in spans if finished.name == "load job")
    assert str(job_id) == (inner.attributes or {}).get("job_id")
    assert 1 == len({finished.context.trace_id for finished in spans})


def test_a_taken_prometheus_port_leaves_the_process_running_without_an_endpoint(
    make_settings: MakeSettings, caplog: pytest.LogCaptureFixture
) -> None:
    with socket.socket() as other:  # another process on this host already serves the port
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        running = telemetry.configure(make_settings(otel_enabled=True, otel_exporter_prometheus_port=port))
        assert running is not None
        try:
            assert running.prometheus_port is None
            assert "cannot serve Prometheus" in caplog.text
        finally:
            running.shutdown()


async def test_a_failed_stage_marks_its_span_and_leaves_no_context_behind(make_settings: MakeSettings) -> None:
    from opentelemetry.trace import StatusCode, get_current_span  # noqa: PLC0415

    exporter = InMemorySpanExporter()
    running = telemetry.configure(make_settings(otel_enabled=True), span_exporters=[exporter], simple=True)
    assert running is not None
    try:
        with pytest.raises(ValueError, match="bad input"):
            async with telemetry.stage_span(job_id=uuid.uuid4(), stage="composition", trace_context=None):
                raise ValueError("bad input")
        assert not get_current_span().get_span_context().is_valid
    finally:
        running.shutdown()
    (stage,) = exporter.get_finished_spans()
    assert StatusCode.ERROR == stage.status.status_code
    assert ["exception"] == [event.name for event in stage.events]
