-- realtime-core: control database only
-- The tenants this server serves (tenants.py). A tenant's own database never gets this table:
-- the first line above makes db.migrate() skip this file there.
--
-- `extensions` holds each tenant's extensions, as upstream's tenant API takes them: a list of
-- {"type": ..., "settings": {...}} objects (upstream lib/realtime/api/extensions.ex). The
-- `postgres_cdc_rls` entry names the tenant's database (db_host, db_port as a string,
-- db_name, db_user, db_password, region, ssl_enforced, slot_name, ...). Upstream keeps them in
-- a table of their own and encrypts the db_* settings; here they are a column of the tenant,
-- stored as given (tenants.TenantStore explains).

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
    extensions jsonb not null default '[]'::jsonb,
    inserted_at timestamptz not null default now(),
    updated_at timestamptz not null default now(),
    constraint jwt_secret_or_jwks check (jwt_secret is not null or jwt_jwks is not null)
);

-- Installs whose table 0001 made before this file existed.
alter table _realtime.tenants add column if not exists extensions jsonb not null default '[]'::jsonb;
