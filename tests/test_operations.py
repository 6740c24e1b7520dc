"""README "Operations" features end to end: `/metrics` behind METRICS_JWT_SECRET, and the
replication slot's lag alert (REALTIME_SLOT_LAG_ALERT_BYTES, REALTIME_SLOT_LAG_POLICY).

The slot tests hold a transaction open (a logical slot cannot move its restart
point past a transaction still running) and write WAL past the threshold, so
the slot retains it for certain; the server checks the slot every 10 s."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import psycopg
import pytest
from conftest import JWT_SECRET, MS, make_token, published_table
from psycopg import sql
from wire import V2, Frame, RawClient, eventually

from realtime_core.metrics import parse_samples

pytestmark = pytest.mark.pg

METRICS_SECRET = "metrics-secret-" + "m" * 32
ALERT_BYTES = 4 * 1024 * 1024
# The slot is checked when it is ready and then every 10 s (CdcSettings.health_interval).
HEALTH_WAIT = 20_000 * MS


def get_metrics(http_url: str, authorization: str | None = None) -> httpx.Response:
    headers = {"authorization": authorization} if authorization is not None else {}
    return httpx.get(f"{http_url}/metrics", headers=headers)


async def test_metrics_need_a_bearer_token_signed_with_the_metrics_secret(server_factory):
    srv = server_factory({"METRICS_JWT_SECRET": METRICS_SECRET})
    good = make_token(role=None, exp_in=None, secret=METRICS_SECRET)
    refused = {
        "no header": None,
        "not a bearer": f"Basic {good}",
        "bare bearer": "Bearer",
        "the tenant's secret": f"Bearer {make_token(secret=JWT_SECRET)}",
        "expired": f"Bearer {make_token(exp_in=-60, secret=METRICS_SECRET)}",
        "not a JWT": "Bearer abc.def.ghi",
    }
    for what, authorization in refused.items():
        response = get_metrics(srv.http_url, authorization)
        # Upstream's check_auth (router.ex) answers every failure 403 with an empty body.
        assert (response.status_code, response.content) == (403, b""), what
    response = get_metrics(srv.http_url, f"Bearer {good}")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    connected = [s for s in parse_samples(response.text) if s.name == "realtime_connections_connected"]
    assert [s.labels for s in connected] == [{"tenant": "realtime-dev"}], response.text
    # role and exp are optional; a valid exp is accepted.
    fresh = make_token(role=None, exp_in=60, secret=METRICS_SECRET)
    assert get_metrics(srv.http_url, f"Bearer {fresh}").status_code == 200


async def test_metrics_are_open_without_a_metrics_secret(server):
    response = get_metrics(server.http_url)
    assert response.status_code == 200
    assert "realtime_connections_connected" in response.text


def labelled(http_url: str, name: str) -> float | None:
    """The value of `name{tenant=...}` on /metrics, or None when absent."""
    found = [s.value for s in parse_samples(get_metrics(http_url).text) if s.name == name and s.labels]
    return float(found[0]) if found else None


def slot_row(dsn: str, slot: str) -> tuple[Any, ...] | None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return conn.execute(
            "select restart_lsn::text, confirmed_flush_lsn::text from pg_replication_slots where slot_name = %s",
            (slot,),
        ).fetchone()


def write_wal(db: psycopg.Connection[Any], nbytes: int) -> None:
    """Write about `nbytes` of WAL into a table outside the publication."""
    db.execute("create table if not exists wal_filler (blob text)")
    rows = nbytes // 1000 + 1
    # md5 chains do not compress (TOAST would shrink a repeat()).
    db.execute(
        "insert into wal_filler select string_agg(md5(i::text || j::text), '') from generate_series(1, %s) i,"
        " generate_series(1, 32) j group by i",
        (rows,),
    )


async def held_insert(dsn: str, table: str, row_id: int) -> psycopg.AsyncConnection[Any]:
    """A connection whose open transaction inserted `row_id` into `table`: commit or close it later."""
    conn = await psycopg.AsyncConnection.connect(dsn)
    await conn.execute(sql.SQL("insert into {} values (%s, 'held')").format(sql.Identifier(table)), (row_id,))
    return conn


async def subscribe(client: RawClient, table: str) -> None:
    """Subscribe to the table's inserts and wait until the subscription is live."""
    changes = [{"event": "INSERT", "schema": "public", "table": table}]
    await client.join("realtime:lag", {"postgres_changes": changes})
    system = await client.expect_event("realtime:lag", "system", 10_000 * MS)
    assert system.payload["message"] == "Subscribed to PostgreSQL", system.payload


async def next_change(client: RawClient, timeout: float = 5_000 * MS) -> dict[str, Any]:
    frame = await client.expect(lambda f: isinstance(f, Frame) and f.event == "postgres_changes", timeout)
    return frame.payload


def alert_logged(srv: Any) -> bool:
    return "ReplicationSlotLagTooHigh" in srv.log()


@contextlib.asynccontextmanager
async def lag_alerting(
    server_factory: Any, env: dict[str, str] | None = None
) -> AsyncIterator[tuple[Any, str, psycopg.Connection[Any], str, RawClient]]:
    """A server alerting past ALERT_BYTES (with `env` on top), its slot's name, a connection to its
    database, a published table and a client subscribed to its inserts, once the alert reads 0."""
    srv = server_factory({"REALTIME_SLOT_LAG_ALERT_BYTES": str(ALERT_BYTES), **(env or {})})
    slot = f"supabase_realtime_replication_slot_{srv.env['SLOT_NAME_SUFFIX']}"
    with psycopg.connect(srv.database_url, autocommit=True) as db:
        table = published_table(db, "id int primary key, note text", prefix="lag", grantees="anon")
        async with await RawClient.open(srv.socket_url(make_token(), V2), V2) as client:
            await subscribe(client, table)
            await eventually(lambda: labelled(srv.http_url, "realtime_replication_slot_lag_alert") == 0)
            yield srv, slot, db, table, client


@pytest.mark.slow
async def test_slot_lag_past_the_threshold_alerts_and_keeps_the_slot_and_its_changes(server_factory):
    async with lag_alerting(server_factory) as (srv, slot, db, table, client):
        assert not alert_logged(srv)
        assert 0 <= labelled(srv.http_url, "realtime_replication_slot_retained_wal_bytes") < ALERT_BYTES
        assert labelled(srv.http_url, "realtime_replication_slot_lag_bytes") is not None
        restart_before = slot_row(srv.database_url, slot)
        assert restart_before is not None

        held = await held_insert(srv.database_url, table, 1)
        try:
            write_wal(db, 2 * ALERT_BYTES)
            await eventually(lambda: alert_logged(srv), HEALTH_WAIT, "the ReplicationSlotLagTooHigh log")
            line = next(x for x in srv.log().splitlines() if "ReplicationSlotLagTooHigh" in x)
            assert f"slot {slot} retains" in line and f"(threshold {ALERT_BYTES}, policy keep)" in line, line
            assert labelled(srv.http_url, "realtime_replication_slot_lag_alert") == 1
            assert labelled(srv.http_url, "realtime_replication_slot_retained_wal_bytes") > ALERT_BYTES
            await held.commit()
        finally:
            await held.close()

        # keep: the slot is the same one and the change it retained is delivered.
        change = await next_change(client)
        assert change["data"]["record"] == {"id": 1, "note": "held"}
        assert slot_row(srv.database_url, slot) is not None
        assert "dropped replication slot" not in srv.log()


@pytest.mark.slow
async def test_slot_lag_with_policy_drop_recreates_the_slot_losing_what_it_retained(server_factory):
    async with lag_alerting(server_factory, {"REALTIME_SLOT_LAG_POLICY": "drop"}) as (srv, slot, db, table, client):
        held = await held_insert(srv.database_url, table, 1)
        try:
            write_wal(db, 2 * ALERT_BYTES)
            await eventually(
                lambda: "dropped replication slot" in srv.log(), HEALTH_WAIT, "the slot drop of policy drop"
            )
            assert alert_logged(srv)
            line = next(x for x in srv.log().splitlines() if "ReplicationSlotLagTooHigh" in x)
            assert "policy drop" in line, line
            # The new slot waits for the transaction that was running to end.
            await held.commit()
        finally:
            await held.close()

        started = time.monotonic()
        await eventually(lambda: slot_row(srv.database_url, slot) is not None, 10_000 * MS, "the new slot")
        # Changes committed from now on are streamed again; the held row,
        # committed before the new slot's starting point, is lost.
        deadline = started + 10_000 * MS
        row_id = 2
        while True:
            db.execute(sql.SQL("insert into {} values (%s, 'after')").format(sql.Identifier(table)), (row_id,))
            try:
                change = await next_change(client, 1_000 * MS)
                break
            except AssertionError:
                # Inserted before the new slot was consistent: lost as well.
                assert time.monotonic() < deadline, "no change delivered after the slot was recreated"
                row_id += 1
        assert change["data"]["record"] == {"id": row_id, "note": "after"}
