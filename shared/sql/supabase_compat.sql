-- What a Supabase database has and a vanilla PostgreSQL lacks, for tests and local development.
-- shared/migrations.py applies this only where the `auth` schema is missing: never on a Supabase project's own
-- database. Each object is created only when it is missing, as Supabase defines it (supabase/postgres
-- migrations/db, supabase/auth migrations); tests/integration/test_supabase_compat.py compares the two object
-- by object. What the connected role may not do (a non-superuser `postgres` on a Supabase server, in a new
-- database of its own) is skipped with a notice 'skipped: ...', which `db migrate` reports.

-- Roles are cluster-wide: another database on this server may have created them already. As Supabase ends up
-- with them (20230529180330_alter_api_roles_for_inherit): INHERIT, and postgres a member of all three.
do $$
declare
    v_role text;
begin
    foreach v_role in array array['anon', 'authenticated', 'service_role'] loop
        begin
            if not exists (select from pg_roles where rolname = v_role) then
                execute format('create role %I nologin inherit%s', v_role,
                               case when v_role = 'service_role' then ' bypassrls' else '' end);
            end if;
        exception when insufficient_privilege or duplicate_object then
            raise notice 'skipped: create role % (%)', v_role, sqlerrm;
        end;
        begin
            if exists (select from pg_roles where rolname = v_role and not rolinherit) then
                execute format('alter role %I inherit', v_role);
            end if;
        exception when insufficient_privilege then
            raise notice 'skipped: alter role % inherit (%)', v_role, sqlerrm;
        end;
        begin
            if v_role = 'service_role' and exists (select from pg_roles where rolname = v_role and not rolbypassrls) then
                alter role service_role bypassrls;
            end if;
        exception when insufficient_privilege then
            raise notice 'skipped: alter role service_role bypassrls (%)', sqlerrm;
        end;
        begin
            -- pg_auth_members, not pg_has_role: a superuser "has" every role without being a member.
            if exists (select from pg_roles where rolname = 'postgres')
               and not exists (
                   select from pg_auth_members m
                   where m.roleid = v_role::regrole and m.member = 'postgres'::regrole
               ) then
                execute format('grant %I to postgres', v_role);
            end if;
        exception when insufficient_privilege or invalid_grant_operation then
            raise notice 'skipped: grant % to postgres (%)', v_role, sqlerrm;
        end;
    end loop;
end
$$;

grant usage on schema public to anon, authenticated, service_role;

-- As Supabase's initial schema sets them for postgres (the role `db migrate` and the CLI run as): whatever it
-- creates in public is granted to the API roles. Each migration narrows its own objects' grants.
alter default privileges in schema public grant all on tables to postgres, anon, authenticated, service_role;
alter default privileges in schema public grant all on functions to postgres, anon, authenticated, service_role;
alter default privileges in schema public grant all on sequences to postgres, anon, authenticated, service_role;

create schema if not exists auth;
grant usage on schema auth to anon, authenticated, service_role;

-- Supabase's auth.users has 35 columns; these are the ones the pipeline and its tests touch, with GoTrue's types.
create table if not exists auth.users (
    id uuid not null,
    email varchar(255),
    created_at timestamptz,
    constraint users_pkey primary key (id)
);
-- Added where an older compatibility script made the table without them.
alter table auth.users add column if not exists is_sso_user boolean not null default false;
alter table auth.users alter column created_at drop not null;
alter table auth.users alter column created_at drop default;
-- GoTrue's 20221215195500_modify_users_email_unique_index: one account per email, except SSO accounts.
create unique index if not exists users_email_partial_key on auth.users (email) where (is_sso_user = false);

-- As Supabase defines them: the request's JWT claims, from either of PostgREST's settings.
create or replace function auth.uid()
returns uuid
language sql
stable
as $$
  select
  coalesce(
    nullif(current_setting('request.jwt.claim.sub', true), ''),
    (nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'sub')
  )::uuid
$$;

create or replace function auth.role()
returns text
language sql
stable
as $$
  select
  coalesce(
    nullif(current_setting('request.jwt.claim.role', true), ''),
    (nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'role')
  )::text
$$;

create or replace function auth.email()
returns text
language sql
stable
as $$
  select
  coalesce(
    nullif(current_setting('request.jwt.claim.email', true), ''),
    (nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'email')
  )::text
$$;

create or replace function auth.jwt()
returns jsonb
language sql
stable
as $$
  select
    coalesce(
        nullif(current_setting('request.jwt.claim', true), ''),
        nullif(current_setting('request.jwt.claims', true), '')
    )::jsonb
$$;
-- Executable by PUBLIC, as on Supabase (their default privileges).
