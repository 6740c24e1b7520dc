-- Broadcast from the database and private channels: realtime.messages, the
-- functions that write it, and the publication the broadcast stream reads
-- (docs/protocol.md §4.4, §4.5, §7). Ported from upstream's tenant schema
-- (priv/repo/tenant_schema/realtime/: tables/messages.sql, functions/send.sql,
-- send_binary.sql, broadcast_changes.sql, topic.sql).
--
-- Idempotent against a database that already has upstream's objects (a
-- Supabase database): every step that needs ownership of an existing object
-- warns and moves on when the migrating role lacks it, so the existing
-- upstream object stays in place.
--
-- Daily partitions are not created here: realtime_core.messages.ensure_partitions()
-- creates them at start and from the janitor (docs/protocol.md §4.5).

-- The owner of realtime.messages and of the functions (upstream:
-- migrations/20260420000000_squash_migrations.ex create_role).
-- Checked first: CREATE ROLE without CREATEROLE fails even when the role exists.
do $$
begin
    if not exists (select from pg_roles where rolname = 'supabase_realtime_admin') then
        create role supabase_realtime_admin nologin noinherit;
    end if;
exception when duplicate_object or unique_violation then null;  -- a concurrent create
end $$;

-- Membership lets the migrating role hand objects to supabase_realtime_admin
-- and keep managing them (partitions, policies) afterwards.
do $$
begin
    execute format('grant supabase_realtime_admin to %I', current_user);
exception when insufficient_privilege or invalid_grant_operation then
    raise warning 'realtime: could not grant supabase_realtime_admin to %: %', current_user, sqlerrm;
end $$;

-- ALTER ... OWNER TO needs the new owner to have CREATE on the schema.
do $$
begin
    grant usage, create on schema realtime to supabase_realtime_admin;
exception when insufficient_privilege or invalid_grant_operation then
    raise warning 'realtime: could not grant usage, create on schema realtime to supabase_realtime_admin: %', sqlerrm;
end $$;

grant usage on schema realtime to anon, authenticated, service_role;

-- The table (docs/protocol.md §4.4). inserted_at and updated_at are `timestamp without
-- time zone` holding UTC: the defaults are timezone('utc', now()), as in
-- upstream's current tables/messages.sql, so partition bounds (UTC dates,
-- messages.py) and replay (`at time zone 'utc'`) agree whatever the session
-- time zone of the writer.
create table if not exists realtime.messages (
    topic text not null,
    extension text not null,
    payload jsonb,
    event text,
    private boolean default false,
    updated_at timestamp without time zone not null default timezone('utc', now()),
    inserted_at timestamp without time zone not null default timezone('utc', now()),
    id uuid not null default gen_random_uuid(),
    binary_payload bytea,
    constraint messages_pkey primary key (id, inserted_at),
    constraint messages_payload_exclusive check (payload is null or binary_payload is null)
) partition by range (inserted_at);

-- An upstream table from before send_binary lacks binary_payload and the
-- check; older ones default the timestamps to now() in the session time zone.
do $$
begin
    if not exists (
        select 1 from pg_attribute
        where attrelid = 'realtime.messages'::regclass and attname = 'binary_payload' and not attisdropped
    ) then
        alter table realtime.messages add column binary_payload bytea;
    end if;
exception when insufficient_privilege then
    raise warning 'realtime: could not add realtime.messages.binary_payload: %', sqlerrm;
end $$;

do $$
begin
    if not exists (
        select 1 from pg_constraint
        where conrelid = 'realtime.messages'::regclass and conname = 'messages_payload_exclusive'
    ) then
        alter table realtime.messages
            add constraint messages_payload_exclusive check (payload is null or binary_payload is null);
    end if;
exception when insufficient_privilege then
    raise warning 'realtime: could not add check messages_payload_exclusive to realtime.messages: %', sqlerrm;
end $$;

do $$
begin
    if (
        select pg_get_expr(d.adbin, d.adrelid)
        from pg_attrdef d join pg_attribute a on a.attrelid = d.adrelid and a.attnum = d.adnum
        where d.adrelid = 'realtime.messages'::regclass and a.attname = 'inserted_at'
    ) is distinct from 'timezone(''utc''::text, now())' then
        alter table realtime.messages
            alter column inserted_at set default timezone('utc', now()),
            alter column updated_at set default timezone('utc', now());
    end if;
exception when insufficient_privilege then
    raise warning 'realtime: could not set UTC defaults on realtime.messages: %', sqlerrm;
end $$;

-- Replay reads this (docs/protocol.md §4.6; upstream migrations/20250905041441_create_messages_replay_index.ex).
-- Not `on only`: partitions that already exist get theirs too.
do $$
begin
    if to_regclass('realtime.messages_inserted_at_topic_index') is null then
        create index messages_inserted_at_topic_index on realtime.messages (inserted_at desc, topic)
            where extension = 'broadcast' and private is true;
    end if;
exception when insufficient_privilege then
    raise warning 'realtime: could not create realtime.messages_inserted_at_topic_index: %', sqlerrm;
end $$;

do $$
begin
    if not (select relrowsecurity from pg_class where oid = 'realtime.messages'::regclass) then
        alter table realtime.messages enable row level security;
    end if;
exception when insufficient_privilege then
    raise warning 'realtime: could not enable row level security on realtime.messages: %', sqlerrm;
end $$;

do $$
begin
    grant insert, select, update on realtime.messages to anon, authenticated, service_role;
exception when insufficient_privilege or invalid_grant_operation then
    raise warning 'realtime: could not grant on realtime.messages: %', sqlerrm;
end $$;

do $$
begin
    if (select relowner from pg_class where oid = 'realtime.messages'::regclass)
            is distinct from (select oid from pg_roles where rolname = 'supabase_realtime_admin') then
        alter table realtime.messages owner to supabase_realtime_admin;
    end if;
exception when insufficient_privilege then
    raise warning 'realtime: could not make supabase_realtime_admin the owner of realtime.messages: %', sqlerrm;
end $$;

-- The functions. None is SECURITY DEFINER, as upstream: realtime.send runs
-- with the caller's rights, so the caller's RLS policies on realtime.messages
-- apply to its insert. Triggers that must send regardless of the acting role
-- use a SECURITY DEFINER trigger function owned by a role that bypasses RLS
-- or owns the table (the documented trigger examples do). A refused insert
-- only warns (WarnSendingBroadcastMessage), so the caller's change commits.
-- EXECUTE stays granted to PUBLIC (PostgreSQL's default), as upstream; the
-- grants below name the API roles explicitly.

-- Each CREATE OR REPLACE sits in a block: replacing needs ownership of an
-- existing upstream function, and without it upstream's version stays.

-- upstream functions/topic.sql
do $do$
begin
    create or replace function realtime.topic()
        returns text
        language sql
        stable
    as $fn$
        select nullif(current_setting('realtime.topic', true), '')::text;
    $fn$;
exception when insufficient_privilege then
    raise warning 'realtime: could not replace realtime.topic(): %', sqlerrm;
end $do$;

-- upstream functions/send.sql. The inner block is a subtransaction: any error
-- rolls back the SET LOCAL and the insert, and the caller goes on.
do $do$
begin
    create or replace function realtime.send(payload jsonb, event text, topic text, private boolean default true)
        returns void
        language plpgsql
    as $fn$
    declare
        generated_id uuid;
        final_payload jsonb;
    begin
        begin
            generated_id := gen_random_uuid();
            -- The payload carries the message id unless it brings its own.
            if payload ? 'id' then
                final_payload := payload;
            else
                final_payload := jsonb_set(payload, '{id}', to_jsonb(generated_id));
            end if;
            -- Policies evaluated by the insert see the topic through realtime.topic().
            execute format('SET LOCAL realtime.topic TO %L', topic);
            insert into realtime.messages (id, payload, event, topic, private, extension)
            values (generated_id, final_payload, event, topic, private, 'broadcast');
        exception
            when others then
                raise warning 'WarnSendingBroadcastMessage: %', sqlerrm;
        end;
    end;
    $fn$;
exception when insufficient_privilege then
    raise warning 'realtime: could not replace realtime.send(jsonb, text, text, boolean): %', sqlerrm;
end $do$;

-- upstream functions/send_binary.sql: the payload goes to binary_payload, untouched.
do $do$
begin
    create or replace function realtime.send_binary(payload bytea, event text, topic text, private boolean default true)
        returns void
        language plpgsql
    as $fn$
    declare
        generated_id uuid;
    begin
        begin
            generated_id := gen_random_uuid();
            execute format('SET LOCAL realtime.topic TO %L', topic);
            insert into realtime.messages (id, binary_payload, event, topic, private, extension)
            values (generated_id, payload, event, topic, private, 'broadcast');
        exception
            when others then
                raise warning 'WarnSendingBroadcastMessage: %', sqlerrm;
        end;
    end;
    $fn$;
exception when insufficient_privilege then
    raise warning 'realtime: could not replace realtime.send_binary(bytea, text, text, boolean): %', sqlerrm;
end $do$;

-- upstream functions/broadcast_changes.sql. `new` and `old` are the record
-- parameters; a NULL record becomes JSON null, so old_record is null on
-- INSERT and record is null on DELETE. Unlike send, its own errors (a
-- STATEMENT-level trigger, an unknown operation) are raised to the caller,
-- prefixed "Failed to process the row: ".
do $do$
begin
    create or replace function realtime.broadcast_changes(
        topic_name text,
        event_name text,
        operation text,
        table_name text,
        table_schema text,
        new record,
        old record,
        level text default 'ROW'
    )
        returns void
        language plpgsql
    as $fn$
    declare
        row_data jsonb := '{}'::jsonb;
    begin
        if level = 'STATEMENT' then
            raise exception 'function can only be triggered for each row, not for each statement';
        end if;
        if operation = 'INSERT' or operation = 'UPDATE' or operation = 'DELETE' then
            row_data := jsonb_build_object(
                'old_record', old, 'record', new, 'operation', operation, 'table', table_name, 'schema', table_schema
            );
            perform realtime.send(row_data, event_name, topic_name);
        else
            raise exception 'Unexpected operation type: %', operation;
        end if;
    exception
        when others then
            raise exception 'Failed to process the row: %', sqlerrm;
    end;
    $fn$;
exception when insufficient_privilege then
    raise warning 'realtime: could not replace realtime.broadcast_changes(...): %', sqlerrm;
end $do$;

do $$
begin
    grant execute on function realtime.topic() to anon, authenticated, service_role;
    grant execute on function realtime.send(jsonb, text, text, boolean) to anon, authenticated, service_role;
    grant execute on function realtime.send_binary(bytea, text, text, boolean) to anon, authenticated, service_role;
    grant execute on function realtime.broadcast_changes(text, text, text, text, text, record, record, text)
        to anon, authenticated, service_role;
exception when insufficient_privilege or invalid_grant_operation then
    raise warning 'realtime: could not grant execute on the realtime functions: %', sqlerrm;
end $$;

-- Upstream owners (migrations/20260630120000_restrict_realtime_schema.ex).
do $$
declare
    fn regprocedure;
begin
    foreach fn in array array[
        'realtime.topic()',
        'realtime.send(jsonb, text, text, boolean)',
        'realtime.send_binary(bytea, text, text, boolean)',
        'realtime.broadcast_changes(text, text, text, text, text, record, record, text)'
    ]::regprocedure[] loop
        begin
            if (select proowner from pg_proc where oid = fn)
                    is distinct from (select oid from pg_roles where rolname = 'supabase_realtime_admin') then
                execute format('alter function %s owner to supabase_realtime_admin', fn);
            end if;
        exception when insufficient_privilege then
            raise warning 'realtime: could not make supabase_realtime_admin the owner of %: %', fn, sqlerrm;
        end;
    end loop;
end $$;

-- The publication the broadcast stream reads (docs/protocol.md §4.4): exactly
-- realtime.messages. publish_via_partition_root makes inserts into the daily
-- partitions arrive in pgoutput as realtime.messages. One listing other
-- tables (or FOR ALL TABLES, or schemas) is recreated; one created by
-- upstream without publish_via_partition_root gets it set.
do $$
declare
    pub oid;
    via_root boolean;
    exact boolean;
begin
    select p.oid, p.pubviaroot into pub, via_root
    from pg_publication p where p.pubname = 'supabase_realtime_messages_publication';
    if pub is null then
        create publication supabase_realtime_messages_publication
            for table realtime.messages with (publish_via_partition_root = true);
        return;
    end if;
    exact := coalesce(
        not (select puballtables from pg_publication where oid = pub)
            and (select array_agg(prrelid) from pg_publication_rel where prpubid = pub)
                = array['realtime.messages'::regclass::oid],
        false
    );
    if exact and to_regclass('pg_catalog.pg_publication_namespace') is not null then  -- PostgreSQL 15+
        execute 'select not exists (select 1 from pg_publication_namespace where pnpubid = $1)' into exact using pub;
    end if;
    if not exact then
        drop publication supabase_realtime_messages_publication;
        create publication supabase_realtime_messages_publication
            for table realtime.messages with (publish_via_partition_root = true);
    elsif not via_root then
        alter publication supabase_realtime_messages_publication set (publish_via_partition_root = true);
    end if;
exception when insufficient_privilege then
    raise warning 'realtime: could not set up publication supabase_realtime_messages_publication: %', sqlerrm;
end $$;
