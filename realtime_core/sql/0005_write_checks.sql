-- Write checks of many topics in one statement (the REST batch endpoint).
-- The client's role, claims and headers are set transaction-locally once; each
-- topic is then probed in its own subtransaction (the exception block) with
-- realtime.topic() set to it. A successful probe is undone by raising RTW01,
-- so every topic is checked as if alone (no probe row of another topic is ever
-- visible) and no subtransaction outlives its topic. 42501 (a WITH CHECK that
-- said no) is a denial; any other error (a policy that raises, a missing
-- partition) denies only its own topic and is reported in `error`.
-- SECURITY INVOKER: the probes run as the client's role, so RLS applies.

create or replace function realtime.writable_topics(
    topics text[], probe_extension text, role_name text, claims text, sub text, headers text
)
    returns table (topic text, allowed boolean, error text)
    language plpgsql
    volatile
as $$
declare
    t text;
begin
    perform set_config('role', role_name, true),
            set_config('request.jwt.claims', claims, true),
            set_config('request.jwt.claim.sub', sub, true),
            set_config('request.jwt.claim.role', role_name, true),
            set_config('request.headers', headers, true);
    foreach t in array topics loop
        begin
            perform set_config('realtime.topic', t, true);
            insert into realtime.messages (topic, extension, inserted_at, updated_at)
                values (t, probe_extension, timezone('utc', now()), timezone('utc', now()));
            raise sqlstate 'RTW01';
        exception
            when sqlstate 'RTW01' then
                return query select t, true, null::text;
            when insufficient_privilege then
                return query select t, false, null::text;
            when others then
                return query select t, false, sqlstate || ': ' || sqlerrm;
        end;
    end loop;
end
$$;

revoke all on function realtime.writable_topics(text[], text, text, text, text, text) from public;
