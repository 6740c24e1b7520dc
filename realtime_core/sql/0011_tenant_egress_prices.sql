-- realtime-core: control database only
-- An enterprise tenant's own egress figures (plans.py CUSTOM_FIELDS; null = Team's):
--   included_egress_bytes  bytes included per billing cycle (10^9 bytes = 1 GB)
--   egress_usd_per_gb      the prorated price of each GB past them

alter table _realtime.tenants
    add column if not exists included_egress_bytes bigint,
    add column if not exists egress_usd_per_gb numeric;
