-- Each tenant's extensions, as upstream's tenant API takes them: a list of
-- {"type": ..., "settings": {...}} objects (upstream lib/realtime/api/extensions.ex).
-- The `postgres_cdc_rls` entry names the tenant's database (db_host, db_port as
-- a string, db_name, db_user, db_password, region, ssl_enforced, slot_name, ...).
-- Upstream keeps them in a table of their own and encrypts the db_* settings;
-- here they are a column of the tenant, stored as given (tenants.py explains).

alter table _realtime.tenants add column if not exists extensions jsonb not null default '[]'::jsonb;
