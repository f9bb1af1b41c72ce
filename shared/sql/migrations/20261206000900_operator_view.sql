-- The operator's view (`python -m shared status`, shared/operator_view.py) reads only bounded ranges: today's
-- costs and the last day's failed stages, each through an index of its own, so it stays fast at 1M jobs.

-- Spend today per API: an index-only range scan of today's rows.
create index if not exists job_costs_created_at_idx on public.job_costs (created_at) include (api_name, cost);

-- Top failure reasons of the last day: only failed rows, by when they failed.
create index if not exists stage_runs_failed_finished_at_idx on public.stage_runs (finished_at)
    where status = 'failed';
