-- What a Supabase database has and a vanilla PostgreSQL lacks, for tests and local development.
-- shared/migrations.py applies this only where the `auth` schema is missing: never on a real Supabase database.
-- Definitions follow Supabase's own (supabase/postgres: roles, auth.users, auth.uid()).

do $$
begin
    -- Roles are cluster-wide: another database on this server may have created them already.
    begin create role anon nologin noinherit; exception when duplicate_object then null; end;
    begin create role authenticated nologin noinherit; exception when duplicate_object then null; end;
    begin create role service_role nologin noinherit bypassrls; exception when duplicate_object then null; end;
end
$$;

grant usage on schema public to anon, authenticated, service_role;

create schema if not exists auth;
grant usage on schema auth to anon, authenticated, service_role;

-- Supabase's auth.users has many more columns; a row needs only its id everywhere the pipeline looks.
create table if not exists auth.users (
    id uuid primary key,
    email text,
    created_at timestamptz not null default now()
);

-- As Supabase defines it: the `sub` claim of the request's JWT, from either of PostgREST's settings.
create or replace function auth.uid()
returns uuid
language sql
stable
as $$
    select coalesce(
        nullif(current_setting('request.jwt.claim.sub', true), ''),
        (nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'sub')
    )::uuid
$$;

grant execute on function auth.uid() to anon, authenticated, service_role;
