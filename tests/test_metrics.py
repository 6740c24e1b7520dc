"""GET /metrics (realtime_core.metrics): upstream's series after real traffic from the official Python
client, their types, exact counts, the text format read back by parse_samples, and METRICS_JWT_SECRET."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from conftest import MS, make_token, messages_policy, published_table
from fakes import make_app
from prometheus_client.parser import text_string_to_metric_families
from realtime import AsyncRealtimeClient, RealtimeSubscribeStates
from test_hub import Subscriber
from test_postgres_changes import run
from wire import eventually

from bench.private import histogram_delta
from realtime_core.hub import PRESENCE_KIND, Publication, StreamKey
from realtime_core.metrics import PAYLOAD_SIZE_BUCKETS, parse_samples
from realtime_core.protocol import V2

TENANT = "realtime-dev"
SUBSCRIBED = RealtimeSubscribeStates.SUBSCRIBED
CHANNEL_ERROR = RealtimeSubscribeStates.CHANNEL_ERROR

# Upstream's series (OBSERVABILITY_METRICS.md) and the type each is exposed with: upstream's counters
# keep their exact names (no `_total`) as untyped families.
UPSTREAM_TYPES = {
    "realtime_connections_connected": "gauge",
    "realtime_connections_global_connected": "gauge",
    "realtime_tenants_connected": "gauge",
    "realtime_channel_events": "unknown",
    "realtime_channel_presence_events": "unknown",
    "realtime_channel_db_events": "unknown",
    "realtime_channel_joins": "unknown",
    "realtime_channel_global_events": "unknown",
    "realtime_channel_global_presence_events": "unknown",
    "realtime_channel_global_db_events": "unknown",
    "realtime_channel_global_joins": "unknown",
    "realtime_channel_error": "unknown",
    "realtime_channel_global_error": "unknown",
    "realtime_payload_size": "histogram",
    "realtime_tenants_payload_size": "histogram",
    "realtime_tenants_read_authorization_check": "histogram",
    "realtime_tenants_write_authorization_check": "histogram",
    "realtime_replication_slot_lag_bytes": "gauge",
}


def scrape(http_url: str, **headers: str) -> str:
    response = httpx.get(f"{http_url}/metrics", headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    return response.text


def values(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of `text` by (name, labels)."""
    return {(s.name, frozenset(s.labels.items())): s.value for s in parse_samples(text)}


def value(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


@pytest.fixture
async def clients(cdc) -> AsyncIterator[Callable[[], AsyncRealtimeClient]]:
    made: list[AsyncRealtimeClient] = []

    def make() -> AsyncRealtimeClient:
        client = AsyncRealtimeClient(cdc.ws_url, make_token(role="authenticated"), auto_reconnect=False)
        made.append(client)
        return client

    yield make
    for client in made:
        await client.close()


def options(*, key: str = "", presence: bool = False, private: bool = False, self: bool = False) -> dict[str, Any]:
    return {
        "config": {
            "broadcast": {"ack": False, "self": self},
            "presence": {"key": key, "enabled": presence},
            "private": private,
        }
    }


async def subscribe(client: AsyncRealtimeClient, topic: str, params: dict[str, Any], setup=None) -> Any:
    """Subscribe and return the channel and the states its subscribe callback saw."""
    channel = client.channel(topic, params)
    if setup is not None:
        setup(channel)
    states: list[RealtimeSubscribeStates] = []
    await channel.subscribe(lambda state, error: states.append(state))
    return channel, states


@pytest.mark.pg
async def test_upstream_series_count_a_scripted_mix_of_traffic(cdc, db, clients, topic):
    table = published_table(db, "id int primary key, title text")
    private, denied = f"{topic}-private", f"{topic}-denied"
    messages_policy(db, "select", f"realtime.topic() = '{private}'")
    messages_policy(db, "insert", f"realtime.topic() = '{private}'")
    alice, bob = clients(), clients()
    to_alice: list[Any] = []
    to_bob: list[Any] = []
    changes: list[Any] = []
    ready = asyncio.Event()

    def alice_listens(channel: Any) -> None:
        channel.on_broadcast("*", to_alice.append)
        channel.on_postgres_changes("INSERT", schema="public", table=table, callback=changes.append)
        channel.on_system(lambda payload: ready.set())

    # Two public joins, each with presence; alice also listens to a table's inserts.
    room, states = await subscribe(alice, topic, options(key="alice", presence=True), alice_listens)
    assert states == [SUBSCRIBED]
    await asyncio.wait_for(ready.wait(), 10_000 * MS)  # "Subscribed to PostgreSQL"
    _, states = await subscribe(
        bob, topic, options(key="bob", presence=True), lambda ch: ch.on_broadcast("*", to_bob.append)
    )
    assert states == [SUBSCRIBED]
    # Two broadcasts from alice reach bob (not alice: self is off).
    for n in range(2):
        await room.send_broadcast("msg", {"n": n})
    await eventually(lambda: len(to_bob) == 2, what="both broadcasts at bob")
    # One presence track: its diff reaches both.
    await room.track({"status": "online"})
    bob_room = bob.channels[f"realtime:{topic}"]
    await eventually(lambda: "alice" in room.presence_state() and "alice" in bob_room.presence_state(), what="diffs")
    # One Postgres change reaches alice.
    run(db, "insert into {t} values (1, 'a')", table)
    await eventually(lambda: len(changes) == 1, what="the insert at alice")
    # A private join its read policy allows (a read check), and a broadcast there (a write check)
    # that alice receives herself.
    own: list[Any] = []
    locked, states = await subscribe(
        alice, private, options(private=True, self=True), lambda ch: ch.on_broadcast("*", own.append)
    )
    assert states == [SUBSCRIBED]
    await locked.send_broadcast("secret", {"n": 3})
    await eventually(lambda: len(own) == 1, what="alice's own private broadcast")
    # A private join its policies deny: a read check and a refused join with code Unauthorized.
    refused, states = await subscribe(bob, denied, options(private=True))
    assert states == [CHANNEL_ERROR]
    await refused.unsubscribe()  # before the client's 1 s rejoin

    # Replication lag per tenant: the slot's health is read once the slot exists.
    def lag() -> float | None:
        return value(values(scrape(cdc.http_url)), "realtime_replication_slot_lag_bytes", tenant=TENANT)

    await eventually(lambda: lag() is not None, what="the slot's lag")
    assert lag() >= 0  # type: ignore[operator]

    text = scrape(cdc.http_url)
    types = {family.name: family.type for family in text_string_to_metric_families(text)}
    assert {name: types.get(name) for name in UPSTREAM_TYPES} == UPSTREAM_TYPES
    got = values(text)
    counts = {
        ("realtime_connections_connected", TENANT): 2,
        ("realtime_channel_events", TENANT): 3,  # 2 at bob, 1 at alice on the private channel
        ("realtime_channel_presence_events", TENANT): 2,
        ("realtime_channel_db_events", TENANT): 1,
        ("realtime_channel_joins", TENANT): 4,
        ("realtime_connections_global_connected", None): 2,
        ("realtime_tenants_connected", None): 1,
        ("realtime_channel_global_events", None): 3,
        ("realtime_channel_global_presence_events", None): 2,
        ("realtime_channel_global_db_events", None): 1,
        ("realtime_channel_global_joins", None): 4,
    }
    assert {
        (name, tenant): value(got, name, **({"tenant": tenant} if tenant else {})) for name, tenant in counts
    } == counts
    assert value(got, "realtime_channel_error", code="Unauthorized", tenant=TENANT) == 1
    assert value(got, "realtime_channel_global_error", code="Unauthorized") == 1
    # Checks: 2 reads (one per private join), 1 write (the private broadcast).
    assert value(got, "realtime_tenants_read_authorization_check_count", tenant=TENANT) == 2
    assert value(got, "realtime_tenants_write_authorization_check_count", tenant=TENANT) == 1
    # Payload sizes, once per message: 3 broadcasts, 1 presence diff, 1 change; all under 250 bytes.
    for message_type, count in (("broadcast", 3), ("presence", 1), ("postgres_changes", 1)):
        for name, labels in (
            ("realtime_payload_size", {"message_type": message_type}),
            ("realtime_tenants_payload_size", {"message_type": message_type, "tenant": TENANT}),
        ):
            assert value(got, f"{name}_count", **labels) == count, (name, message_type)
            assert value(got, f"{name}_bucket", **labels, le="250.0") == count, (name, message_type)
            assert 0 < value(got, f"{name}_sum", **labels) < 250 * count  # type: ignore[operator]
    # Process metrics from prometheus-client's collectors.
    assert value(got, "process_resident_memory_bytes") > 0  # type: ignore[operator]
    assert value(got, "process_open_fds") > 0  # type: ignore[operator]


async def test_the_exposition_reads_back_in_order_with_escapes_undone():
    app = make_app()
    app.metrics.join_started("t")
    app.metrics.join_refused('Odd"Code\\with\nnewline', "t")
    app.metrics.join_refused("TopicNameRequired", "t")
    text = app.metrics.render().decode()
    lines = [line for line in text.splitlines() if line and not line.startswith("#")]
    samples = parse_samples(text)
    assert [s.name for s in samples] == [line.split("{")[0].split(" ")[0] for line in lines]
    assert [float(s.value) for s in samples] == [float(line.rsplit(" ", 1)[1]) for line in lines]
    errors = {s.labels["code"]: s.value for s in samples if s.name == "realtime_channel_global_error"}
    assert errors == {'Odd"Code\\with\nnewline': 1, "TopicNameRequired": 1}  # escapes undone
    assert [s.value for s in samples if s.name == "realtime_channel_join_errors_total"] == [2]
    assert [s.value for s in samples if s.name == "realtime_channel_global_joins"] == [1]


def test_payload_size_buckets_are_upstreams():
    # tenant.ex PayloadSize.Buckets
    assert PAYLOAD_SIZE_BUCKETS == (250, 500, 1000, 3000, 5000, 10_000, 25_000, 100_000, 500_000, 1_000_000, 3_000_000)


async def test_payload_sizes_are_exact_across_seconds_and_kinds():
    """The hub tallies payloads by size each second; the exposition bins them exactly."""
    app = make_app()
    tenant = app.tenants.get(TENANT)
    assert tenant is not None
    key = StreamKey(TENANT, False, "room")
    app.hub.subscribe(key, Subscriber(V2))  # type: ignore[arg-type]
    sizes = [100, 100, 250, 251, 2_000, 600_000]
    for i, size in enumerate(sizes):
        publication = Publication("realtime:room", "e", b"x" * size)
        app.hub.publish(tenant, key, publication, app.now() + i * 0.6)  # across several seconds
    app.hub.publish(tenant, key, Publication("realtime:room", "p", b"x" * 300, kind=PRESENCE_KIND), app.now())
    samples = parse_samples(app.metrics.render().decode())

    def buckets(message_type: str) -> dict[str, float]:
        return {
            s.labels["le"]: s.value
            for s in samples
            if s.name == "realtime_tenants_payload_size_bucket" and s.labels["message_type"] == message_type
        }

    assert buckets("broadcast") == {
        "250.0": 3,
        "500.0": 4,
        "1000.0": 4,
        "3000.0": 5,
        "5000.0": 5,
        "10000.0": 5,
        "25000.0": 5,
        "100000.0": 5,
        "500000.0": 5,
        "1e+06": 6,
        "3e+06": 6,
        "+Inf": 6,
    }
    assert buckets("presence")["250.0"] == 0 and buckets("presence")["500.0"] == 1
    [total] = [
        s.value
        for s in samples
        if s.name == "realtime_tenants_payload_size_sum" and s.labels["message_type"] == "broadcast"
    ]
    assert total == sum(sizes)
    [events] = [s.value for s in samples if s.name == "realtime_channel_events" and s.labels["tenant"] == TENANT]
    assert events == len(sizes)


def test_a_histogram_reads_back_as_buckets_sum_and_count():
    text = """# TYPE x histogram
x_bucket{tenant="t",le="1.0"} 1
x_bucket{tenant="t",le="5.0"} 3
x_bucket{tenant="t",le="+Inf"} 4
x_sum{tenant="t"} 46.2
x_count{tenant="t"} 4
"""
    before = """# TYPE x histogram
x_bucket{tenant="t",le="1.0"} 1
x_bucket{tenant="t",le="5.0"} 1
x_bucket{tenant="t",le="+Inf"} 1
x_sum{tenant="t"} 0.2
x_count{tenant="t"} 1
"""
    read = histogram_delta(parse_samples(before), parse_samples(text), "x")
    assert read is not None
    assert read["count"] == 3
    assert read["mean_ms"] == pytest.approx((3.0 + 3.0 + 40.0) / 3, abs=1e-3)
    assert read["cumulative"]["+Inf"] == 3


def test_text_that_is_not_the_exposition_format_is_refused():
    with pytest.raises(ValueError):
        parse_samples('x{tenant="unterminated} 1\n')


METRICS_SECRET = "metrics-secret-" + "s" * 32


@pytest.mark.pg
async def test_metrics_secret_still_guards_the_exposition(server_factory):
    srv = server_factory({"METRICS_JWT_SECRET": METRICS_SECRET})
    assert httpx.get(f"{srv.http_url}/metrics").status_code == 403
    wrong = make_token(secret="not-the-metrics-secret-" + "x" * 32)
    assert httpx.get(f"{srv.http_url}/metrics", headers={"Authorization": f"Bearer {wrong}"}).status_code == 403
    good = make_token(role=None, exp_in=None, secret=METRICS_SECRET)
    text = scrape(srv.http_url, Authorization=f"Bearer {good}")
    assert value(values(text), "realtime_connections_connected", tenant=TENANT) == 0
