"""Two tenants, each with a database of its own on one PostgreSQL server, served by one process
at the same time, as @supabase/realtime-js sees them: private channels, Postgres Changes and
broadcast from the database work for both, and nothing of one reaches the other.

Tenant A is the default tenant (its database is the server's own); tenant B is created through
the tenant store before the server starts, with upstream's `postgres_cdc_rls` settings naming its
database, and is reached by Host `tenantb.localhost` (docs/protocol.md §1.3)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from conftest import CDC_ENV, MS, ServerProcess, make_token, scratch_database, start_server
from jsclient import JsDriver
from test_js_private_channels import read_and_write_policies
from test_tenant_services import cdc_rls

from realtime_core import db as control_db
from realtime_core.tenants import TenantStore

pytestmark = [pytest.mark.js, pytest.mark.pg]

SECRET_B = "tenant-b-secret-" + "b" * 40
HOST_B = "tenantb.localhost"
TOPIC = "iso:room"
DELIVERY = 10_000 * MS


class Tenants:
    def __init__(self, server: ServerProcess, a: psycopg.Connection[Any], b: psycopg.Connection[Any]) -> None:
        self.server, self.a, self.b = server, a, b


@pytest.fixture(scope="module")
def tenants(pg_dsn: str) -> Iterator[Tenants]:
    with scratch_database(pg_dsn) as dsn_a, scratch_database(pg_dsn) as dsn_b:
        asyncio.run(_create_tenant_b(dsn_a, dsn_b))
        server = start_server(dsn_a, CDC_ENV)
        try:
            with psycopg.connect(dsn_a, autocommit=True) as a, psycopg.connect(dsn_b, autocommit=True) as b:
                for conn in (a, b):
                    conn.execute("create table items (id int primary key, body text)")
                    conn.execute("grant select on items to anon, authenticated")
                    conn.execute("alter publication supabase_realtime add table items")
                    read_and_write_policies(conn, "iso")
                read_and_write_policies(a, "onlya")
                yield Tenants(server, a, b)
        finally:
            server.stop()
        assert not server.lost_task_errors(), server.log()


async def _create_tenant_b(dsn_a: str, dsn_b: str) -> None:
    """The server's control table, made as the server makes it, with tenant B in it."""
    async with await psycopg.AsyncConnection.connect(dsn_a, autocommit=True) as conn:
        await control_db.migrate(conn)
        await TenantStore(conn).create("tenantb", SECRET_B, extensions=cdc_rls(dsn_b))


async def join(js: JsDriver, name: str, url: str, token: str, topic: str = TOPIC, **options: Any) -> dict[str, Any]:
    """A client `name` with one private channel `name` listening to broadcasts, Postgres Changes of
    `items` and system messages; returns its first subscribe status."""
    await js.client(name, url, token, **options)
    await js.channel(name, name, topic, private=True)
    await js.on(name, "broadcast", event="*")
    await js.on(name, "postgres_changes", event="*", schema="public", table="items")
    await js.on(name, "system")
    return await js.subscribe(name)


def change_of(channel: str, body: str) -> Callable[[dict[str, Any]], bool]:
    return lambda ev: (
        ev["ev"] == "postgres_changes" and ev["channel"] == channel and ev["payload"]["new"]["body"] == body
    )


def message_of(channel: str, event: str) -> Callable[[dict[str, Any]], bool]:
    return lambda ev: ev["ev"] == "broadcast" and ev["channel"] == channel and ev["payload"]["event"] == event


def from_other_tenant(channel: str, mine: str) -> Callable[[dict[str, Any]], bool]:
    """Anything channel `channel` receives that was not made in its own tenant's database."""

    def unexpected(ev: dict[str, Any]) -> bool:
        if ev["channel"] != channel:
            return False
        if ev["ev"] == "postgres_changes":
            return not ev["payload"]["new"]["body"].startswith(mine)
        if ev["ev"] == "broadcast":
            return not ev["payload"]["event"].startswith(mine)
        return False

    return unexpected


async def test_two_tenants_with_their_own_databases_are_served_at_once_and_isolated(tenants):
    server, a, b = tenants.server, tenants.a, tenants.b
    token_a = make_token("authenticated", sub="alice")
    token_b = make_token("authenticated", sub="bob", secret=SECRET_B)
    async with JsDriver() as js:
        status = await join(js, "a", server.ws_url, token_a)
        assert (status["status"], status["error"]) == ("SUBSCRIBED", None)
        status = await join(js, "b", server.ws_url, token_b, host=HOST_B)
        assert (status["status"], status["error"]) == ("SUBSCRIBED", None)
        for name in ("a", "b"):
            system = await js.wait_for(lambda ev, n=name: ev["ev"] == "system" and ev["channel"] == n, DELIVERY)
            assert system["payload"]["message"] == "Subscribed to PostgreSQL", system

        # Postgres Changes: each database's change reaches its own tenant only. The other
        # tenant's marker change, made after the first was delivered, shows nothing came
        # before it (a misrouted change would have been written with the delivered one).
        start = js.mark()
        a.execute("insert into items values (1, 'a: first')")
        await js.wait_for(change_of("a", "a: first"), DELIVERY, start)
        b.execute("insert into items values (1, 'b: first')")
        await js.expect_nothing_before(change_of("b", "b: first"), from_other_tenant("b", "b"), start, DELIVERY)
        a.execute("insert into items values (2, 'a: second')")
        await js.expect_nothing_before(change_of("a", "a: second"), from_other_tenant("a", "a"), start, DELIVERY)

        # Broadcast from the database: the same topic in both databases, each to its own tenant.
        start = js.mark()
        a.execute("select realtime.send('{}'::jsonb, 'a_sent', %s)", (TOPIC,))
        await js.wait_for(message_of("a", "a_sent"), DELIVERY, start)
        b.execute("select realtime.send('{}'::jsonb, 'b_sent', %s)", (TOPIC,))
        await js.expect_nothing_before(message_of("b", "b_sent"), from_other_tenant("b", "b"), start, DELIVERY)
        a.execute("select realtime.send('{}'::jsonb, 'a_again', %s)", (TOPIC,))
        await js.expect_nothing_before(message_of("a", "a_again"), from_other_tenant("a", "a"), start, DELIVERY)

        # Private channels are checked against each tenant's own policies: only A's database
        # lets `onlya:` topics be read.
        status = await join(js, "a2", server.ws_url, token_a, topic="onlya:room")
        assert (status["status"], status["error"]) == ("SUBSCRIBED", None)
        status = await join(js, "b2", server.ws_url, token_b, topic="onlya:room", host=HOST_B)
        assert status["status"] == "CHANNEL_ERROR"
        assert (
            status["error"] == "Unauthorized: You do not have permissions to read from this Channel topic: onlya:room"
        )
