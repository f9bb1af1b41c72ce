-- Reservations that survive lost answers, cancellations and long calls (issue 12):
-- * the client chooses a reservation's id before the first send, so a re-sent reserve finds the reservation it
--   already made instead of holding the money twice (and refusing itself);
-- * a reservation records its actual cost, so an overrun (actual above the estimate) can be reported;
-- * reservations get the same checks as job_costs, so a reservation that could never be committed is refused
--   before the money is spent, not at its commit.

-- A reservation with an unknown stage or a bad api_name could never be committed (job_costs refuses it), so no
-- money was ever recorded through one: removing them loses nothing and lets the checks below be validated.
delete from public.job_cost_reservations
 where stage_name not in (
        'audio_analysis', 'scene_planning', 'reference_generation',
        'prompt_generation', 'clip_generation', 'composition'
    )
    or char_length(api_name) not between 1 and 100;

alter table public.job_cost_reservations
    add constraint job_cost_reservations_stage_name_valid check (stage_name in (
        'audio_analysis', 'scene_planning', 'reference_generation',
        'prompt_generation', 'clip_generation', 'composition'
    )),
    add constraint job_cost_reservations_api_name_length check (char_length(api_name) between 1 and 100),
    add column actual_cost numeric(12, 4)
        constraint job_cost_reservations_actual_positive check (actual_cost >= 0),
    add constraint job_cost_reservations_actual_only_when_committed check (status = 'committed' or actual_cost is null);

-- Reservations committed before this migration get their actual cost from the cost row their commit made.
update public.job_cost_reservations r
   set actual_cost = c.cost
  from public.job_costs c
 where r.status = 'committed' and c.job_id = r.job_id and c.idempotency_key = 'reservation:' || r.id::text;

drop function public.reserve_job_budget(uuid, text, text, numeric, numeric, numeric, interval);

-- Reserve `p_estimate` on a job under the id the client chose, if spent + active reservations + estimate stays
-- within the budget. A reservation with this id already there (the same call sent again after its answer was
-- lost) is returned as it is and counts nothing more. Returns one row (reservation_id null when refused, or when
-- the id was released before the reservation was made: a cancelled caller) or no row for an unknown job.
create function public.reserve_job_budget(
    p_reservation_id uuid,
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
    v_status text;
    v_id uuid;
begin
    -- The row lock serialises reservations on one job, and a release of a reservation whose reserve was
    -- cancelled takes it too, so the existence check below and the insert cannot interleave with it.
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
        insert into public.job_cost_reservations (id, job_id, stage_name, api_name, estimated_cost, expires_at)
        values (p_reservation_id, p_job_id, p_stage_name, p_api_name, p_estimate, clock_timestamp() + p_ttl);
        v_id := p_reservation_id;
    end if;
    return query select v_id, v_spent, v_reserved, v_budget;
end
$$;

-- As before (a second commit returns the first cost row, counting nothing), and the reservation keeps its
-- actual cost.
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
        update public.job_cost_reservations r set status = 'committed', actual_cost = p_actual
         where r.id = v_reservation.id;
    end if;
    return query
        select c.id, c.job_id, c.stage_name, c.api_name, c.cost, c.idempotency_key, c.created_at,
               v_reservation.status = 'active', j.total_cost, j.budget_limit
          from public.job_costs c
          join public.jobs j on j.id = c.job_id
         where c.job_id = v_reservation.job_id and c.idempotency_key = v_key;
end
$$;

-- Supabase's default privileges grant EXECUTE on new functions in public to anon and authenticated, and
-- `revoke ... from public` does not take that away: revoke it from them by name as well.
revoke all on function public.reserve_job_budget(uuid, uuid, text, text, numeric, numeric, numeric, interval)
    from public, anon, authenticated;
revoke all on function public.commit_job_reservation(uuid, numeric) from public, anon, authenticated;
grant execute on function public.reserve_job_budget(uuid, uuid, text, text, numeric, numeric, numeric, interval)
    to service_role;
grant execute on function public.commit_job_reservation(uuid, numeric) to service_role;
