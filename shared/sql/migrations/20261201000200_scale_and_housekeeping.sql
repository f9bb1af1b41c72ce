-- Constant cost as the data grows, and what housekeeping (shared/maintenance.py) needs.

-- Every foreign key has an index whose leading column is the key: deleting a job cascaded into a sequential
-- scan of job_cost_reservations (287 ms at 1M jobs; 14 s to delete a user with 100 jobs), because its only
-- index was partial. tests/integration/test_schema_indexes.py lists any foreign key left without one.
create index job_cost_reservations_job_id_idx on public.job_cost_reservations (job_id);

-- Keyset pages: list_jobs_for_user orders by (created_at, id) so that ties on created_at page exactly, and
-- its cursor is an index condition at any depth. This index serves the jobs.user_id foreign key too.
create index jobs_user_id_created_at_id_idx on public.jobs (user_id, created_at desc, id desc);
drop index public.jobs_user_id_created_at_idx;

-- list_costs pages by (created_at, id) within a job; also the job_costs.job_id foreign key's index.
create index job_costs_job_id_created_at_id_idx on public.job_costs (job_id, created_at, id);
drop index public.job_costs_job_id_created_at_idx;

-- A running stage's worker renews this while it works; `python -m shared maintain` fails the job of a stage
-- whose last sign of life (started_at or this) is older than STAGE_HEARTBEAT_TIMEOUT_SECONDS.
alter table public.job_stages add column heartbeat_at timestamptz;
comment on column public.job_stages.heartbeat_at is 'Last heartbeat of the worker running this stage; null before the first.';

-- Pruning finished reservations in bounded batches, oldest first, without reading the active ones.
create index job_cost_reservations_finished_created_at_idx on public.job_cost_reservations (created_at)
    where status <> 'active';
