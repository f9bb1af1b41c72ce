-- Stage items claimed and completed in batches (shared.stages, issue 19): a worker sends the claims and the
-- completions that arrive while its previous statement is in flight as one statement (a group commit), so
-- under load the engine costs two statements per batch instead of two per item, and a fan-out's count row is
-- moved once per batch instead of once per item. Each function takes its row locks in one order (by id), so
-- two batches that overlap never wait on each other in a cycle.

-- A pgqueuer delivery for each stage item of `p_ids` (their stages `p_stages`, same order), due at `p_after`:
-- the queue row and its log row, as pgqueuer's own enqueue writes them. Every statement of the engine that
-- queues an item calls this, in the same statement as the item's change. Returns how many were queued.
create function public.stage_deliver(p_ids uuid[], p_stages text[], p_after timestamptz)
returns integer
language sql
volatile
set search_path = public, pg_temp
as $$
    with q as (
        insert into pgqueuer.pgqueuer (priority, entrypoint, payload, execute_after, status)
        select 0, t.stage, convert_to(t.id::text, 'UTF8'), p_after, 'queued'
          from unnest(p_ids, p_stages) as t(id, stage)
        returning id, entrypoint, priority
    ),
    l as (
        insert into pgqueuer.pgqueuer_log (job_id, status, entrypoint, priority)
        select q.id, 'queued', q.entrypoint, q.priority from q
    )
    select count(*)::integer from q
$$;

-- An item's max_attempts is the submit's when it gave one, else (null) the handler's own
-- (`@stages.handler(max_attempts=)`), which the worker knows.
alter table public.stage_runs alter column max_attempts drop not null, alter column max_attempts drop default;

-- Claim the items of `p_ids` that are queued, or running with a heartbeat older than `p_stale` (their worker
-- died): a new attempt each. Their jobs move to processing; the reservations a taken-over attempt still held
-- are released as lapsed (a paused worker's late commit is still recorded, as an overrun). Returns the rows
-- claimed; an item that is done, held by a live attempt or whose job ended is left out.
create function public.stage_claim(p_ids uuid[], p_worker text, p_stale interval, p_active text[])
returns setof public.stage_runs
language plpgsql
volatile
set search_path = public, pg_temp
as $$
declare
    v_ids uuid[];
    v_previous uuid[];
begin
    with locked as (
        select s.id, s.job_id, s.status, s.attempt_id, s.heartbeat_at
          from public.stage_runs s
         where s.id = any(p_ids)
         order by s.id
           for update
    )
    select coalesce(array_agg(l.id), '{}'), coalesce(array_agg(l.attempt_id) filter (where l.status = 'running'), '{}')
      into v_ids, v_previous
      from locked l
      join public.jobs j on j.id = l.job_id
     where j.status = any(p_active)
       and (l.status = 'queued' or (l.status = 'running' and l.heartbeat_at < now() - p_stale));
    if cardinality(v_ids) = 0 then
        return;
    end if;
    update public.jobs j set status = 'processing'
     where j.id in (select s.job_id from public.stage_runs s where s.id = any(v_ids)) and j.status = 'queued';
    if cardinality(v_previous) > 0 then
        update public.job_cost_reservations c set status = 'released', lapsed_at = now()
         where c.attempt_id = any(v_previous) and c.status = 'active'
           and c.job_id in (select s.job_id from public.stage_runs s where s.id = any(v_ids));
    end if;
    return query
    with claimed as (
        update public.stage_runs r
           set status = 'running', attempt = r.attempt + 1, attempt_id = gen_random_uuid(), worker = p_worker,
               started_at = coalesce(r.started_at, now()), heartbeat_at = now(), error = null
         where r.id = any(v_ids)
        returning r.*
    )
    select * from claimed;
end
$$;

-- Complete the items of `p_ids` that attempt `p_attempts` (same order) still holds, with `p_results`. A
-- fan-out's count moves by the items completed; when it reaches what was expected, its `then` stage is queued
-- once (one item, its trace context `p_traces` of the item that completed it, a pgqueuer delivery). Returns
-- the ids completed; an item another attempt took over is left out (its result is dropped).
create function public.stage_complete(p_ids uuid[], p_attempts uuid[], p_results jsonb[], p_traces jsonb[])
returns setof uuid
language plpgsql
volatile
set search_path = public, pg_temp
as $$
begin
    perform 1 from public.stage_runs s where s.id = any(p_ids) order by s.id for update;
    return query
    with input as (
        select * from unnest(p_ids, p_attempts, p_results, p_traces) as t(id, attempt_id, result, trace)
    ),
    done as (
        update public.stage_runs r
           set status = 'completed', result = i.result, finished_at = now(), heartbeat_at = now()
          from input i
         where r.id = i.id and r.attempt_id = i.attempt_id and r.status = 'running'
        returning r.id, r.job_id, r.stage, i.trace
    ),
    counted as (
        select d.job_id, d.stage, count(*)::integer as n, (array_agg(d.trace))[1] as trace
          from done d group by d.job_id, d.stage
    ),
    g as (
        update public.stage_groups g set done = g.done + c.n
          from counted c where g.job_id = c.job_id and g.stage = c.stage
        returning g.job_id, g.done, g.expected, g.then_stage, g.then_payload, g.then_max_attempts, c.trace
    ),
    nxt as (
        select g.job_id, g.then_stage as stage, coalesce(g.then_payload, '{}'::jsonb) as payload,
               g.then_max_attempts as max_attempts, g.trace
          from g where g.then_stage is not null and g.done = g.expected
    ),
    runs as (
        insert into public.stage_runs (job_id, stage, item, payload, max_attempts, trace_context)
        select n.job_id, n.stage, '', n.payload, n.max_attempts, n.trace from nxt n
        on conflict (job_id, stage, item) do nothing
        returning id, job_id, stage, max_attempts
    ),
    ng as (
        insert into public.stage_groups as g (job_id, stage, expected, then_max_attempts)
        select r.job_id, r.stage, 1, r.max_attempts from runs r
        on conflict (job_id, stage) do update set expected = g.expected + 1
    ),
    delivered as (
        select public.stage_deliver(array(select id from runs), array(select stage from runs), now()) as n
    )
    select d.id from done d, delivered;
end
$$;

revoke all on function public.stage_deliver(uuid[], text[], timestamptz) from public, anon, authenticated;
grant execute on function public.stage_deliver(uuid[], text[], timestamptz) to service_role;
revoke all on function public.stage_claim(uuid[], text, interval, text[]) from public, anon, authenticated;
revoke all on function public.stage_complete(uuid[], uuid[], jsonb[], jsonb[]) from public, anon, authenticated;
grant execute on function public.stage_claim(uuid[], text, interval, text[]) to service_role;
grant execute on function public.stage_complete(uuid[], uuid[], jsonb[], jsonb[]) to service_role;

-- A paid call whose handle went out (the provider bills it) but that its attempt left unsettled, expecting the
-- item to run again and settle it, is kept as a checkpoint `owed:<name>` (the estimate's cost, api and usage).
-- When the item ends without running again (its job failed and it was cancelled, or it failed), the owed calls
-- no attempt settled (no `paid:<name>` checkpoint) are recorded at their estimate, once (the key names the run
-- and the call), and marked `paid:<name>`. Returns how many were recorded.
create function public.stage_record_owed(p_run_ids uuid[])
returns integer
language plpgsql
volatile
set search_path = public, pg_temp
as $$
declare
    v_recorded integer := 0;
    v_owed record;
    v_cost public.job_costs%rowtype;
begin
    for v_owed in
        select r.id as run_id, r.job_id, substr(c.name, 6) as call, c.value
          from public.stage_checkpoints c
          join public.stage_runs r on r.id = c.run_id
         where c.run_id = any(p_run_ids) and c.name like 'owed:%'
           and not exists (
               select from public.stage_checkpoints p where p.run_id = c.run_id and p.name = 'paid:' || substr(c.name, 6)
           )
         order by r.job_id, c.run_id, c.name
    loop
        -- The job row's lock first (as track_cost takes it), then the cost row and the running total.
        perform 1 from public.jobs j where j.id = v_owed.job_id for no key update;
        insert into public.job_costs (job_id, stage_name, api_name, cost, idempotency_key, usage)
        values (v_owed.job_id, v_owed.value ->> 'stage', v_owed.value ->> 'api_name', (v_owed.value ->> 'cost')::numeric,
                'owed:' || v_owed.run_id::text || ':' || v_owed.call, v_owed.value -> 'usage')
        on conflict (job_id, idempotency_key) do nothing
        returning * into v_cost;
        if found then
            update public.jobs set total_cost = total_cost + v_cost.cost where id = v_owed.job_id;
            v_recorded := v_recorded + 1;
        end if;
        insert into public.stage_checkpoints (run_id, name, value, attempt)
        select v_owed.run_id, 'paid:' || v_owed.call, to_jsonb(c), 0 from public.job_costs c
         where c.job_id = v_owed.job_id and c.idempotency_key = 'owed:' || v_owed.run_id::text || ':' || v_owed.call
        on conflict (run_id, name) do nothing;
    end loop;
    return v_recorded;
end
$$;

revoke all on function public.stage_record_owed(uuid[]) from public, anon, authenticated;
grant execute on function public.stage_record_owed(uuid[]) to service_role;
