-- What priced a cost row (shared.paid): provider, model, units, unit prices, cost and price version, all as
-- strings (never floats). Null for rows recorded with a caller's amount (track_cost).
alter table public.job_costs add column if not exists usage jsonb;

alter table public.job_costs drop constraint if exists job_costs_usage_shape;
alter table public.job_costs add constraint job_costs_usage_shape check (
    usage is null
    or (jsonb_typeof(usage) = 'object'
        and usage ?& array['provider', 'model', 'units', 'unit_prices', 'cost', 'price_version'])
);

comment on column public.job_costs.usage is
    'the priced usage: {provider, model, units, unit_prices, cost, price_version} (shared.paid.pricing)';
