-- realtime-core: control database only
-- Egress metering (usage.py): bytes written to clients by tenant, UTC day and hour, and kind
-- (broadcast, presence, postgres_changes, db_broadcast, rest, protocol). Flushed with the
-- message counts (0009_usage.sql) in the same transaction; each process adds its bytes.

create table if not exists _realtime.usage_egress (
    tenant text not null,
    day date not null,
    hour smallint not null check (hour between 0 and 23),
    kind text not null,
    bytes bigint not null default 0,
    primary key (tenant, day, hour, kind)
);
