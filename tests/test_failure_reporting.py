"""Failures the client must be told about, end to end: a real database, `realtime-core serve`, raw clients.

- Postgres Changes params PostgreSQL cannot take (a NUL character) answer the
  usual subscription error instead of killing the subscribe task;
- a token whose `exp` is out of range is refused with upstream's text, not
  "Unknown Error on Channel";
- a private join while the tenant database is unreachable answers
  UnableToConnectToProject (transient), counted by code on /metrics.

Each test also checks that the server logged no lost task exception."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import jwt as pyjwt
import psycopg
import pytest
from conftest import JWT_SECRET, LOST_TASK, MS, make_token, published_table
from psycopg import sql
from wire import V1, V2, Frame, RawClient, connect_refused

from realtime_core.metrics import parse_samples

pytestmark = pytest.mark.pg


def assert_clean_log(server: Any) -> None:
    log = server.log()
    assert LOST_TASK not in log, log
    assert "Traceback" not in log, log


def is_pg_system(frame: Any) -> bool:
    return isinstance(frame, Frame) and frame.event == "system" and frame.payload.get("extension") == "postgres_changes"


def nul_error(table: str, filters: str = "[]") -> str:
    return (
        "Unable to subscribe to changes with given parameters. An exception happened so please check your "
        f"connect parameters: [event: *, schema: public, table: {table}, filters: {filters}, select: nil]. "
        'Exception: invalid byte sequence for encoding "UTF8": 0x00'
    )


# NUL characters in Postgres Changes params


@pytest.mark.parametrize(
    ("params", "table", "filters"),
    [
        ({"table": "todo\x00s"}, "todo\x00s", "[]"),
        # upstream's inspect/1 shows a binary holding NUL as its bytes
        ({"table": "{t}", "filter": "id=eq.1\x002"}, "{t}", '[{{"id", "eq", <<49, 0, 50>>}}]'),
    ],
)
async def test_a_nul_in_postgres_changes_params_is_reported_and_the_socket_keeps_working(
    cdc, db, params, table, filters
):
    good = published_table(db, "id int primary key")
    entry = {"event": "*", "schema": "public", **{k: v.format(t=good) for k, v in params.items()}}
    async with await RawClient.open(cdc.socket_url(make_token(), V2)) as client:
        await client.join("realtime:nul", {"postgres_changes": [entry]})
        frame = await client.expect(is_pg_system, 10_000 * MS)
        assert frame.payload == {
            "extension": "postgres_changes",
            "status": "error",
            "message": nul_error(table.format(t=good), filters.format(t=good)),
            "channel": "nul",
        }
        # The socket and the server's subscribing still work.
        await client.join("realtime:fine", {"postgres_changes": [{"event": "*", "schema": "public", "table": good}]})
        frame = await client.expect(is_pg_system, 10_000 * MS)
        assert frame.payload["status"] == "ok" and frame.topic == "realtime:fine"
    assert_clean_log(cdc)


async def test_a_nul_in_a_legacy_topic_is_reported(cdc, db):
    topic = "realtime:public:todo\x00s"
    async with await RawClient.open(cdc.socket_url(make_token(), V1), V1) as client:
        await client.push(topic, "phx_join", {}, ref="1")
        reply = await client.reply_to("1", topic)
        assert reply.status == "ok"
        frame = await client.expect(is_pg_system, 10_000 * MS)
        assert frame.payload == {
            "extension": "postgres_changes",
            "status": "error",
            "message": nul_error("todo\x00s"),
            "channel": "public:todo\x00s",
        }
    assert_clean_log(cdc)


async def test_a_nul_in_a_private_topic_is_refused_like_any_topic_the_policies_deny(cdc):
    # Upstream's probe insert fails in PostgreSQL, an RLS policy error: Unauthorized.
    async with await RawClient.open(cdc.socket_url(make_token("authenticated"), V2)) as client:
        reply = await client.join("realtime:a\x00b", {"private": True}, expect_ok=False)
        assert reply.response == {
            "reason": "Unauthorized: You do not have permissions to read from this Channel topic: a\x00b"
        }
        await client.join("realtime:public-still-works")
    assert_clean_log(cdc)


# Out-of-range numeric claims


@pytest.mark.parametrize("exp", [2**70, 1e308])
async def test_a_private_join_with_an_out_of_range_exp_is_refused_with_the_upstream_text(cdc, db, exp):
    async with await RawClient.open(cdc.socket_url(make_token(), V2)) as client:
        token = pyjwt.encode({"role": "authenticated", "exp": exp}, JWT_SECRET, algorithm="HS256")
        reply = await client.join("realtime:huge-exp", {"private": True}, access_token=token, expect_ok=False)
        assert reply.response == {"reason": "InvalidJWTToken: Token expiration time is invalid"}
    assert_clean_log(cdc)


async def test_a_connect_token_with_an_out_of_range_exp_is_refused(cdc):
    token = pyjwt.encode({"role": "anon", "exp": 2**70}, JWT_SECRET, algorithm="HS256")
    refused = await connect_refused(cdc.socket_url(token, V2))
    assert (refused.status, refused.json()) == (401, {"error": "The token provided is not a valid JWT"})


# An unreachable tenant database


def channel_errors(server: Any) -> dict[str, float]:
    """realtime_channel_global_error by code, from GET /metrics."""
    samples = parse_samples(httpx.get(f"{server.http_url}/metrics").text)
    return {s.labels["code"]: float(s.value) for s in samples if s.name == "realtime_channel_global_error"}


async def private_join(client: RawClient, topic: str) -> Frame:
    """A private join whose reply may wait for the authorization pool's 5 s timeout."""
    ref = client.next_ref()
    await client.push(topic, "phx_join", {"config": {"private": True}}, ref=ref, join_ref=ref)
    return await client.reply_to(ref, topic, 10_000 * MS)


@pytest.mark.slow
async def test_a_private_join_while_the_database_is_unreachable_is_a_transient_error(server_factory, pg_dsn):
    server = server_factory()
    dbname = psycopg.conninfo.conninfo_to_dict(server.database_url)["dbname"]
    with psycopg.connect(server.database_url, autocommit=True) as conn:
        conn.execute("create policy everyone on realtime.messages for select to authenticated using (true)")
    token = make_token("authenticated")
    async with await RawClient.open(server.socket_url(token, V2)) as client:
        await client.join("realtime:before", {"private": True})
        with psycopg.connect(pg_dsn, autocommit=True) as admin:
            admin.execute(sql.SQL("alter database {} allow_connections false").format(sql.Identifier(dbname)))
            try:
                admin.execute(
                    "select pg_terminate_backend(pid) from pg_stat_activity"
                    " where datname = %s and pid <> pg_backend_pid()",
                    (dbname,),
                )
                # The pooled connection is gone (the first join finds it broken), then no
                # new one can be made (the second waits for the pool, in vain).
                for topic in ("realtime:down-1", "realtime:down-2"):
                    reply = await private_join(client, topic)
                    assert reply.response == {
                        "reason": "UnableToConnectToProject: Realtime was unable to connect to the project database"
                    }
                assert channel_errors(server).get("UnableToConnectToProject") == 2
            finally:
                admin.execute(sql.SQL("alter database {} allow_connections true").format(sql.Identifier(dbname)))
        # Transient: once the database is back, private joins work again.
        deadline = asyncio.get_running_loop().time() + 30_000 * MS
        while True:
            reply = await private_join(client, "realtime:after")
            if reply.status == "ok":
                break
            assert reply.response["reason"].startswith("UnableToConnectToProject: "), reply.raw
            assert asyncio.get_running_loop().time() < deadline, "private joins did not recover"
    assert LOST_TASK not in server.log(), server.log()
