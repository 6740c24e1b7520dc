-- Control tables (tenants) and the roles RLS policies are written for.
-- Idempotent: a Supabase database already has the roles and the schema.

create schema if not exists _realtime;

create table if not exists _realtime.tenants (
    id uuid primary key default gen_random_uuid(),
    external_id text not null unique,
    name text,
    jwt_secret text,
    jwt_jwks jsonb,
    max_concurrent_users integer not null,
    max_events_per_second integer not null,
    max_joins_per_second integer not null,
    max_channels_per_client integer not null,
    max_presence_events_per_second integer not null,
    max_payload_size_in_kb integer not null,
    max_client_presence_events_per_window integer,
    client_presence_window_ms integer,
    private_only boolean not null default false,
    suspend boolean not null default false,
    presence_enabled boolean not null default false,
    inserted_at timestamptz not null default now(),
    updated_at timestamptz not null default now(),
    constraint jwt_secret_or_jwks check (jwt_secret is not null or jwt_jwks is not null)
);

do $$
declare
    r record;
begin
    for r in select * from (values ('anon', ''), ('authenticated', ''), ('service_role', ' bypassrls')) v(name, extra)
    loop
        -- Checked first: CREATE ROLE needs CREATEROLE even when the role exists.
        if not exists (select from pg_roles where rolname = r.name) then
            begin
                execute format('create role %I nologin noinherit', r.name) || r.extra;
            exception when duplicate_object then null;
            end;
        end if;
    end loop;
end $$;

-- The server switches to these roles (`set local role`) to evaluate RLS as
-- the client; a non-superuser owner needs membership for that.
do $$
begin
    execute format('grant anon, authenticated, service_role to %I', current_user);
exception when insufficient_privilege or invalid_grant_operation then
    raise warning 'realtime: could not grant anon, authenticated, service_role to %: %',
        current_user, sqlerrm;
end $$;

create schema if not exists realtime;
grant usage on schema realtime to anon, authenticated, service_role;
