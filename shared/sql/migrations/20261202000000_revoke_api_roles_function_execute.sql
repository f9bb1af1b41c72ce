-- Supabase's default privileges grant EXECUTE on every function postgres creates in public to anon and
-- authenticated (supabase/postgres init-scripts/00000000000000-initial-schema.sql: `alter default privileges in
-- schema public grant all on functions to postgres, anon, authenticated, service_role`). The `revoke ... from
-- public` of 20261124000100_cost_tracking leaves those grants, so a signed-in user could call the budget
-- functions through PostgREST's /rpc. They run with the caller's rights today, so RLS still refuses; this takes
-- the grants away so that nothing depends on that. tests/integration/test_grants.py lists every privilege anon
-- and authenticated hold in public against an allow-list, on a database with Supabase's default privileges.
--
-- Every overload of each name, whatever its arguments: a later migration may have changed a signature.
do $$
declare
    v_function regprocedure;
begin
    for v_function in
        select p.oid::regprocedure
          from pg_proc p
         where p.pronamespace = 'public'::regnamespace
           and p.proname in ('set_updated_at', 'reserve_job_budget', 'commit_job_reservation')
    loop
        execute format('revoke all on function %s from public, anon, authenticated', v_function);
        execute format('grant execute on function %s to service_role', v_function);
    end loop;
end
$$;
