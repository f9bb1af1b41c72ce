"""What tracing costs (issue 22: an instrumented fetchrow and stage step at >= 0.95 x uninstrumented).

One scratch database, one DatabaseClient, 64 concurrent tasks. Each contender is a round of the same work with
telemetry in a different state, the rounds interleaved with the order reversed every other round (ABBA); telemetry
is configured before and shut down after each round, outside the timed part. Spans go through the SDK's
BatchSpanProcessor to an exporter that drops them (no network: what is measured is the process's own cost,
the batch thread's share of the GIL included).

- off: OTEL_ENABLED=false (what every call site pays when telemetry is off: a global read);
- summary (the default, OTEL_DB_SPANS=summary): no span per statement, the enclosing span counts them;
- statement: the database client's own lean span per statement (never made current, two attributes);
- asyncpg: asyncpg's instrumentor instead (it parses the query and reads the connection for every call);
- summary 10 %: the default with ``OTEL_TRACES_SAMPLER=parentbased_traceidratio``, ``_ARG=0.1``.

Every traced state samples everything unless said otherwise; the stage span is one more span per step. Beside
the throughput (wall clock, which the other work on this shared machine moves a lot), each round's operations
per second of this process's CPU time (the batch thread included, PostgreSQL's work excluded, so the overhead
shows larger than in the throughput) is compared too: it is the steadier figure here.
The work: ``fetchrow`` (a primary-key read of a random job among 1,000), and a stage step (``stage_span`` around
a read of the job, an update of its progress and a read of its total: three statements).
"""

from __future__ import annotations

import asyncio
import os
import random
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from benchmarks._postgres import TASKS, Rates, interleaved, open_client, ops_per_second, scratch_database, seed_jobs
from shared import telemetry
from shared.config import Settings
from shared.database import DatabaseClient

__all__ = ["main"]

JOBS = 1_000
OPERATIONS = 4_000
STEPS = 2_000
ROUNDS = 4
TARGET = 0.95
QUERY = "select * from public.jobs where id = $1"

# name: (settings overrides, environment)
STATES: dict[str, tuple[dict[str, Any], dict[str, str]]] = {
    "off": ({"otel_enabled": False}, {}),
    "summary": ({"otel_enabled": True}, {}),
    "statement": ({"otel_enabled": True, "otel_db_spans": "statement"}, {}),
    "asyncpg": ({"otel_enabled": True, "otel_db_spans": "asyncpg"}, {}),
    "summary 10 %": (
        {"otel_enabled": True},
        {"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.1"},
    ),
}


class _Drop(SpanExporter):
    """An exporter that accepts every batch and keeps nothing."""

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        return None


def _contender(
    dsn: str,
    state: str,
    operation: Callable[[uuid.UUID], Awaitable[object]],
    ids: list[uuid.UUID],
    cpu: dict[str, list[float]],
) -> Callable[[], Awaitable[float]]:
    overrides, environment = STATES[state]

    async def a_round() -> float:
        saved = {name: os.environ.get(name) for name in environment}
        os.environ.update(environment)
        try:
            settings = Settings(_env_file=None, database_url=dsn, **overrides)
            running = telemetry.configure(settings, span_exporters=[_Drop()])
        finally:
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value
        try:
            started = time.process_time()
            rate = await ops_per_second(operation, ids)
            cpu.setdefault(state, []).append(len(ids) / (time.process_time() - started))
            return rate
        finally:
            if running is not None:
                running.shutdown()

    return a_round


def _step(db: DatabaseClient) -> Callable[[uuid.UUID], Awaitable[object]]:
    async def step(job_id: uuid.UUID) -> None:
        async with telemetry.stage_span(job_id=job_id, stage="composition", item="", attempt=1, trace_context=None):
            await db.fetchrow(QUERY, job_id)
            await db.execute("update public.jobs set progress = least(progress + 1, 99) where id = $1", job_id)
            await db.fetchval("select total_cost from public.jobs where id = $1", job_id)

    return step


async def _measure() -> dict[str, tuple[Rates, Rates]]:
    async with scratch_database() as dsn, open_client(dsn) as db:
        job_ids = await seed_jobs(db, JOBS)
        reads = random.choices(job_ids, k=OPERATIONS)
        steps = random.choices(job_ids, k=STEPS)

        async def fetchrow(job_id: uuid.UUID) -> object:
            return await db.fetchrow(QUERY, job_id)

        work = {"fetchrow": (fetchrow, reads), "stage step": (_step(db), steps)}
        results: dict[str, tuple[Rates, Rates]] = {}
        for name, (operation, ids) in work.items():
            await ops_per_second(operation, ids[:500])  # warm-up: every connection opened, statements prepared
            cpu: dict[str, list[float]] = {}
            contenders = {state: _contender(dsn, state, operation, ids, cpu) for state in STATES}
            results[name] = (await interleaved(ROUNDS, contenders), Rates(cpu))
        return results


def main() -> str:
    """Measure each state against telemetry off and return a Markdown report."""
    results = asyncio.run(_measure())
    rows = [
        f"| {TASKS} tasks, {ROUNDS} ABBA rounds of each state | off ops/s (best) | state | ops/s (best) "
        "| state / off, best / best | median of paired rounds | per client CPU second: state / off (best) |",
        "|---|---:|---|---:|---:|---:|---:|",
    ]
    for work, (rates, cpu) in results.items():
        for state in STATES:
            if state == "off":
                continue
            ratio = rates.ratio(state, "off")
            mark = f" (target >= {TARGET})" if ratio >= TARGET else f" **below {TARGET}**"
            rows.append(
                f"| {work} | {rates.best('off'):,.0f} | {state} | {rates.best(state):,.0f} | {ratio:.2f}{mark} "
                f"| {rates.median_paired_ratio(state, 'off'):.2f} | {cpu.ratio(state, 'off'):.2f} |"
            )
    return "\n".join(rows)


if __name__ == "__main__":
    print(main())
