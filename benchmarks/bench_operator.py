"""The operator's view at scale: ``status`` and ``job <id>`` at 1M jobs (``python -m benchmarks operator``).

One scratch database: 10,000 users, BENCH_OPERATOR_JOBS jobs (default 1,000,000): the same work in flight at
every size (1,000 failed in the last hour, 1,000 processing, 50 of them with a stale heartbeat, 1,000 queued,
their costs today, 1,000 active holds, 1,000 rows in pgqueuer's queue) and the rest history (completed jobs 2 to
30 days old with a stage run, a cost row, and a committed hold for one in sixteen). Then each read runs
sequentially: warm-up, SAMPLES timed runs, the median in milliseconds; and the same at 10,000 jobs, for the
growth ratio (bounded reads: about 1).
"""

from __future__ import annotations

import asyncio
import io
import os
import statistics
import time
from datetime import timedelta
from uuid import UUID

from benchmarks._postgres import open_client, scratch_database
from shared.operator_view import print_job, print_status, read_job, read_status

__all__ = ["main"]

JOBS = int(os.environ.get("BENCH_OPERATOR_JOBS", "1000000"))
SAMPLES = 21
STUCK_AFTER = timedelta(minutes=10)
SMALL = 10_000

# The work in flight is the same at every size (1,000 failed in the last day, 1,000 processing, 1,000 queued, their
# costs today); the rest is history: completed jobs two to thirty days old. A bounded view must not see it.
_SEED = """
insert into auth.users (id) select gen_random_uuid() from generate_series(1, 10000);
create temporary table u as select id, row_number() over () as n from auth.users;
insert into public.jobs (user_id, status, audio_url, user_prompt, video_url, completed_at, current_stage,
                         error_message, created_at, updated_at)
select u.id, s.status, 'https://example.com/a.mp3', 'a neon city',
       case when s.status = 'completed' then 'https://example.com/v.mp4' end,
       case when s.status = 'completed' then s.at end,
       'clip_generation',
       case when s.status = 'failed' then 'stage clip_generation: provider refused' end,
       s.at, s.at
  from generate_series(1, $1::int) g
  join u on u.n = 1 + g % 10000
 cross join lateral (
       select case when g <= 1000 then 'failed' when g <= 2000 then 'processing' when g <= 3000 then 'queued'
                   else 'completed' end as status,
              case when g <= 3000 then now() - g * interval '10 seconds'
                   else now() - interval '2 days' - (g % 672) * interval '1 hour' end as at
 ) s;
"""

_SEED_RUNS = """
insert into public.stage_runs (job_id, stage, status, attempt, attempt_id, worker, error, trace_context,
                               queued_at, started_at, heartbeat_at, finished_at)
select id,
       'clip_generation',
       case status when 'failed' then 'failed' when 'processing' then 'running' when 'queued' then 'queued'
                   else 'completed' end,
       case when status = 'queued' then 0 else 1 end,
       case when status = 'processing' then gen_random_uuid() end,
       case when status <> 'queued' then 'worker-1' end,
       case when status = 'failed' then (array['provider refused: content policy', 'timeout after 600 s',
                                               'budget exceeded'])[1 + extract(epoch from created_at)::bigint % 3]
       end,
       jsonb_build_object('traceparent', '00-' || md5(id::text) || '-' || left(md5(id::text || 's'), 16) || '-01'),
       created_at, case when status <> 'queued' then created_at end,
       case when status = 'processing' then now() - (case when random() < 0.05 then interval '1 hour'
                                                          else interval '5 seconds' end) end,
       case when status in ('completed', 'failed') then created_at + interval '1 minute' end
  from public.jobs;
insert into public.job_costs (job_id, stage_name, api_name, cost, created_at)
select id, 'clip_generation', (array['openai', 'replicate', 'elevenlabs', 'suno'])[1 + abs(hashtext(id::text)) % 4],
       0.0123, created_at + interval '30 seconds'
  from public.jobs;
insert into public.job_cost_reservations (job_id, stage_name, api_name, estimated_cost, status, expires_at, created_at)
select id, 'clip_generation', 'replicate', 0.5,
       case when status = 'processing' then 'active' else 'committed' end,
       now() + interval '10 minutes', created_at
  from public.jobs where status = 'processing' or id::text like '0%';
insert into pgqueuer.pgqueuer (priority, status, entrypoint)
select 0, 'queued', 'clip_generation' from generate_series(1, 1000);
analyze;
"""


async def _median_ms(call: object) -> float:
    async def run() -> None:
        await call()  # type: ignore[operator]  # an async callable

    for _ in range(3):
        await run()
    times = []
    for _ in range(SAMPLES):
        started = time.perf_counter()
        await run()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


async def _measure(jobs: int) -> dict[str, float]:
    async with scratch_database(synchronous_commit=False) as dsn, open_client(dsn) as db:
        started = time.perf_counter()
        async with db.transaction():
            await db.execute(_SEED.replace("$1::int", str(jobs)), timeout=1800)
            await db.execute(_SEED_RUNS, timeout=1800)
        seeded = time.perf_counter() - started
        failed: UUID = await db.fetchval("select id from public.jobs where status = 'failed' limit 1")

        async def status() -> None:
            print_status(await read_status(db, stuck_after=STUCK_AFTER), io.StringIO())

        async def job() -> None:
            print_job(await read_job(db, failed), io.StringIO())

        return {"seed_s": seeded, "status": await _median_ms(status), "job": await _median_ms(job)}


async def _run() -> str:
    small = await _measure(SMALL)
    large = await _measure(JOBS)
    lines = [
        f"| read | {SMALL:,} jobs (ms) | {JOBS:,} jobs (ms) | growth |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| `{name}` | {small[name]:.2f} | {large[name]:.2f} | {large[name] / small[name]:.2f} |"
        for name in ("status", "job")
    ]
    lines.append(f"\n(seeding {JOBS:,} jobs took {large['seed_s']:.0f} s; medians of {SAMPLES} runs)")
    return "\n".join(lines)


def main() -> str:
    """Run the benchmark and return its Markdown table."""
    return asyncio.run(_run())


if __name__ == "__main__":
    print(main())
