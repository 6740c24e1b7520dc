-- realtime-core: control database only
-- Plans and billing fields of a tenant (plans.py, the tenant API):
--   plan               free | pro | pro_capped | team | enterprise
--   organization       a free label: bills can be summed per organisation
--   billing_cycle_day  the day of the month (UTC) a billing cycle starts, 1..28
--   enforce_quota      on a hard-quota plan, refuse new connections once the cycle's messages are used
--   alert_webhook_url  where quota alerts (80 %, 100 %) are POSTed
--   base_fee_usd, included_messages, included_peak_connections, message_package_usd,
--   connection_package_usd: an enterprise tenant's own prices and quotas (null = Team's)
-- Limit columns become nullable: null means "the plan's". Existing rows keep today's effective
-- limits as explicit values, and plan `pro` (overage billed, nothing enforced), so nothing
-- changes for them.

alter table _realtime.tenants
    add column if not exists plan text,
    add column if not exists organization text,
    add column if not exists billing_cycle_day integer not null default 1,
    add column if not exists enforce_quota boolean not null default false,
    add column if not exists alert_webhook_url text,
    add column if not exists base_fee_usd numeric,
    add column if not exists included_messages bigint,
    add column if not exists included_peak_connections bigint,
    add column if not exists message_package_usd numeric,
    add column if not exists connection_package_usd numeric;

update _realtime.tenants set plan = 'pro' where plan is null;
update _realtime.tenants set
    max_client_presence_events_per_window = coalesce(max_client_presence_events_per_window, 5),
    client_presence_window_ms = coalesce(client_presence_window_ms, 30000);

alter table _realtime.tenants
    alter column plan set default 'free',
    alter column plan set not null,
    alter column max_concurrent_users drop not null,
    alter column max_events_per_second drop not null,
    alter column max_joins_per_second drop not null,
    alter column max_channels_per_client drop not null,
    alter column max_presence_events_per_second drop not null,
    alter column max_payload_size_in_kb drop not null,
    add constraint plan_known check (plan in ('free', 'pro', 'pro_capped', 'team', 'enterprise')),
    add constraint billing_cycle_day_range check (billing_cycle_day between 1 and 28);
