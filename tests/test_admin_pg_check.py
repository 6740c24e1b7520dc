"""The Postgres Changes visibility check (`POST /admin/v1/tenants/{id}/postgres-changes/check`,
admin/pg_check.py, postgres_changes/visibility.py) against real subscribers: for a delivered
change, a filtered one, an RLS-hidden one, a raising policy, a table without SELECT privilege
(Error 401) and an oversize record (Error 413) it answers what the subscriber got; it changes
nothing; bad input is a 422 naming the field."""

from __future__ import annotations

import secrets
from typing import Any

import httpx
import psycopg
import pytest
from conftest import CDC_ENV, admin_headers, make_token
from psycopg import sql
from test_postgres_changes import new_table, next_change, rls_table, run, subscribe, system_error
from wire import V2, RawClient, eventually, metric

pytestmark = pytest.mark.pg

TENANT = "realtime-dev"


def check(http_url: str, **body: Any) -> httpx.Response:
    return httpx.post(
        f"{http_url}/admin/v1/tenants/{TENANT}/postgres-changes/check", json=body, headers=admin_headers(), timeout=10
    )


def ok(http_url: str, **body: Any) -> dict[str, Any]:
    response = check(http_url, **body)
    assert response.status_code == 200, response.text
    return response.json()


async def got(client: RawClient, row_id: int, marker_id: int) -> bool:
    """Whether `client` got the change of `row_id` before the one of `marker_id` (inserted after it)."""
    ids = []
    while True:
        data = (await next_change(client))["data"]
        record_id = (data.get("record") or {}).get("id")
        if record_id == marker_id:
            return row_id in ids
        ids.append(record_id)


def count(db: psycopg.Connection[Any], table: str) -> int:
    [(n,)] = db.execute(sql.SQL("select count(*) from {}").format(sql.Identifier(table))).fetchall()
    return n


async def test_a_filtered_row_and_a_matching_one_agree_with_a_subscriber(cdc, db):
    table = new_table(db, "id int primary key, done bool, title text")
    spec = [{"event": "INSERT", "schema": "public", "table": table, "filter": "done=eq.false"}]
    async with await RawClient.open(cdc.socket_url(make_token(), V2)) as client:
        await subscribe(client, "f", spec)
        run(db, "insert into {t} values (1, true, 'x')", table)
        run(db, "insert into {t} values (2, false, 'y')", table)
        assert not await got(client, 1, 2)
        run(db, "insert into {t} values (3, false, 'z')", table)
        assert (await next_change(client))["data"]["record"]["id"] == 3
    common = {"table": table, "filter": "done=eq.false", "role": "anon"}
    filtered = ok(cdc.http_url, primary_key={"id": 1}, **common)
    assert filtered["delivered"] is False and filtered["reason"] == "filter"
    assert filtered["detail"] == "filter not met: done=eq.false"
    matching = ok(cdc.http_url, primary_key={"id": 3}, **common)
    assert (matching["delivered"], matching["reason"], matching["errors"]) == (True, None, [])
    assert matching["duration_ms"] > 0
    # Given values instead of a row: the filter is evaluated on them, nothing is kept.
    before = count(db, table)
    assert ok(cdc.http_url, row={"id": 10, "done": True}, **common)["reason"] == "filter"
    assert ok(cdc.http_url, row={"id": 10, "done": False}, **common)["delivered"] is True
    assert count(db, table) == before


async def test_rls_hidden_and_visible_rows_agree_with_a_subscriber(cdc, db):
    table = rls_table(db)
    alice = make_token("authenticated", sub="alice")
    async with await RawClient.open(cdc.socket_url(alice, V2)) as client:
        await subscribe(client, "r", [{"event": "*", "schema": "public", "table": table}], token=alice)
        run(db, "insert into {t} values (1, 'bob', 'b')", table)
        run(db, "insert into {t} values (2, 'alice', 'a')", table)
        assert not await got(client, 1, 2)
    hidden = ok(cdc.http_url, table=table, jwt=alice, primary_key={"id": 1})
    assert (hidden["delivered"], hidden["reason"]) == (False, "rls")
    [policy] = hidden["policies"]
    assert policy["name"] == "own" and policy["command"] == "SELECT" and "owner" in policy["using"]
    shown = ok(cdc.http_url, table=table, jwt=alice, primary_key={"id": 2})
    assert (shown["delivered"], shown["errors"]) == (True, [])
    # The same subject as role and claims; an UPDATE is checked as an INSERT is; a DELETE skips RLS.
    as_claims = {"role": "authenticated", "claims": {"sub": "alice"}}
    assert ok(cdc.http_url, table=table, primary_key={"id": 1}, event="UPDATE", **as_claims)["reason"] == "rls"
    assert ok(cdc.http_url, table=table, primary_key={"id": 1}, event="DELETE", **as_claims)["delivered"] is True
    # Given values are inserted in the rolled-back transaction and checked as a live INSERT's row.
    before = count(db, table)
    assert ok(cdc.http_url, table=table, row={"id": 50, "owner": "bob"}, **as_claims)["reason"] == "rls"
    assert ok(cdc.http_url, table=table, row={"id": 50, "owner": "alice"}, **as_claims)["delivered"] is True
    assert count(db, table) == before
    assert check(cdc.http_url, table=table, row={"id": 1, "owner": "alice"}, **as_claims).status_code == 422


async def test_a_raising_policy_is_reported_as_the_subscriber_loses_the_change(cdc, db):
    table = rls_table(
        db,
        "create policy boom on {t} for select to authenticated using ("
        " case when current_setting('request.jwt.claims', true)::jsonb ->> 'sub' = 'mallory' and body <> 'marker'"
        " then (id / (id - id)) = 1 else false end)",
    )
    mallory = make_token("authenticated", sub="mallory")
    async with await RawClient.open(cdc.socket_url(mallory, V2)) as client:
        await subscribe(client, "b", [{"event": "INSERT", "schema": "public", "table": table}], token=mallory)
        errors = metric(cdc.http_url, "realtime_postgres_changes_rls_errors_total")
        run(db, "insert into {t} values (1, 'alice', 'x')", table)  # `own` is false: `boom` decides, and raises
        # The marker goes in a batch of its own: a group's query raises for all the keys of a batch.
        await eventually(lambda: metric(cdc.http_url, "realtime_postgres_changes_rls_errors_total") > errors)
        run(db, "insert into {t} values (2, 'mallory', 'marker')", table)
        assert not await got(client, 1, 2)
    raised = ok(cdc.http_url, table=table, jwt=mallory, primary_key={"id": 1})
    assert (raised["delivered"], raised["reason"]) == (False, "rls_error")
    assert "division by zero" in raised["detail"]
    assert {p["name"] for p in raised["policies"]} == {"own", "boom"}
    assert ok(cdc.http_url, table=table, jwt=mallory, primary_key={"id": 2})["delivered"] is True


async def test_without_select_on_the_key_the_change_is_delivered_with_error_401(cdc, db):
    table = new_table(db, "id int primary key, v int")
    db.execute(sql.SQL("revoke select on {} from anon").format(sql.Identifier(table)))
    db.execute(sql.SQL("grant select (v) on {} to anon").format(sql.Identifier(table)))
    async with await RawClient.open(cdc.socket_url(make_token(), V2)) as client:
        await subscribe(client, "p", [{"event": "INSERT", "schema": "public", "table": table}])
        run(db, "insert into {t} values (1, 2)", table)
        live = (await next_change(client))["data"]["errors"]
    result = ok(cdc.http_url, table=table, jwt=make_token(), primary_key={"id": 1})
    assert live == result["errors"] == ["Error 401: Unauthorized"]
    assert result["delivered"] is True


async def test_an_oversize_record_is_delivered_with_error_413(server_factory):
    server = server_factory({**CDC_ENV, "REALTIME_MAX_RECORD_BYTES": "2000"})
    with psycopg.connect(server.database_url, autocommit=True) as db:
        table = new_table(db, "id int primary key, big text")
        async with await RawClient.open(server.socket_url(make_token(), V2)) as client:
            await subscribe(client, "big", [{"event": "INSERT", "schema": "public", "table": table}])
            run(db, "insert into {t} values (1, %s)", table, "x" * 5000)
            live = (await next_change(client))["data"]["errors"]
        result = ok(server.http_url, table=table, role="anon", primary_key={"id": 1})
        assert live == result["errors"] == ["Error 413: Payload Too Large"] and result["delivered"] is True
        small = ok(server.http_url, table=table, role="anon", row={"id": 2, "big": "small"})
        assert small["errors"] == []


async def test_a_table_outside_the_publication_is_named(cdc, db):
    table = new_table(db, "id int primary key", publish=False)
    run(db, "insert into {t} values (1)", table)
    async with await RawClient.open(cdc.socket_url(make_token(), V2)) as client:
        # A subscriber cannot even subscribe to it (docs/protocol.md §6.2).
        spec = [{"event": "INSERT", "schema": "public", "table": table}]
        await client.join("realtime:u", {"postgres_changes": spec})
        assert (await system_error(client)).startswith("Unable to subscribe to changes with given parameters")
    result = ok(cdc.http_url, table=table, role="anon", primary_key={"id": 1})
    assert (result["delivered"], result["reason"]) == (False, "publication")
    assert result["detail"] == f"public.{table} is not in the publication supabase_realtime"


def test_bad_input_is_a_422_naming_the_field(cdc, db):
    table = new_table(db, "id int primary key, n int")
    cases = {
        "table": {"table": f"nope_{secrets.token_hex(3)}", "role": "anon", "primary_key": {"id": 1}},
        "schema": {"schema": "nope", "table": table, "role": "anon", "primary_key": {"id": 1}},
        "filter": {"table": table, "role": "anon", "primary_key": {"id": 1}, "filter": "n=eq"},
        "role": {"table": table, "role": "nobody_here", "primary_key": {"id": 1}},
        "primary_key": {"table": table, "role": "anon", "primary_key": {"n": 1}},
        "row": {"table": table, "role": "anon", "row": {"id": "not a number"}},
        "event": {"table": table, "role": "anon", "primary_key": {"id": 1}, "event": "TRUNCATE"},
        "jwt": {"table": table, "jwt": make_token(exp_in=-10), "primary_key": {"id": 1}},
    }
    for name, body in cases.items():
        response = check(cdc.http_url, **body)
        assert response.status_code == 422, (name, response.text)
        errors = response.json()["errors"]
        assert ("table" if name == "schema" else name) in errors, (name, errors)
    unknown_column = check(cdc.http_url, table=table, role="anon", primary_key={"id": 1}, filter="zz=eq.1")
    assert unknown_column.status_code == 422 and "zz" in unknown_column.json()["errors"]["filter"][0]
    both = check(cdc.http_url, table=table, role="anon", primary_key={"id": 1}, row={"id": 1})
    assert both.status_code == 422
    missing = check(cdc.http_url, table=table, role="anon", primary_key={"id": 1})
    assert missing.json() == {"errors": {"primary_key": ["no row has this primary key"]}}


async def test_a_composite_key_table_is_checked_as_live_delivery_does(cdc, db):
    table = new_table(db, "a int, b text, owner text, primary key (a, b)")
    db.execute(sql.SQL("alter table {} enable row level security").format(sql.Identifier(table)))
    db.execute(
        sql.SQL(
            "create policy own on {} for select to authenticated"
            " using (owner = current_setting('request.jwt.claims', true)::jsonb ->> 'sub')"
        ).format(sql.Identifier(table))
    )
    alice = make_token("authenticated", sub="alice")
    async with await RawClient.open(cdc.socket_url(alice, V2)) as client:
        await subscribe(client, "ck", [{"event": "INSERT", "schema": "public", "table": table}], token=alice)
        run(db, "insert into {t} values (1, 'x', 'bob')", table)
        run(db, "insert into {t} values (2, 'y', 'alice')", table)
        data = (await next_change(client))["data"]
        assert data["record"]["a"] == 2  # bob's row was not delivered
    hidden = ok(cdc.http_url, table=table, jwt=alice, primary_key={"a": 1, "b": "x"})
    assert (hidden["delivered"], hidden["reason"]) == (False, "rls")
    shown = ok(cdc.http_url, table=table, jwt=alice, primary_key={"a": 2, "b": "y"})
    assert (shown["delivered"], shown["errors"]) == (True, [])
    # A raising policy on this path (one query per group, dispatch.py) is reported too.
    db.execute(
        sql.SQL(
            "create policy boom on {} for select to authenticated using ("
            " case when current_setting('request.jwt.claims', true)::jsonb ->> 'sub' = 'mallory'"
            " then (a / (a - a)) = 1 else false end)"
        ).format(sql.Identifier(table))
    )
    raised = ok(
        cdc.http_url, table=table, role="authenticated", claims={"sub": "mallory"}, primary_key={"a": 1, "b": "x"}
    )
    assert (raised["delivered"], raised["reason"]) == (False, "rls_error") and "division by zero" in raised["detail"]
