-- Budget reservations and the functions that make budget decisions for the CostTracker
-- (shared/cost_tracking.py), inside PostgreSQL so that they hold across every worker process and machine.
-- Each function is one round trip and one transaction.

-- A stage about to spend reserves its estimate first; the reservation is committed with the actual cost or
-- released. One that is neither within its TTL (a worker that died) stops counting at expires_at.
create table public.job_cost_reservations (
    id uuid primary key default gen_random_uuid(),
    job_id uuid not null references public.jobs (id) on delete cascade,
    stage_name text not null,
    api_name text not null,
    estimated_cost numeric(12, 4) not null constraint job_cost_reservations_estimate_positive check (estimated_cost >= 0),
    status text not null default 'active'
        constraint job_cost_reservations_status_valid check (status in ('active', 'committed', 'released')),
    expires_at timestamptz not null,
    created_at timestamptz not null default now()
);

-- The sum of a job's active reservations, taken under the job's row lock on every reservation.
create index job_cost_reservations_active_idx on public.job_cost_reservations (job_id, expires_at)
    where status = 'active';

alter table public.job_cost_reservations enable row level security;
revoke all on public.job_cost_reservations from anon, authenticated;
grant all on public.job_cost_reservations to service_role;
--
-- Lock order, the same everywhere so two calls can never deadlock: the job row first (reserve, track_cost), or
-- the reservation row and then the job row (commit). Each takes the job row's lock at its final strength before
-- any statement that would take a weaker one (a foreign key check), because upgrading a row lock while another
-- transaction waits for the row is a deadlock.

-- Reserve `p_estimate` on a job if spent + active reservations + estimate stays within the budget.
-- Returns one row (reservation_id null when refused) or no row for an unknown job.
create or replace function public.reserve_job_budget(
    p_job_id uuid,
    p_stage_name text,
    p_api_name text,
    p_estimate numeric,
    p_limit numeric,
    p_default_limit numeric,
    p_ttl interval
)
returns table (reservation_id uuid, spent numeric, reserved numeric, budget numeric)
language plpgsql
volatile
set search_path = public, pg_temp
as $$
declare
    v_spent numeric;
    v_budget numeric;
    v_reserved numeric;
    v_id uuid;
begin
    -- The row lock serialises reservations on one job. Each statement of a volatile function takes a new
    -- snapshot, so the sum below sees every reservation committed by whoever held the lock before us.
    select j.total_cost, coalesce(p_limit, j.budget_limit, p_default_limit)
      into v_spent, v_budget
      from public.jobs j
     where j.id = p_job_id
       for update;
    if not found then
        return;
    end if;
    select coalesce(sum(r.estimated_cost), 0)
      into v_reserved
      from public.job_cost_reservations r
     where r.job_id = p_job_id and r.status = 'active' and r.expires_at > clock_timestamp();
    if v_spent + v_reserved + p_estimate <= v_budget then
        insert into public.job_cost_reservations (job_id, stage_name, api_name, estimated_cost, expires_at)
        values (p_job_id, p_stage_name, p_api_name, p_estimate, clock_timestamp() + p_ttl)
        returning id into v_id;
    end if;
    return query select v_id, v_spent, v_reserved, v_budget;
end
$$;

-- Record the actual cost of a reservation once: a second commit returns the first cost row, counting nothing.
-- Returns no row for an unknown reservation; raises 'P0001' with message 'reservation released' after a release.
create or replace function public.commit_job_reservation(p_reservation_id uuid, p_actual numeric)
returns table (
    id uuid,
    job_id uuid,
    stage_name text,
    api_name text,
    cost numeric,
    idempotency_key text,
    created_at timestamptz,
    newly_recorded boolean,
    spent numeric,
    budget_limit numeric
)
language plpgsql
volatile
set search_path = public, pg_temp
as $$
declare
    v_reservation public.job_cost_reservations%rowtype;
    v_key text;
begin
    select * into v_reservation from public.job_cost_reservations r where r.id = p_reservation_id for update;
    if not found then
        return;
    end if;
    v_key := 'reservation:' || v_reservation.id::text;
    if v_reservation.status = 'released' then
        raise exception 'reservation released' using errcode = 'P0001';
    end if;
    if v_reservation.status = 'active' then
        -- Take the job row's strongest lock before the insert below takes a weaker one (its foreign key check):
        -- upgrading that lock later, while a reserve_job_budget waits for the row, would deadlock.
        perform 1 from public.jobs j where j.id = v_reservation.job_id for update;
        -- An expired reservation is still committed: the money was spent, so it is recorded truthfully.
        insert into public.job_costs (job_id, stage_name, api_name, cost, idempotency_key)
        values (v_reservation.job_id, v_reservation.stage_name, v_reservation.api_name, p_actual, v_key);
        update public.jobs j set total_cost = j.total_cost + p_actual where j.id = v_reservation.job_id;
        update public.job_cost_reservations r set status = 'committed' where r.id = v_reservation.id;
    end if;
    return query
        select c.id, c.job_id, c.stage_name, c.api_name, c.cost, c.idempotency_key, c.created_at,
               v_reservation.status = 'active', j.total_cost, j.budget_limit
          from public.job_costs c
          join public.jobs j on j.id = c.job_id
         where c.job_id = v_reservation.job_id and c.idempotency_key = v_key;
end
$$;

revoke all on function public.reserve_job_budget(uuid, text, text, numeric, numeric, numeric, interval) from public;
revoke all on function public.commit_job_reservation(uuid, numeric) from public;
grant execute on function public.reserve_job_budget(uuid, text, text, numeric, numeric, numeric, interval) to service_role;
grant execute on function public.commit_job_reservation(uuid, numeric) to service_role;
