-- realtime-core: control database only
-- Every write through the tenant API and the admin API (admin/audit.py): who (the admin
-- token's sub and iat), what (action and target), and the HTTP status it ended with.

create table if not exists _realtime.admin_audit (
    id bigint generated always as identity primary key,
    at timestamptz not null default now(),
    sub text,
    iat bigint,
    action text not null,
    target text not null,
    status integer not null,
    detail jsonb not null default '{}'::jsonb
);

create index if not exists admin_audit_at on _realtime.admin_audit (at);
