-- realtime-core: control database only
-- Usage metering (usage.py): messages by tenant, UTC day and hour, and kind (broadcast, presence,
-- postgres_changes, db_broadcast, rest); the peak of concurrent WebSocket connections by tenant
-- and UTC hour (a day's or a billing cycle's peak is the greatest of its hours); and the quota
-- alerts sent, once per tenant, cycle, metric and threshold. Each process adds its counts to the
-- message rows and merges its peaks with greatest(), so restarts and several processes add up.

create table if not exists _realtime.usage (
    tenant text not null,
    day date not null,
    hour smallint not null check (hour between 0 and 23),
    kind text not null,
    messages bigint not null default 0,
    primary key (tenant, day, hour, kind)
);

create table if not exists _realtime.usage_peaks (
    tenant text not null,
    day date not null,
    hour smallint not null check (hour between 0 and 23),
    peak_connections bigint not null default 0,
    primary key (tenant, day, hour)
);

create table if not exists _realtime.usage_alerts (
    tenant text not null,
    cycle_start date not null,
    metric text not null,
    threshold integer not null,
    sent_at timestamptz not null default now(),
    primary key (tenant, cycle_start, metric, threshold)
);
