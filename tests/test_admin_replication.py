"""The admin API's replication view and publication changes (realtime_core/admin/replication.py)
against a server streaming Postgres Changes and broadcasts from the database, with a
realtime-js subscriber: the slots' figures follow the rows inserted, the publication lists its
tables with their subscribers, and adding or removing a table starts or stops the changes a
subscriber gets."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from conftest import MS, admin_headers, make_token
from jsclient import JsDriver
from test_postgres_changes import new_table, run

pytestmark = [pytest.mark.js, pytest.mark.pg]

TENANT = "realtime-dev"
REPLICATION = f"/admin/v1/tenants/{TENANT}/replication"
TABLES = f"/admin/v1/tenants/{TENANT}/publication/tables"
DELIVERY = 5_000 * MS


async def listen(js: JsDriver, url: str, topic: str, tables: list[str]) -> None:
    """A realtime-js channel with an INSERT binding per table, once `Subscribed to PostgreSQL`."""
    await js.client("c", url, make_token())
    await js.channel("c", "c", topic)
    for table in tables:
        await js.on("c", "postgres_changes", event="INSERT", schema="public", table=table)
    await js.on("c", "system")
    await js.subscribed("c")
    system = await js.wait_for(lambda ev: ev["ev"] == "system", timeout=10_000 * MS)
    assert system["payload"]["message"] == "Subscribed to PostgreSQL", system


def insert_of(table: str, row_id: int) -> Any:
    return lambda ev: (
        ev["ev"] == "postgres_changes" and ev["payload"]["table"] == table and ev["payload"]["new"]["id"] == row_id
    )


async def replication(http: httpx.AsyncClient) -> dict[str, Any]:
    response = await http.get(REPLICATION, headers=admin_headers(admin="read"))
    assert response.status_code == 200, response.text
    return response.json()


async def until(http: httpx.AsyncClient, done: Any, timeout: float = 10_000 * MS) -> dict[str, Any]:
    """Read the replication view every 100 MS until `done` holds for it."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        view = await replication(http)
        if done(view):
            return view
        assert asyncio.get_running_loop().time() < deadline, view
        await asyncio.sleep(100 * MS)


def slot(view: dict[str, Any], kind: str) -> dict[str, Any]:
    [found] = [s for s in view["slots"] if s["kind"] == kind]
    return found


async def test_replication_figures_follow_the_rows(cdc, db, topic):
    table = new_table(db, "id int primary key, title text")
    async with JsDriver() as js, httpx.AsyncClient(base_url=cdc.http_url) as http:
        before = slot(await replication(http), "postgres_changes")
        await listen(js, cdc.ws_url, topic, [table])
        for row_id in (1, 2, 3):
            run(db, "insert into {t} values (%s, 'x')", table, row_id)
        for row_id in (1, 2, 3):
            await js.wait_for(insert_of(table, row_id), timeout=DELIVERY)
        db.execute("select realtime.send('{\"n\": 1}'::jsonb, 'ev', %s, false)", (topic,))
        view = await until(http, lambda v: slot(v, "db_broadcast")["rows"]["dispatched"] >= 1)

        changes = slot(view, "postgres_changes")
        assert changes["active"] is True and changes["streaming"] is True
        assert changes["rows"]["dispatched"] - before["rows"]["dispatched"] == 3
        assert changes["rows"]["seen"] - before["rows"]["seen"] >= 3
        seen, dispatched = changes["rows"]["seen"], changes["rows"]["dispatched"]
        assert seen >= dispatched + sum(changes["rows"]["skipped"].values())
        latency = changes["commit_to_dispatch_ms"]
        assert 0 <= latency["p50"] <= latency["p99"]
        assert changes["lag_ms"] is not None and changes["lag_ms"] >= 0
        assert isinstance(changes["confirmed_flush_lsn"], str) and "/" in changes["confirmed_flush_lsn"]
        assert changes["lag_bytes"] >= 0 and changes["retained_wal_bytes"] >= 0
        assert changes["wal_status"] in ("reserved", "extended", "unreserved")
        assert "max_slot_wal_keep_size" in changes and "safe_wal_size" in changes

        broadcasts = slot(view, "db_broadcast")
        assert broadcasts["rows"]["seen"] >= broadcasts["rows"]["dispatched"] >= 1
        assert broadcasts["commit_to_dispatch_ms"]["p50"] is not None

        assert view["publication"]["name"] == "supabase_realtime"
        [entry] = [t for t in view["publication"]["tables"] if t["table"] == table]
        assert entry == {"schema": "public", "table": table, "subscribers": 1}
        messages = view["messages"]
        assert messages["rows"] >= 1 and messages["bytes"] > 0 and messages["partitions"] >= 1
        assert messages["oldest"].endswith("Z")


async def test_publication_changes_start_and_stop_a_subscribers_changes(cdc, db, topic):
    added = new_table(db, "id int primary key", publish=False)
    marker = new_table(db, "id int primary key")
    async with JsDriver() as js, httpx.AsyncClient(base_url=cdc.http_url) as http:
        body = {"schema": "public", "table": added}
        refused = await http.post(TABLES, json=body, headers=admin_headers(admin="read"))
        assert refused.status_code == 403
        response = await http.post(TABLES, json=body, headers=admin_headers())
        assert response.status_code == 200, response.text
        assert {"schema": "public", "table": added, "subscribers": 0} in response.json()["tables"]

        await listen(js, cdc.ws_url, topic, [added, marker])
        run(db, "insert into {t} values (1)", added)
        await js.wait_for(insert_of(added, 1), timeout=DELIVERY)

        response = await http.request("DELETE", TABLES, json=body, headers=admin_headers())
        assert response.status_code == 200, response.text
        assert all(t["table"] != added for t in response.json()["tables"])
        mark = js.mark()
        run(db, "insert into {t} values (2)", added)
        run(db, "insert into {t} values (1)", marker)
        # The marker's row was committed after row 2: row 2 would have come first.
        await js.expect_nothing_before(insert_of(marker, 1), insert_of(added, 2), since=mark, timeout=DELIVERY)

        again = await http.request("DELETE", TABLES, json=body, headers=admin_headers())
        assert again.status_code == 422 and "table" in again.json()["errors"]
        audit = (await http.get("/admin/v1/audit", params={"limit": 1000}, headers=admin_headers())).json()["data"]
        actions = [(e["action"], e["target"]) for e in audit]
        assert ("publication.add", f"{TENANT}/public.{added}") in actions
        assert ("publication.remove", f"{TENANT}/public.{added}") in actions


async def test_a_table_that_does_not_exist_is_refused(cdc):
    async with httpx.AsyncClient(base_url=cdc.http_url) as http:
        for body in ({"schema": "public", "table": "no_such_table"}, {"schema": "nope", "table": "x"}):
            response = await http.post(TABLES, json=body, headers=admin_headers())
            assert response.status_code == 422, response.text
            assert "does not exist" in response.json()["errors"]["table"][0]
        missing = await http.post(TABLES, json={"schema": "public"}, headers=admin_headers())
        assert missing.status_code == 422 and "table" in missing.json()["errors"]
        quoted = await http.post(TABLES, json={"table": 'x"; drop table y; --'}, headers=admin_headers())
        assert quoted.status_code == 422 and "does not exist" in quoted.json()["errors"]["table"][0]
        unknown = await http.get("/admin/v1/tenants/nobody/replication", headers=admin_headers())
        assert unknown.status_code == 404
