-- Postgres Changes RLS in batches: every (role, claims) group of a batch in one call.
-- Each group runs in its own subtransaction with its role and claims set
-- transaction-locally (the session user must be a member of the roles, which
-- 0001 grants); a policy that raises costs only that group, reported as a row
-- with `error`. `query` is composed by the server from catalog identifiers
-- (never from client input) and takes $1 = the group's index, $2 = the keys.
-- SECURITY INVOKER: the query runs as each group's role, so RLS applies.

create or replace function realtime.visible_keys_by_group(query text, keys text[], groups jsonb)
    returns table (group_index int, key text, error text)
    language plpgsql
    volatile
as $$
declare
    g jsonb;
    i int := 0;
begin
    for g in select value from jsonb_array_elements(groups) loop
        begin
            perform set_config('role', g ->> 'role', true),
                    set_config('request.jwt.claims', g ->> 'claims', true),
                    set_config('request.jwt.claim.sub', coalesce(g ->> 'sub', ''), true),
                    set_config('request.jwt.claim.role', g ->> 'role', true);
            return query execute query using i, keys;
        exception when others then
            return query select i, null::text, sqlerrm;
        end;
        i := i + 1;
    end loop;
end
$$;

revoke all on function realtime.visible_keys_by_group(text, text[], jsonb) from public;
