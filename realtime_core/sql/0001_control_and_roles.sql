-- The roles RLS policies are written for (the tenants table moved to 0006).
-- Idempotent: a Supabase database already has the roles and the schema.

create schema if not exists _realtime;

-- The tenants table itself is created by 0006_tenant_extensions.sql, on the control
-- database only.

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
