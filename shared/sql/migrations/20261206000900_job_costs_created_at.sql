-- Spend by day (shared.telemetry's videogen_spend_today gauge, the operator's status): read from an index on
-- created_at instead of a scan of every cost row.
create index if not exists job_costs_created_at_idx on public.job_costs (created_at);
