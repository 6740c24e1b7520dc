"""Usage metering (realtime_core.usage, admin/usage_api.py): what counts, peak connections,
persistence across restarts and database outages, quota alerts and enforcement.

The unit tests drive a UsageMeter with an injected wall clock. The end-to-end tests run
`realtime-core serve` and the official Python client, and compare the usage endpoint with
totals computed by hand from the README's counting table."""

from __future__ import annotations

import http.server
import json
import signal
import threading
import time
from datetime import UTC, date, datetime
from typing import Any

import httpx
import psycopg
import pytest
from conftest import (
    CDC_ENV,
    MS,
    admin_headers,
    make_token,
    messages_policy,
    published_table,
    scratch_database,
    start_server,
)
from realtime import AsyncRealtimeClient, RealtimeSubscribeStates
from test_hub import Subscriber
from wire import V2, RawClient, connect_refused, eventually, metric, parse_kind4

from realtime_core import db as control_db
from realtime_core.config import Limits
from realtime_core.db import open_pool
from realtime_core.hub import Hub, Publication, StreamKey
from realtime_core.jwt import KeySet
from realtime_core.limits import BUCKET_SECONDS
from realtime_core.plans import PLANS
from realtime_core.protocol import V1
from realtime_core.protocol import V2 as V2_CODEC
from realtime_core.tenants import Tenant
from realtime_core.usage import EGRESS_KINDS, UsageMeter, billing_cycle

TENANT = "realtime-dev"
HOUR = 3600.0
# 2026-12-06 10:00:00 UTC
T0 = datetime(2026, 12, 6, 10, tzinfo=UTC).timestamp()


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def tenant(external_id: str = "t1", **fields: Any) -> Tenant:
    fields.setdefault("limits", Limits())
    return Tenant(id=external_id, external_id=external_id, name=external_id, keys=KeySet(), **fields)


# -- peak connections (unit) -----------------------------------------------------------------


async def test_peaks_follow_connects_and_a_new_hour_starts_from_the_open_connections():
    clock = Clock(T0 + 100)
    meter = UsageMeter(clock)
    t = tenant()
    for _ in range(3):
        meter.connected(t)  # 3 open
    meter.disconnected(t)
    meter.disconnected(t)  # 1 open
    meter.connected(t)  # 2: below this hour's peak of 3
    clock.t = T0 + HOUR + 5  # 11:00: starts with the 2 still open
    meter.disconnected(t)  # 1
    meter.connected(t)
    meter.connected(t)  # 3
    meter.connected(t)  # 4: the new hour's peak
    clock.t = T0 + 3 * HOUR + 1  # 13:00, after a quiet 12:00 with 4 open all along
    meter.disconnected(t)
    rows = await meter.read("t1", date(2026, 12, 6), date(2026, 12, 6), hourly=True)
    assert {row["hour"]: row["peak_connections"] for row in rows} == {10: 3, 11: 4, 12: 4, 13: 4}
    [day] = await meter.read("t1", date(2026, 12, 6), date(2026, 12, 6), hourly=False)
    assert day["peak_connections"] == 4
    assert meter.open_connections("t1") == 3


async def test_a_new_day_starts_from_the_connections_open_at_midnight():
    clock = Clock(datetime(2026, 12, 6, 23, 59, tzinfo=UTC).timestamp())
    meter = UsageMeter(clock)
    t = tenant()
    for _ in range(5):
        meter.connected(t)
    for _ in range(3):
        meter.disconnected(t)
    clock.t += 120  # 00:01 on the 7th, nothing happened since
    rows = await meter.read("t1", date(2026, 12, 6), date(2026, 12, 7), hourly=False)
    assert [(row["day"], row["peak_connections"]) for row in rows] == [(date(2026, 12, 6), 5), (date(2026, 12, 7), 2)]


def test_billing_cycles_start_on_the_tenant_day_of_the_month():
    assert billing_cycle(date(2026, 12, 6), 1) == billing_cycle(date(2026, 12, 31), 1)
    cycle = billing_cycle(date(2026, 12, 6), 15)
    assert (cycle.start, cycle.end) == (date(2026, 11, 15), date(2026, 12, 15))
    cycle = billing_cycle(date(2027, 1, 20), 15)
    assert (cycle.start, cycle.end, cycle.days) == (date(2027, 1, 15), date(2027, 2, 15), 31)


async def test_messages_are_counted_by_hour_and_kind():
    clock = Clock(T0 + 10)
    meter = UsageMeter(clock)
    hub = Hub(clock)  # the hub tallies, the meter reads the tallies
    hub.attach(meter)
    t = tenant()
    room = StreamKey("t1", False, "room")
    hub.accepted(t, "rest", room, 2)
    clock.t = T0 + HOUR
    hub.accepted(t, "broadcast", room, 1)
    hub.accepted(tenant("other"), "broadcast", StreamKey("other", False, "room"), 7)
    rows = await meter.read("t1", date(2026, 12, 6), date(2026, 12, 6), hourly=True)
    assert [(row["hour"], row["messages"]["rest"], row["messages"]["broadcast"]) for row in rows] == [
        (10, 2, 0),
        (11, 0, 1),
    ]
    assert meter.cycle_usage(t) == (3, 0)


async def test_a_seconds_tally_counts_in_the_hour_it_was_counted_in_whenever_it_is_read():
    """The hub's clock is the loop's (here 500 s after its start at T0 + 59:59.2), not the wall
    clock: a second's tally goes to the UTC hour in which it started, read late or not."""
    clock = Clock(T0 + HOUR - 0.8)
    meter = UsageMeter(clock)
    hub = Hub(lambda: clock.t - (T0 + HOUR - 0.8) + 500.0)
    hub.attach(meter)
    t = tenant()
    room = StreamKey("t1", False, "room")
    hub.accepted(t, "rest", room, 2)  # 10:59:59.2
    clock.t = T0 + HOUR + 0.5  # 11:00:00.5, a new second of the hub's clock too
    hub.accepted(t, "rest", room, 3)
    clock.t = T0 + HOUR + 1800  # read half an hour later: the second tally is handed over only now
    rows = await meter.read("t1", date(2026, 12, 6), date(2026, 12, 6), hourly=True)
    assert [(row["hour"], row["messages"]["rest"]) for row in rows] == [(10, 2), (11, 3)]


# -- persistence (a real database) ---------------------------------------------------------------


@pytest.mark.pg
async def test_a_failed_flush_keeps_the_counts_and_the_next_adds_them_once(pg_dsn):
    with scratch_database(pg_dsn) as dsn:
        pool = await open_pool(dsn)
        try:
            async with pool.connection() as conn:
                await control_db.migrate(conn)
            clock = Clock(time.time())
            meter = UsageMeter(clock)
            hub = Hub(clock)
            hub.attach(meter)
            t = tenant()
            meter.pool, meter.tenants = pool, lambda: [t]
            room = StreamKey("t1", False, "room")
            hub.accepted(t, "rest", room, 5)
            meter.egress("t1", "protocol", 500, "phoenix")
            assert await meter.flush()
            hub.accepted(t, "rest", room, 3)
            meter.egress("t1", "rest", 300, "(rest responses)")
            async with pool.connection() as conn:  # the database refuses the writes
                await conn.execute("alter table _realtime.usage_egress rename to usage_egress_away")
            assert not await meter.flush()
            assert meter.flush_failures == 1
            hub.accepted(t, "rest", room, 1)  # counted during the outage
            meter.egress("t1", "rest", 100, "(rest responses)")
            today = datetime.fromtimestamp(clock.t, UTC).date()
            async with pool.connection() as conn:
                await conn.execute("alter table _realtime.usage_egress_away rename to usage_egress")
            [row] = await meter.read("t1", today, today, hourly=False)
            assert row["messages"]["rest"] == 9  # stored 5, and 4 waiting
            assert (row["egress_bytes"]["protocol"], row["egress_bytes"]["rest"]) == (500, 400)
            assert await meter.flush()
            async with pool.connection() as conn:
                cur = await conn.execute("select sum(messages) from _realtime.usage where tenant = 't1'")
                assert (await cur.fetchone())[0] == 9
                cur = await conn.execute("select sum(bytes) from _realtime.usage_egress where tenant = 't1'")
                assert (await cur.fetchone())[0] == 900
            [row] = await meter.read("t1", today, today, hourly=False)
            assert row["messages"]["rest"] == 9
            assert await meter.egress_bytes("t1", today, today) == 0  # an empty range
            assert await meter.egress_bytes("t1", today, date.fromordinal(today.toordinal() + 1)) == 900
            meter.egress("t1", "protocol", 50, "phoenix")  # not flushed yet: live
            assert meter.cycle_egress(t) == 950
            assert meter.quota(t)["egress"]["used"] == 950
        finally:
            await pool.close()


# -- end to end: the counting table ---------------------------------------------------------------


def usage_of(server: Any, **query: str) -> dict[str, Any]:
    response = httpx.get(f"{server.http_url}/admin/v1/tenants/{TENANT}/usage", params=query, headers=admin_headers())
    assert response.status_code == 200, response.text
    return response.json()


def opts(*, self: bool = False, presence: bool = False, private: bool = False) -> dict[str, Any]:
    return {
        "config": {
            "broadcast": {"ack": False, "self": self},
            "presence": {"key": "", "enabled": presence},
            "private": private,
        }
    }


async def subscribed(client: AsyncRealtimeClient, topic: str, params: dict[str, Any], setup: Any = None) -> Any:
    channel = client.channel(topic, params)
    if setup is not None:
        setup(channel)
    states: list[Any] = []
    await channel.subscribe(lambda state, error: states.append(state))
    await eventually(lambda: states, what=f"the join of {topic}")
    assert states == [RealtimeSubscribeStates.SUBSCRIBED]
    return channel


@pytest.mark.pg
@pytest.mark.slow
async def test_every_row_of_the_counting_table_with_the_official_client_and_exact_after_sigterm(pg_dsn):
    env = {**CDC_ENV, "REALTIME_USAGE_FLUSH_INTERVAL_MS": "60000"}  # only the stop flushes
    with scratch_database(pg_dsn) as dsn:
        server = start_server(dsn, env)
        clients: list[AsyncRealtimeClient] = []

        async def client(token: str | None = None) -> AsyncRealtimeClient:
            c = AsyncRealtimeClient(server.ws_url, token or make_token(), auto_reconnect=False)
            await c.connect()
            clients.append(c)
            return c

        try:
            # Broadcast: A (self: true), B and C. A's message: 1 accepted + 3 deliveries; B's: 1 + 2 (not B).
            got: dict[str, list[Any]] = {"a": [], "b": [], "c": []}
            a = await subscribed(
                await client(), "bc", opts(self=True), lambda ch: ch.on_broadcast("*", got["a"].append)
            )
            b = await subscribed(await client(), "bc", opts(), lambda ch: ch.on_broadcast("*", got["b"].append))
            await subscribed(await client(), "bc", opts(), lambda ch: ch.on_broadcast("*", got["c"].append))
            await a.send_broadcast("m", {"from": "a"})
            await b.send_broadcast("m", {"from": "b"})
            await eventually(
                lambda: len(got["a"]) == 2 and len(got["b"]) == 1 and len(got["c"]) == 2, what="broadcasts"
            )
            broadcast = 1 + 3 + 1 + 2

            # REST to two subscribers: a batch of 2 (2 accepted + 4 deliveries), one single event (1 + 2).
            rest_got: list[Any] = []
            for _ in range(2):
                await subscribed(await client(), "rest", opts(), lambda ch: ch.on_broadcast("*", rest_got.append))
            service = {"Authorization": f"Bearer {make_token('service_role')}"}
            async with httpx.AsyncClient(base_url=server.http_url, headers=service) as http:
                batch = {"messages": [{"topic": "rest", "event": "e", "payload": {"i": i}} for i in range(2)]}
                assert (await http.post("/api/broadcast", json=batch)).status_code == 202
                assert (await http.post("/api/broadcast/rest/events/one", json={"x": 1})).status_code == 202
                # Refused: too large a payload counts nothing.
                big = {"messages": [{"topic": "rest", "event": "e", "payload": {"x": "y" * 4_000_000}}]}
                assert (await http.post("/api/broadcast", json=big)).status_code == 422
            await eventually(lambda: len(rest_got) == 6, what="REST deliveries")
            rest = 2 + 4 + 1 + 2

            # Presence: P1, P2, P3 join with presence (3 presence_state); P1 and P2 track (2 accepted,
            # 2 × 3 diffs); P1 disconnects (0) and its leave reaches P2 and P3 (2 diffs).
            leaves: list[Any] = []
            p1_client = await client()
            p1 = await subscribed(p1_client, "pres", opts(presence=True))
            p2 = await subscribed(
                await client(),
                "pres",
                opts(presence=True),
                lambda ch: ch.on_presence_leave(lambda *x: leaves.append(x)),
            )
            p3_client = await client()
            p3 = await subscribed(p3_client, "pres", opts(presence=True))
            await p1.track({"who": "p1"})
            await p2.track({"who": "p2"})
            await eventually(lambda: len(p3.presence_state()) == 2, what="both tracks seen by P3")
            await p1_client.close()
            clients.remove(p1_client)
            await eventually(lambda: leaves, what="P1's leave")
            presence = 3 + 1 + 3 + 1 + 3 + 2
            # P3 (not tracked) leaves: no diff; P2 alone now, its own leave later reaches nobody.
            await p3_client.close()
            clients.remove(p3_client)

            # Postgres Changes: X has two bindings matching an insert (one frame), Y one.
            with psycopg.connect(dsn, autocommit=True) as db:
                table = published_table(db, "id int primary key, v text")
                changes: dict[str, list[Any]] = {"x1": [], "x2": [], "y": []}
                systems: list[Any] = []

                def bind(*names: str):
                    def setup(ch: Any) -> None:
                        for name in names:
                            event = "INSERT" if name == "x1" else "*"
                            ch.on_postgres_changes(event, schema="public", table=table, callback=changes[name].append)
                        ch.on_system(systems.append)

                    return setup

                await subscribed(await client(), "db-x", opts(), bind("x1", "x2"))
                await subscribed(await client(), "db-y", opts(), bind("y"))
                await eventually(lambda: len(systems) >= 2, 10_000 * MS, what="Postgres Changes ready")
                db.execute(f'insert into "{table}" values (1, %s)', ("a",))
                await eventually(lambda: changes["x1"] and changes["x2"] and changes["y"], what="the changes")
                postgres_changes = 2

                # realtime.send to two public subscribers: 2 deliveries; the database's insert counts 0.
                sent: list[Any] = []
                for _ in range(2):
                    await subscribed(await client(), "dbb", opts(), lambda ch: ch.on_broadcast("*", sent.append))
                db.execute("select realtime.send('{\"k\": 1}'::jsonb, 'e', 'dbb', false)")
                await eventually(lambda: len(sent) == 2, what="realtime.send deliveries")

                # Replay of 2 stored private messages to a private channel: 2 deliveries.
                messages_policy(db, "select", "realtime.topic() = 'replayed'")
                since = int(time.time() * 1000) - 60_000
                for i in range(2):
                    db.execute("select realtime.send(jsonb_build_object('i', %s), 'e', 'replayed')", (i,))
                raw = await RawClient.open(server.socket_url(make_token("authenticated", sub="u"), V2))
                try:
                    await raw.join("realtime:replayed", {"private": True, "broadcast": {"replay": {"since": since}}})
                    for _ in range(2):
                        await raw.expect_event("realtime:replayed", "broadcast")
                    db_broadcast = 2 + 2
                    # The live copies of the replayed messages are skipped: a marker after them
                    # proves the stream has passed them.
                    db.execute("select realtime.send('{}'::jsonb, 'marker', 'replayed')")
                    marker = await raw.expect(lambda f: isinstance(f, bytes))  # a V2 user broadcast
                    assert parse_kind4(marker).event == "marker"
                    db_broadcast += 1
                    expected = {
                        "broadcast": broadcast,
                        "presence": presence,
                        "postgres_changes": postgres_changes,
                        "db_broadcast": db_broadcast,
                        "rest": rest,
                    }
                    expected["all"] = sum(expected.values())
                    # Sockets: A B C, 2 REST, P1 P2 P3 (8), P1 and P3 left (6), X Y, 2 dbb, the raw one: 11.
                    live = usage_of(server)
                    egress = live["total"].pop("egress_bytes")  # exact egress: tests/test_egress.py
                    assert live["total"] == {"messages": expected, "peak_connections": 11}
                    assert egress["all"] == sum(n for kind, n in egress.items() if kind != "all") > 0
                    today = datetime.now(UTC).date().isoformat()
                    [day] = [d for d in live["days"] if d["date"] == today]
                    assert day.pop("egress_bytes") == egress
                    assert day == {"date": today, "messages": expected, "peak_connections": 11}
                finally:
                    await raw.close()
        finally:
            for c in clients:
                await c.close()
            server.stop(signal.SIGTERM)
        # After SIGTERM and a restart, the stored totals are exactly what was counted.
        server = start_server(dsn, env)
        try:
            after = usage_of(server)
            assert after["total"]["messages"] == expected
            assert after["total"]["peak_connections"] == 11
            assert after["total"]["egress_bytes"]["all"] >= egress["all"]  # stored, and the restart's own
        finally:
            server.stop()
            server.drop_slots()


@pytest.mark.pg
async def test_after_sigkill_only_the_last_flush_interval_is_lost(pg_dsn):
    env = {"REALTIME_USAGE_FLUSH_INTERVAL_MS": "300"}
    service = {"Authorization": f"Bearer {make_token('service_role')}"}
    with scratch_database(pg_dsn) as dsn:
        server = start_server(dsn, env)
        try:
            for _ in range(5):
                r = httpx.post(f"{server.http_url}/api/broadcast/k/events/e", json={}, headers=service)
                assert r.status_code == 202

            def stored() -> int:
                with psycopg.connect(dsn) as conn:
                    row = conn.execute("select coalesce(sum(messages), 0) from _realtime.usage").fetchone()
                    return int(row[0])

            await eventually(lambda: stored() == 5, 5000 * MS, what="a flush")
            for _ in range(3):  # counted after that flush: lost or not, depending on the kill
                httpx.post(f"{server.http_url}/api/broadcast/k/events/e", json={}, headers=service)
        finally:
            server.stop(signal.SIGKILL)
        assert 5 <= stored() <= 8
        server = start_server(dsn, env)
        try:
            total = usage_of(server)["total"]["messages"]["rest"]
            assert total == stored()
        finally:
            server.stop()


# -- quotas: alerts and enforcement -----------------------------------------------------------------


class Hook(http.server.BaseHTTPRequestHandler):
    """Answers the first POST with 500 (the server retries), later ones with 204; records bodies."""

    received: list[dict[str, Any]] = []
    failures_left = 1

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        if Hook.failures_left > 0:
            Hook.failures_left -= 1
            self.send_response(500)
        else:
            Hook.received.append(body)
            self.send_response(204)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.mark.pg
async def test_quota_alerts_are_posted_once_per_threshold_and_enforce_quota_refuses_connects(pg_dsn):
    hook = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=hook.serve_forever, daemon=True).start()
    env = {"REALTIME_USAGE_FLUSH_INTERVAL_MS": "200", "TENANT_PLAN": "free"}
    service = {"Authorization": f"Bearer {make_token('service_role')}"}
    included = PLANS["free"].included_messages
    with scratch_database(pg_dsn) as dsn:
        server = start_server(dsn, env)  # creates the tenant; its usage is set below
        server.stop()
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(
                "update _realtime.tenants set enforce_quota = true, alert_webhook_url = %s where external_id = %s",
                (f"http://127.0.0.1:{hook.server_address[1]}/alerts", TENANT),
            )
            # 80 % of the cycle's messages already used (stored by an earlier run).
            conn.execute(
                "insert into _realtime.usage (tenant, day, hour, kind, messages) values (%s, %s, 0, 'rest', %s)",
                (TENANT, datetime.now(UTC).date(), included * 8 // 10 - 1),
            )
        server = start_server(dsn, env)
        try:
            r = httpx.post(f"{server.http_url}/api/broadcast/q/events/e", json={}, headers=service)
            assert r.status_code == 202
            await eventually(lambda: len(Hook.received) == 1, 10_000 * MS, what="the 80 % alert")
            [alert] = Hook.received
            assert (alert["tenant"], alert["metric"], alert["threshold"], alert["used"]) == (
                TENANT,
                "messages",
                80,
                included * 8 // 10,
            )
            with psycopg.connect(dsn, autocommit=True) as conn:  # another process used the rest
                conn.execute(
                    "update _realtime.usage set messages = messages + %s where tenant = %s and hour = 0",
                    (included // 5, TENANT),
                )
            await eventually(lambda: len(Hook.received) == 2, 10_000 * MS, what="the 100 % alert")
            assert Hook.received[1]["threshold"] == 100
            for threshold in ("80", "100"):
                alerts = metric(server.http_url, "realtime_usage_quota_alerts_total", threshold=threshold)
                assert alerts == 1
            # Counted once the hook's answer is read, just after it recorded the body.
            await eventually(
                lambda: metric(server.http_url, "realtime_usage_alert_webhooks_sent_total") == 2, what="2 sent"
            )
            bill = httpx.get(f"{server.http_url}/admin/v1/tenants/{TENANT}/bill", headers=admin_headers()).json()
            # Exactly at the quota: used up (connects refused), not past it (not restricted).
            assert bill["plan"] == "free" and bill["so_far"]["restricted"] is False
            assert bill["quota"]["messages"] == {"used": included, "included": included, "percent": 100.0}
            refused = await connect_refused(server.socket_url(make_token()))
            assert refused.status == 429
            assert refused.json()["error"].startswith("MessageQuotaExceeded: ")
        finally:
            server.stop()
        # Once per cycle and threshold, across a restart too.
        server = start_server(dsn, env)
        try:
            httpx.post(f"{server.http_url}/api/broadcast/q/events/e", json={}, headers=service)
            with psycopg.connect(dsn) as conn:
                sent = conn.execute("select count(*) from _realtime.usage_alerts").fetchone()[0]
            assert sent == 2
        finally:
            server.stop()
    hook.shutdown()
    hook.server_close()
    assert len(Hook.received) == 2


# -- the endpoints ----------------------------------------------------------------------------------


@pytest.mark.pg
async def test_bad_usage_queries_get_422_naming_the_field(server):
    url = f"{server.http_url}/admin/v1/tenants/{TENANT}/usage"
    for params, field in (
        ({"from": "2026-13-01"}, "from"),
        ({"from": "2026-12-06", "to": "2026-12-01"}, "to"),
        ({"from": "2024-01-01", "to": "2026-01-01"}, "to"),
        ({"granularity": "minute"}, "granularity"),
    ):
        r = httpx.get(url, params=params, headers=admin_headers())
        assert r.status_code == 422, (params, r.text)
        assert field in r.json()["errors"], r.json()
    assert httpx.get(f"{server.http_url}/admin/v1/tenants/nope/usage", headers=admin_headers()).status_code == 404
    hourly = httpx.get(
        url, params={"granularity": "hour", "from": "2026-12-01", "to": "2026-12-02"}, headers=admin_headers()
    )
    assert hourly.status_code == 200
    body = hourly.json()
    assert (len(body["hours"]) == 48 and "days" not in body) or body.get("days") is None


@pytest.mark.pg
async def test_an_organization_bill_sums_messages_and_peaks_of_its_tenants(pg_dsn):
    env = {"REALTIME_USAGE_FLUSH_INTERVAL_MS": "60000"}
    with scratch_database(pg_dsn) as dsn:
        server = start_server(dsn, env)
        server.stop()
        today = datetime.now(UTC).date()
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(
                "insert into _realtime.tenants (external_id, name, jwt_secret, plan)"
                " values ('second', 'second', 'x', 'pro')"
            )
            conn.execute("update _realtime.tenants set organization = 'acme', plan = 'pro'")
            for tid, messages, peak in ((TENANT, 6_000_000, 900), ("second", 2_500_000, 800)):
                conn.execute("insert into _realtime.usage values (%s, %s, 0, 'broadcast', %s)", (tid, today, messages))
                conn.execute("insert into _realtime.usage_peaks values (%s, %s, 0, %s)", (tid, today, peak))
        server = start_server(dsn, env)
        try:
            r = httpx.get(f"{server.http_url}/admin/v1/organizations/acme/bill", headers=admin_headers())
            assert r.status_code == 200, r.text
            bill = r.json()
            assert sorted(t["tenant"] for t in bill["tenants"]) == sorted([TENANT, "second"])
            assert bill["quota"]["messages"]["used"] == 8_500_000
            assert bill["quota"]["peak_connections"]["used"] == 1_700
            # The published examples, together: 8.5M messages → $10, 1,700 peak connections → $20.
            assert bill["so_far"]["total_usd"] == 30.0
            # The stored hour is within the last 24 hours: its rate carries on to the cycle's end.
            assert bill["window"]["messages"] == 8_500_000 and bill["window"]["seconds"] > 0
            assert bill["projected"]["lines"][0]["used"] >= 8_500_000
            assert [t["projected_messages"] >= t["messages"] for t in bill["tenants"]] == [True, True]
            assert (
                httpx.get(f"{server.http_url}/admin/v1/organizations/none/bill", headers=admin_headers()).status_code
                == 404
            )
        finally:
            server.stop()


# -- through the hub: deliveries counted once per publication, refused ones not -------------------


async def test_the_hub_reports_deliveries_by_kind_and_nothing_while_the_events_limit_is_reached():
    clock = Clock(T0)
    meter = UsageMeter(clock)
    hub = Hub()
    hub.attach(meter)
    t = tenant("t1", limits=Limits(max_events_per_second=1_000))
    key = StreamKey("t1", False, "room")
    sender, *others = [Subscriber(codec) for codec in (V2_CODEC, V2_CODEC, V1)]
    for sub in (sender, *others):
        hub.subscribe(key, sub)  # type: ignore[arg-type]
    hub.accepted(t, "broadcast", key, 1)
    assert hub.publish(t, key, Publication("realtime:room", "broadcast", b"{}"), 100.0, exclude=sender) == 2
    hub.publish(t, key, Publication("realtime:room", "broadcast", b"{}", kind="rest"), 100.0)
    assert meter.cycle_usage(t) == (1 + 2 + 3, 0)
    # Egress: every frame queued on a receiver, WebSocket header included, by kind.
    queued = {kind: 0 for kind in ("broadcast", "rest")}
    for sub in (sender, *others):
        for i, frame in enumerate(sub.conn.frames):
            queued["rest" if i == len(sub.conn.frames) - 1 else "broadcast"] += len(frame)
    [row] = await meter.read("t1", date(2026, 12, 6), date(2026, 12, 6), hourly=False)
    assert row["egress_bytes"] == {**dict.fromkeys(EGRESS_KINDS, 0), **queued}
    t.events.add(10**9, 100.0)  # once its bucket ends, the events/s limit is reached: nothing is delivered
    assert hub.publish(t, key, Publication("realtime:room", "broadcast", b"{}"), 100.0 + BUCKET_SECONDS) == 0
    assert meter.cycle_usage(t) == (6, 0)
