-- Stages that survive their workers (shared.stages, issue 19). pgqueuer's queue (schema pgqueuer) only carries
-- the delivery; what a stage is, who holds it and what it produced lives here, moved forward by one statement
-- per change:
--   stage_runs         one row per job, stage and item (fan-out: clip 17 of 30); the attempt that holds it
--                      (attempt_id, the fence of every effect), its heartbeat, result or error
--   stage_groups       a fan-out's count: when `done` reaches `expected`, the `then` stage is queued once
--   stage_checkpoints  an external call's handle (a Replicate prediction id), kept before its result is awaited
--                      so that a re-run resumes it instead of paying again

create table public.stage_runs (
    id uuid primary key default gen_random_uuid(),
    job_id uuid not null references public.jobs (id) on delete cascade,
    stage text not null constraint stage_runs_stage_name check (stage ~ '^[a-z][a-z0-9_.-]{0,62}$'),
    item text not null default '' constraint stage_runs_item_length check (char_length(item) <= 200),
    status text not null default 'queued'
        constraint stage_runs_status_valid check (status in ('queued', 'running', 'completed', 'failed', 'cancelled')),
    attempt integer not null default 0 constraint stage_runs_attempt_non_negative check (attempt >= 0),
    max_attempts integer not null default 3
        constraint stage_runs_max_attempts_range check (max_attempts between 1 and 100),
    attempt_id uuid,
    worker text constraint stage_runs_worker_length check (char_length(worker) <= 200),
    payload jsonb not null default '{}'::jsonb,
    result jsonb,
    error text,
    -- W3C trace context of the submitter (traceparent, tracestate), so one trace follows a job across machines.
    trace_context jsonb,
    queued_at timestamptz not null default now(),
    started_at timestamptz,
    heartbeat_at timestamptz,
    finished_at timestamptz,
    constraint stage_runs_one_per_item unique (job_id, stage, item),
    constraint stage_runs_running_has_attempt check (status <> 'running' or attempt_id is not null),
    constraint stage_runs_finished_iff_final check ((status in ('completed', 'failed', 'cancelled')) = (finished_at is not null))
);

comment on table public.stage_runs is
    'One stage item of a job (shared.stages): who holds it (attempt_id), its heartbeat, result or error.';

-- The operator's view and the housekeeping read only live rows.
create index stage_runs_live_idx on public.stage_runs (status, heartbeat_at) where status in ('queued', 'running');

create table public.stage_groups (
    job_id uuid not null references public.jobs (id) on delete cascade,
    stage text not null,
    expected integer not null constraint stage_groups_expected_positive check (expected > 0),
    done integer not null default 0,
    then_stage text,
    then_payload jsonb,
    then_max_attempts integer,
    created_at timestamptz not null default now(),
    primary key (job_id, stage),
    constraint stage_groups_done_range check (done between 0 and expected)
);

create table public.stage_checkpoints (
    run_id uuid not null references public.stage_runs (id) on delete cascade,
    name text not null constraint stage_checkpoints_name_length check (char_length(name) between 1 and 200),
    value jsonb not null,
    attempt integer not null,
    created_at timestamptz not null default now(),
    primary key (run_id, name)
);

-- The attempt a budget reservation belongs to, so that housekeeping and the engine agree on who is alive.
alter table public.job_cost_reservations add column if not exists attempt_id uuid;

-- Who holds a job_stages row (start_stage's `worker`), named to the loser of a race.
alter table public.job_stages add column if not exists worker text;

alter table public.stage_runs enable row level security;
alter table public.stage_groups enable row level security;
alter table public.stage_checkpoints enable row level security;

-- A signed-in user sees the stages of their own jobs (the timeline), never the checkpoints or the groups.
create policy stage_runs_select_own on public.stage_runs
    for select to authenticated
    using (exists (select 1 from public.jobs j where j.id = job_id and j.user_id = (select auth.uid())));

revoke all on public.stage_runs, public.stage_groups, public.stage_checkpoints from anon, authenticated;
grant select on public.stage_runs to authenticated;
grant all on public.stage_runs, public.stage_groups, public.stage_checkpoints to service_role;
