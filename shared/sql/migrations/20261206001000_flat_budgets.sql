-- Budgets that cost the same at any number of retained reservations, and money that survives a paused worker
-- (issues 24 and 19):
-- * a job's overrun is a running total (job_budget_totals), moved by the commit that overran, instead of a sum
--   over every committed reservation the job keeps for 30 days (127.6 ms at 100k reservations on one job);
-- * what is reserved is summed from an index that holds only active rows and carries the estimate, so the
--   budget statements read as many rows as are in flight, under the custom plan and the generic plan alike;
-- * a reservation that `maintain` released because its worker stopped renewing it (`lapsed_at`: a GC pause, a
--   frozen VM, SIGSTOP) still takes that worker's commit: the money was spent, so it is recorded, all of it as
--   an overrun (nothing held it any more). Only a reservation its own block released refuses a commit;
-- * a reservation remembers the stage attempt it belongs to (`attempt_id`, joined with stage_runs), so that
--   housekeeping and the stage engine agree on who is alive.

alter table public.job_cost_reservations add column if not exists attempt_id uuid;
alter table public.job_cost_reservations add column if not exists lapsed_at timestamptz;
comment on column public.job_cost_reservations.attempt_id is
    'The stage attempt (stage_runs.attempt_id) that holds this reservation; null outside the stage engine.';
comment on column public.job_cost_reservations.lapsed_at is
    'When maintain released this active reservation for want of renewals; a later commit is still recorded.';

create table public.job_budget_totals (
    job_id uuid primary key references public.jobs (id) on delete cascade,
    overrun numeric(12, 4) not null default 0 constraint job_budget_totals_overrun_positive check (overrun >= 0)
);
comment on table public.job_budget_totals is
    'Running budget totals per job, moved in the same statement as the reservation they come from.';
comment on column public.job_budget_totals.overrun is
    'Money committed above what its reservation held (the whole cost for a lapsed one); part of jobs.total_cost.';

alter table public.job_budget_totals enable row level security;
revoke all on public.job_budget_totals from anon, authenticated;
grant all on public.job_budget_totals to service_role;

insert into public.job_budget_totals (job_id, overrun)
select r.job_id, sum(r.actual_cost - r.estimated_cost)
  from public.job_cost_reservations r
 where r.status = 'committed' and r.actual_cost > r.estimated_cost
 group by r.job_id
on conflict (job_id) do update set overrun = excluded.overrun;

-- The sum of a job's active reservations, read from the index alone (estimated_cost rides along): the job's
-- committed and released rows are not in it, however many it keeps.
create index job_cost_reservations_active_held_idx on public.job_cost_reservations (job_id, expires_at)
    include (estimated_cost) where status = 'active';
drop index public.job_cost_reservations_active_idx;

drop function public.reserve_job_budget(uuid, uuid, text, text, numeric, numeric, numeric, interval);

-- As before (20261202000100_cost_reservation_identity), and the reservation records the attempt it belongs to.
-- `p_attempt_id` has a default, so a caller that sends eight arguments still finds this function.
create function public.reserve_job_budget(
    p_reservation_id uuid,
    p_job_id uuid,
    p_stage_name text,
    p_api_name text,
    p_estimate numeric,
    p_limit numeric,
    p_default_limit numeric,
    p_ttl interval,
    p_attempt_id uuid default null
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
    v_status text;
    v_id uuid;
begin
    select j.total_cost, coalesce(p_limit, j.budget_limit, p_default_limit)
      into v_spent, v_budget
      from public.jobs j
     where j.id = p_job_id
       for update;
    if not found then
        return;
    end if;
    select r.status into v_status from public.job_cost_reservations r where r.id = p_reservation_id;
    select coalesce(sum(r.estimated_cost), 0)
      into v_reserved
      from public.job_cost_reservations r
     where r.job_id = p_job_id and r.status = 'active' and r.expires_at > clock_timestamp()
       and r.id <> p_reservation_id;
    if v_status is not null then
        v_id := case when v_status = 'active' then p_reservation_id end;
    elsif v_spent + v_reserved + p_estimate <= v_budget then
        insert into public.job_cost_reservations
               (id, job_id, stage_name, api_name, estimated_cost, expires_at, attempt_id)
        values (p_reservation_id, p_job_id, p_stage_name, p_api_name, p_estimate, clock_timestamp() + p_ttl,
                p_attempt_id);
        v_id := p_reservation_id;
    end if;
    return query select v_id, v_spent, v_reserved, v_budget;
end
$$;

drop function public.commit_job_reservation(uuid, numeric);

-- Record the actual cost of a reservation once: a second commit returns the first cost row, counting nothing.
-- A reservation maintain released (lapsed) is committed all the same, its whole cost an overrun; one released
-- by its own block raises 'P0001'. `held` is what the reservation still held at the commit (0 once lapsed).
-- Returns no row for an unknown reservation.
create function public.commit_job_reservation(p_reservation_id uuid, p_actual numeric)
returns table (
    id uuid,
    job_id uuid,
    stage_name text,
    api_name text,
    cost numeric,
    idempotency_key text,
    created_at timestamptz,
    usage jsonb,
    newly_recorded boolean,
    spent numeric,
    budget_limit numeric,
    held numeric,
    overrun numeric
)
language plpgsql
volatile
set search_path = public, pg_temp
as $$
declare
    v_reservation public.job_cost_reservations%rowtype;
    v_key text;
    v_new boolean;
    v_held numeric;
    v_overrun numeric;
begin
    select * into v_reservation from public.job_cost_reservations r where r.id = p_reservation_id for update;
    if not found then
        return;
    end if;
    v_key := 'reservation:' || v_reservation.id::text;
    if v_reservation.status = 'released' and v_reservation.lapsed_at is null then
        raise exception 'reservation released' using errcode = 'P0001';
    end if;
    v_new := v_reservation.status <> 'committed';
    v_held := case when v_reservation.lapsed_at is null then v_reservation.estimated_cost else 0 end;
    v_overrun := greatest(coalesce(v_reservation.actual_cost, p_actual) - v_held, 0);
    if v_new then
        -- Take the job row's strongest lock before the insert below takes a weaker one (its foreign key check):
        -- upgrading that lock later, while a reserve_job_budget waits for the row, would deadlock.
        perform 1 from public.jobs j where j.id = v_reservation.job_id for update;
        -- An expired or lapsed reservation is still committed: the money was spent, so it is recorded truthfully.
        insert into public.job_costs (job_id, stage_name, api_name, cost, idempotency_key)
        values (v_reservation.job_id, v_reservation.stage_name, v_reservation.api_name, p_actual, v_key);
        update public.jobs j set total_cost = j.total_cost + p_actual where j.id = v_reservation.job_id;
        update public.job_cost_reservations r set status = 'committed', actual_cost = p_actual
         where r.id = v_reservation.id;
        if v_overrun > 0 then
            insert into public.job_budget_totals as t (job_id, overrun) values (v_reservation.job_id, v_overrun)
            on conflict on constraint job_budget_totals_pkey do update set overrun = t.overrun + excluded.overrun;
        end if;
    end if;
    return query
        select c.id, c.job_id, c.stage_name, c.api_name, c.cost, c.idempotency_key, c.created_at, c.usage,
               v_new, j.total_cost, j.budget_limit, v_held, v_overrun
          from public.job_costs c
          join public.jobs j on j.id = c.job_id
         where c.job_id = v_reservation.job_id and c.idempotency_key = v_key;
end
$$;

revoke all on function public.reserve_job_budget(uuid, uuid, text, text, numeric, numeric, numeric, interval, uuid)
    from public, anon, authenticated;
revoke all on function public.commit_job_reservation(uuid, numeric) from public, anon, authenticated;
grant execute on function public.reserve_job_budget(uuid, uuid, text, text, numeric, numeric, numeric, interval, uuid)
    to service_role;
grant execute on function public.commit_job_reservation(uuid, numeric) to service_role;
