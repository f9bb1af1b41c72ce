-- Jobs, their stages and their costs: the pipeline's source of truth.
-- Constraints make bad rows impossible; row-level security lets a signed-in user read only their own jobs
-- (and write none); the backend connects as a role that bypasses RLS (postgres or service_role).

create table public.jobs (
    id uuid primary key default gen_random_uuid(),
    user_id uuid not null references auth.users (id) on delete cascade,
    status text not null default 'queued'
        constraint jobs_status_valid check (status in ('queued', 'processing', 'completed', 'failed')),
    audio_url text not null constraint jobs_audio_url_not_empty check (audio_url <> ''),
    user_prompt text not null constraint jobs_user_prompt_not_empty check (user_prompt <> ''),
    current_stage text constraint jobs_current_stage_valid check (current_stage in (
        'audio_analysis', 'scene_planning', 'reference_generation',
        'prompt_generation', 'clip_generation', 'composition'
    )),
    progress integer not null default 0 constraint jobs_progress_range check (progress between 0 and 100),
    estimated_remaining integer constraint jobs_estimated_remaining_positive check (estimated_remaining >= 0),
    total_cost numeric(12, 4) not null default 0 constraint jobs_total_cost_positive check (total_cost >= 0),
    budget_limit numeric(12, 4) constraint jobs_budget_limit_positive check (budget_limit >= 0),
    video_url text,
    error_message text,
    created_at timestamptz not null default now(),
    updated_at timestamptz not null default now(),
    completed_at timestamptz,
    constraint jobs_completed_at_iff_completed check ((status = 'completed') = (completed_at is not null)),
    constraint jobs_video_url_when_completed check (status <> 'completed' or video_url is not null)
);

comment on table public.jobs is 'One music video being made; status moves only forward (queued, processing, completed or failed).';
comment on column public.jobs.budget_limit is 'This job''s budget; null means the default from the settings.';
comment on column public.jobs.estimated_remaining is 'Seconds until done, when known.';

-- list_jobs_for_user: a user's jobs, newest first.
create index jobs_user_id_created_at_idx on public.jobs (user_id, created_at desc);
-- Workers and dashboards look for the jobs still in flight.
create index jobs_active_status_idx on public.jobs (status) where status in ('queued', 'processing');

create table public.job_stages (
    id uuid primary key default gen_random_uuid(),
    job_id uuid not null references public.jobs (id) on delete cascade,
    stage_name text not null constraint job_stages_stage_name_valid check (stage_name in (
        'audio_analysis', 'scene_planning', 'reference_generation',
        'prompt_generation', 'clip_generation', 'composition'
    )),
    status text not null default 'running'
        constraint job_stages_status_valid check (status in ('running', 'completed', 'failed')),
    started_at timestamptz not null default now(),
    completed_at timestamptz,
    error text,
    metadata jsonb not null default '{}'::jsonb
        constraint job_stages_metadata_object check (jsonb_typeof(metadata) = 'object'),
    created_at timestamptz not null default now(),
    updated_at timestamptz not null default now(),
    -- One stage row per job and stage (also the index get_job's stage list uses).
    constraint job_stages_one_per_job_and_stage unique (job_id, stage_name),
    constraint job_stages_completed_at_iff_finished check ((status = 'running') = (completed_at is null)),
    constraint job_stages_error_iff_failed check ((status = 'failed') = (error is not null)),
    constraint job_stages_completes_after_start check (completed_at is null or completed_at >= started_at)
);

create table public.job_costs (
    id uuid primary key default gen_random_uuid(),
    job_id uuid not null references public.jobs (id) on delete cascade,
    stage_name text not null constraint job_costs_stage_name_valid check (stage_name in (
        'audio_analysis', 'scene_planning', 'reference_generation',
        'prompt_generation', 'clip_generation', 'composition'
    )),
    api_name text not null constraint job_costs_api_name_length check (char_length(api_name) between 1 and 100),
    cost numeric(12, 4) not null constraint job_costs_cost_positive check (cost >= 0),
    idempotency_key text constraint job_costs_idempotency_key_length check (char_length(idempotency_key) between 1 and 200),
    created_at timestamptz not null default now(),
    -- A retried track_cost with the same key is counted once; rows without a key never collide.
    constraint job_costs_idempotency_key_unique unique (job_id, idempotency_key)
);

-- get_job's cost list and the per-job sums.
create index job_costs_job_id_created_at_idx on public.job_costs (job_id, created_at);

create function public.set_updated_at()
returns trigger
language plpgsql
set search_path = ''
as $$
begin
    new.updated_at := now();
    return new;
end
$$;

create trigger jobs_set_updated_at before update on public.jobs
    for each row execute function public.set_updated_at();
create trigger job_stages_set_updated_at before update on public.job_stages
    for each row execute function public.set_updated_at();

alter table public.jobs enable row level security;
alter table public.job_stages enable row level security;
alter table public.job_costs enable row level security;

-- Reading only; with no insert, update or delete policy, RLS refuses every write by a signed-in user.
create policy jobs_select_own on public.jobs
    for select to authenticated
    using (user_id = (select auth.uid()));
create policy job_stages_select_own on public.job_stages
    for select to authenticated
    using (exists (select 1 from public.jobs j where j.id = job_id and j.user_id = (select auth.uid())));
create policy job_costs_select_own on public.job_costs
    for select to authenticated
    using (exists (select 1 from public.jobs j where j.id = job_id and j.user_id = (select auth.uid())));

-- Supabase grants everything on public tables to anon and authenticated by default; RLS is the guard, and
-- the grants are narrowed too, so a table whose policies are dropped by mistake still cannot be written.
revoke all on public.jobs, public.job_stages, public.job_costs from anon, authenticated;
grant select on public.jobs, public.job_stages, public.job_costs to authenticated;
grant all on public.jobs, public.job_stages, public.job_costs to service_role;
