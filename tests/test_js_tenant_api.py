"""A tenant created through the tenant API, with a database of its own on the same PostgreSQL
cluster, used by @supabase/realtime-js through its Host header: broadcast and Postgres Changes
work for it as soon as the API has answered, and deleting it drops its replication slots."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import psycopg
import pytest
from conftest import CDC_ENV, MS, ServerProcess, admin_headers, make_token, scratch_database, serving
from jsclient import JsDriver
from test_tenant_services import cdc_rls

pytestmark = [pytest.mark.js, pytest.mark.pg]

SECRET = "api-tenant-secret-" + "a" * 40
HOST = "apitenant.localhost"
DELIVERY = 10_000 * MS


@pytest.fixture(scope="module")
def server(pg_dsn: str) -> Iterator[ServerProcess]:
    with serving(pg_dsn, CDC_ENV) as srv:
        yield srv


async def test_a_tenant_created_through_the_api_serves_realtime_js_through_its_host(server, pg_dsn):
    with scratch_database(pg_dsn) as dsn:
        async with httpx.AsyncClient(base_url=server.http_url, headers=admin_headers(), timeout=30) as api:
            body = {"tenant": {"external_id": "apitenant", "jwt_secret": SECRET, "extensions": cdc_rls(dsn)}}
            created = await api.post("/api/tenants", json=body)
            assert created.status_code == 201, created.text
            assert created.json()["warnings"] == []
        with psycopg.connect(dsn, autocommit=True) as conn:
            # The API's answer came after the migrations ran on the tenant's database.
            conn.execute("create table items (id int primary key, body text)")
            conn.execute("grant select on items to anon, authenticated")
            conn.execute("alter publication supabase_realtime add table items")
            token = make_token("anon", secret=SECRET)
            async with JsDriver() as js:
                await js.client("c", server.ws_url, token, host=HOST)
                await js.channel("c", "c", "room", broadcast={"self": True})
                await js.on("c", "broadcast", event="*")
                await js.on("c", "postgres_changes", event="INSERT", schema="public", table="items")
                await js.on("c", "system")
                await js.subscribed("c")
                system = await js.wait_for(lambda ev: ev["ev"] == "system" and ev["channel"] == "c", DELIVERY)
                assert system["payload"]["message"] == "Subscribed to PostgreSQL", system

                start = js.mark()
                assert await js.request({"op": "send", "channel": "c", "message": _hello()}) == "ok"
                message = await js.wait_for(lambda ev: ev["ev"] == "broadcast", DELIVERY, start)
                assert (message["payload"]["event"], message["payload"]["payload"]) == ("hello", {"n": 1})

                conn.execute("insert into items values (1, 'from the tenant database')")
                change = await js.wait_for(lambda ev: ev["ev"] == "postgres_changes", DELIVERY, start)
                assert change["payload"]["new"] == {"id": 1, "body": "from the tenant database"}

        async with httpx.AsyncClient(base_url=server.http_url, headers=admin_headers(), timeout=30) as api:
            assert (await api.delete("/api/tenants/apitenant")).status_code == 204
        with psycopg.connect(dsn, autocommit=True) as conn:
            slots = conn.execute("select slot_name from pg_replication_slots where database = current_database()")
            assert slots.fetchall() == []


def _hello() -> dict[str, object]:
    return {"type": "broadcast", "event": "hello", "payload": {"n": 1}}
