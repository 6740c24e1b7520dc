"""Postgres Changes as @supabase/realtime-js sees them (docs/protocol.md §6.6, §10.2, §10.5), on vsn 2.0.0 and 1.0.0.

The library pairs the join reply's ids with its bindings by index and hands the
app `{schema, table, commit_timestamp, eventType, new, old, errors}`; a binding
only receives changes whose `ids` include its own id."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from conftest import MS, make_token
from jsclient import JsDriver
from test_postgres_changes import new_table, run

pytestmark = [pytest.mark.js, pytest.mark.pg]
VSNS = pytest.mark.parametrize("vsn", ["2.0.0", "1.0.0"])
DELIVERY = 5_000 * MS


async def listen(js: JsDriver, url: str, token: str, topic: str, vsn: str, bindings: list[dict[str, Any]]) -> None:
    """A client whose channel has one postgres_changes binding per entry; waits for `Subscribed to PostgreSQL`."""
    await js.client("c", url, token, vsn)
    await js.channel("c", "c", topic)
    for binding in bindings:
        await js.on("c", "postgres_changes", **binding)
    await js.on("c", "system")
    await js.subscribed("c")
    system = await js.wait_for(lambda ev: ev["ev"] == "system", timeout=10_000 * MS)
    assert system["payload"]["message"] == "Subscribed to PostgreSQL", system
    assert system["payload"]["status"] == "ok"


def is_change(row_id: int, filter_event: str | None = None) -> Any:
    """A predicate: a postgres_changes event whose new row has `row_id` (on the binding for `filter_event`)."""
    return lambda ev: (
        ev["ev"] == "postgres_changes"
        and ev["payload"]["new"].get("id") == row_id
        and (filter_event is None or ev["filter"]["event"] == filter_event)
    )


async def change(js: JsDriver, since: int, filter_event: str | None = None) -> dict[str, Any]:
    ev = await js.wait_for(
        lambda ev: ev["ev"] == "postgres_changes" and (filter_event is None or ev["filter"]["event"] == filter_event),
        timeout=DELIVERY,
        since=since,
    )
    return ev["payload"]


@VSNS
async def test_inserts_updates_and_deletes_reach_the_binding(cdc, db, topic, vsn):
    table = new_table(db, "id int primary key, title text, done bool")
    async with JsDriver() as js:
        await listen(js, cdc.ws_url, make_token(), topic, vsn, [{"event": "*", "schema": "public", "table": table}])
        mark = js.mark()
        run(db, "insert into {t} values (1, 'write tests', false)", table)
        insert = await change(js, mark)
        assert insert["eventType"] == "INSERT"
        assert (insert["schema"], insert["table"], insert["errors"]) == ("public", table, None)
        assert insert["new"] == {"id": 1, "title": "write tests", "done": False}
        assert insert["old"] == {}
        assert insert["commit_timestamp"].endswith("Z")
        mark = js.mark()
        run(db, "update {t} set done = true where id = 1", table)
        update = await change(js, mark)
        assert (update["eventType"], update["new"]["done"], update["old"]) == ("UPDATE", True, {"id": 1})
        mark = js.mark()
        run(db, "delete from {t} where id = 1", table)
        delete = await change(js, mark)
        assert (delete["eventType"], delete["new"], delete["old"]) == ("DELETE", {}, {"id": 1})


@VSNS
async def test_each_binding_gets_only_the_changes_its_filter_and_event_match(cdc, db, topic, vsn):
    table = new_table(db, "id int primary key, status text")
    async with JsDriver() as js:
        await listen(
            js,
            cdc.ws_url,
            make_token(),
            topic,
            vsn,
            [
                {"event": "INSERT", "schema": "public", "table": table, "filter": "status=eq.open"},
                {"event": "UPDATE", "schema": "public", "table": table},
            ],
        )
        mark = js.mark()
        run(db, "insert into {t} values (1, 'closed'), (2, 'open')", table)
        run(db, "update {t} set status = 'open' where id = 1", table)
        run(db, "insert into {t} values (3, 'open')", table)  # the marker: changes arrive in commit order
        inserted = await change(js, mark, "INSERT")
        updated = await change(js, mark, "UPDATE")
        assert inserted["new"] == {"id": 2, "status": "open"}
        assert updated["new"] == {"id": 1, "status": "open"}
        await js.expect_nothing_before(is_change(3, "INSERT"), is_change(1, "INSERT"), since=mark, timeout=DELIVERY)


async def test_rls_shows_a_user_only_its_own_rows(cdc, db, topic):
    table = new_table(db, "id int primary key, owner text")
    db.execute(psycopg.sql.SQL("alter table {} enable row level security").format(psycopg.sql.Identifier(table)))
    db.execute(
        psycopg.sql.SQL(
            "create policy own on {} for select to authenticated "
            "using (owner = current_setting('request.jwt.claims', true)::jsonb ->> 'sub')"
        ).format(psycopg.sql.Identifier(table))
    )
    token = make_token("authenticated", sub="alice")
    async with JsDriver() as js:
        await listen(js, cdc.ws_url, token, topic, "2.0.0", [{"event": "INSERT", "schema": "public", "table": table}])
        mark = js.mark()
        run(db, "insert into {t} values (1, 'bob'), (2, 'alice')", table)
        run(db, "insert into {t} values (3, 'alice')", table)  # the marker: changes arrive in commit order
        assert (await change(js, mark))["new"] == {"id": 2, "owner": "alice"}
        await js.expect_nothing_before(is_change(3), is_change(1), since=mark, timeout=DELIVERY)
