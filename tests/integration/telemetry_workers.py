"""Worker processes of the cross-process trace test: one submits a stage, another runs it (spawned, each its own
telemetry with the SDK's in-memory exporter); each returns the spans it finished."""

from __future__ import annotations

import asyncio
from typing import Any
from uuid import UUID

from shared.config import Settings
from shared.database import init_database
from shared.telemetry import configure, inject_trace_context, span, stage_span

SpanRecord = dict[str, Any]


def _settings(dsn: str) -> Settings:
    return Settings(
        _env_file=None, environment="development", database_url=dsn, otel_enabled=True, otel_db_spans="statement"
    )


async def _in_telemetry(dsn: str, work: Any) -> list[SpanRecord]:
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter  # noqa: PLC0415

    exporter = InMemorySpanExporter()
    settings = _settings(dsn)
    telemetry = configure(settings, span_exporters=[exporter], simple=True)
    assert telemetry is not None
    try:
        async for db in init_database(settings):
            await work(db)
    finally:
        telemetry.shutdown()
    return [
        {
            "name": finished.name,
            "trace_id": format(finished.context.trace_id, "032x"),
            "span_id": format(finished.context.span_id, "016x"),
            "parent_id": format(finished.parent.span_id, "016x") if finished.parent is not None else None,
            "attributes": dict(finished.attributes or {}),
        }
        for finished in exporter.get_finished_spans()
    ]


def submit(dsn: str, job_id: str, stage: str) -> list[SpanRecord]:
    """Queue a stage row with the submitter's trace context, inside a span of its own."""

    async def work(db: Any) -> None:
        with span("submit"):
            context = inject_trace_context()
            await db.execute(
                "insert into public.stage_runs (job_id, stage, trace_context) values ($1, $2, $3::jsonb)",
                UUID(job_id),
                stage,
                context,
            )

    return asyncio.run(_in_telemetry(dsn, work))


def run_stage(dsn: str, job_id: str, stage: str) -> list[SpanRecord]:
    """Claim the stage row and run it in ``stage_span`` under its stored trace context."""

    async def work(db: Any) -> None:
        row = await db.fetchrow(
            "select trace_context as context, attempt from public.stage_runs where job_id = $1 and stage = $2",
            UUID(job_id),
            stage,
        )
        async with stage_span(
            job_id=UUID(job_id), stage=stage, item="", attempt=row["attempt"] + 1, trace_context=row["context"]
        ):
            await db.execute(
                "update public.stage_runs set status = 'completed', finished_at = now()"
                " where job_id = $1 and stage = $2",
                UUID(job_id),
                stage,
            )

    return asyncio.run(_in_telemetry(dsn, work))
