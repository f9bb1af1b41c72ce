-- A paid effect of a stage item holds one reservation across all its attempts (issue 19: a re-run never doubles a
-- ledger row). The stage engine's caller gives every attempt of the same effect the same reservation id
-- (CostTracker.reserve(idempotency_key=ctx.key(name))); its commit is keyed by that id, so it is recorded once.
-- When a later attempt (another `p_attempt_id`) reserves an id that already exists:
-- * still active (the earlier attempt died or is paused holding it): the new attempt takes the hold over, renewed
--   to a full TTL, so the budget is not held twice and the dead attempt's hold is not stranded;
-- * committed (the earlier attempt paid and recorded it, then died before its stage completed): the id is given
--   back holding nothing, and its commit returns the first cost row, counting nothing;
-- * released (by its block, by maintain, or by the engine's takeover): held again if the budget allows.
-- The same attempt (or a caller without one) finds the id as before: active is kept, anything else refused, so a
-- reserve still on its way after its block abandoned the id holds nothing.

drop function public.reserve_job_budget(uuid, uuid, text, text, numeric, numeric, numeric, interval, uuid);

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
    v_holder uuid;
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
    select r.status, r.attempt_id into v_status, v_holder
      from public.job_cost_reservations r where r.id = p_reservation_id;
    select coalesce(sum(r.estimated_cost), 0)
      into v_reserved
      from public.job_cost_reservations r
     where r.job_id = p_job_id and r.status = 'active' and r.expires_at > clock_timestamp()
       and r.id <> p_reservation_id;
    if v_status is not null and (p_attempt_id is null or v_holder is not distinct from p_attempt_id) then
        v_id := case when v_status = 'active' then p_reservation_id end;
    elsif v_status = 'active' then
        update public.job_cost_reservations r
           set attempt_id = p_attempt_id, expires_at = greatest(r.expires_at, clock_timestamp() + p_ttl)
         where r.id = p_reservation_id;
        v_id := p_reservation_id;
    elsif v_status = 'committed' then
        v_id := p_reservation_id;
    elsif v_spent + v_reserved + p_estimate > v_budget then
        v_id := null;
    elsif v_status is not null then
        update public.job_cost_reservations r
           set status = 'active', lapsed_at = null, estimated_cost = p_estimate, attempt_id = p_attempt_id,
               expires_at = clock_timestamp() + p_ttl
         where r.id = p_reservation_id;
        v_id := p_reservation_id;
    else
        insert into public.job_cost_reservations
               (id, job_id, stage_name, api_name, estimated_cost, expires_at, attempt_id)
        values (p_reservation_id, p_job_id, p_stage_name, p_api_name, p_estimate, clock_timestamp() + p_ttl,
                p_attempt_id);
        v_id := p_reservation_id;
    end if;
    return query select v_id, v_spent, v_reserved, v_budget;
end
$$;

revoke all on function public.reserve_job_budget(uuid, uuid, text, text, numeric, numeric, numeric, interval, uuid)
    from public, anon, authenticated;
grant execute on function public.reserve_job_budget(uuid, uuid, text, text, numeric, numeric, numeric, interval, uuid)
    to service_role;
