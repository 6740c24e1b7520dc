-- Postgres Changes: the subscription table and its types (docs/protocol.md §6.1), and the
-- publication users add their tables to. Idempotent against a database that
-- already has upstream's objects.

do $$
begin
    create type realtime.equality_op as enum (
        'eq', 'neq', 'lt', 'lte', 'gt', 'gte', 'in', 'like', 'ilike', 'is', 'match', 'imatch', 'isdistinct'
    );
exception when duplicate_object then null;
end $$;

do $$
begin
    create type realtime.user_defined_filter as (
        column_name text,
        op realtime.equality_op,
        value text,
        negate boolean
    );
exception when duplicate_object then null;
end $$;

do $$
begin
    create type realtime.action as enum ('INSERT', 'UPDATE', 'DELETE', 'TRUNCATE', 'ERROR');
exception when duplicate_object then null;
end $$;

create or replace function realtime.to_regrole(role_name text)
    returns regrole
    immutable
    language sql
as $$ select role_name::regrole $$;

create table if not exists realtime.subscription (
    id bigint generated always as identity primary key,
    subscription_id uuid not null,
    entity regclass not null,
    filters realtime.user_defined_filter[] not null default '{}',
    claims jsonb not null,
    claims_role regrole not null generated always as (realtime.to_regrole(claims ->> 'role')) stored,
    created_at timestamp not null default timezone('utc', now()),
    action_filter text default '*' check (action_filter in ('*', 'INSERT', 'UPDATE', 'DELETE')),
    selected_columns text[]
);

create unique index if not exists subscription_subscription_id_entity_filters_action_filter_key
    on realtime.subscription (subscription_id, entity, filters, action_filter, coalesce(selected_columns, '{}'));

create index if not exists ix_realtime_subscription_entity on realtime.subscription (entity);

do $$
begin
    create publication supabase_realtime;
exception when duplicate_object then null;
end $$;
