-- A paid call's commit writes its priced usage on the cost row in the same statement (issue 20): before, the
-- commit and `update job_costs set usage = ...` were two statements, two round trips per call. `p_usage` has a
-- default, so a caller that sends two arguments still finds this function.

drop function public.commit_job_reservation(uuid, numeric);

-- Record the actual cost of a reservation once: a second commit returns the first cost row, counting nothing.
-- A reservation maintain released (lapsed) is committed all the same, its whole cost an overrun; one released
-- by its own block raises 'P0001'. `held` is what the reservation still held at the commit (0 once lapsed).
-- Returns no row for an unknown reservation. `p_usage` is what priced the cost (shared.paid), written on the cost
-- row in the same statement; a commit sent again keeps the first row's.
create function public.commit_job_reservation(p_reservation_id uuid, p_actual numeric, p_usage jsonb default null)
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
        insert into public.job_costs (job_id, stage_name, api_name, cost, idempotency_key, usage)
        values (v_reservation.job_id, v_reservation.stage_name, v_reservation.api_name, p_actual, v_key, p_usage);
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

revoke all on function public.commit_job_reservation(uuid, numeric, jsonb) from public, anon, authenticated;
grant execute on function public.commit_job_reservation(uuid, numeric, jsonb) to service_role;
