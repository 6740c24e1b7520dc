"""The admin client's cluster views (console/client.py): on one process they answer what the
per-process views answer, plus the node; on a real 2-node cluster (the machine's Redis) they
list the subscribers of both nodes, and a disconnect or a channel shutdown asked of one node
reaches the other."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from cluster import cluster_env, needs_redis, nodes, start_workers, worker_pids
from conftest import admin_token, scratch_database
from console_traffic import Traffic, until

from console.client import AdminApiError, AdminClient

TOPIC = "console:cluster"


@pytest.fixture
def admin(server) -> Iterator[AdminClient]:
    with AdminClient(server.http_url, admin_token()) as client:
        yield client


def _without(row: dict, *names: str) -> dict:
    return {k: v for k, v in row.items() if k not in names}


@pytest.mark.pg
def test_on_one_process_the_cluster_views_answer_as_the_process_does(server, admin):
    tenant = admin.tenants()[0].id
    with Traffic(server) as traffic:
        traffic.join(TOPIC, key="alice", meta={"status": "online"})
        traffic.join(TOPIC)
        traffic.broadcast(TOPIC, "hello", {"n": 1})
        until(lambda: (TOPIC, "hello", {"n": 1}) in traffic.received, "the broadcast")

        [node] = admin.nodes()
        assert (node.pid, node.alive, node.died_at) == (server.proc.pid, True, None)
        assert node.address is not None and node.address.endswith(f":{server.port}")
        cluster = admin.cluster()
        assert (cluster.name, cluster.nodes) == (None, 1)
        assert cluster.to_frame().set_index("tenant").loc[tenant, "connections"] >= 2
        assert list(cluster.nodes_frame(tenant)["node"]) == [node.id]

        def same(rows: list, cluster_rows: list, *extra: str) -> bool:
            return [r.to_dict() for r in rows] == [_without(r.to_dict(), *extra) for r in cluster_rows]

        # Read until nothing moved between the two reads (rates are per second).
        until(
            lambda: same(admin.channels(tenant, sort="topic"), admin.cluster_channels(tenant, sort="topic"), "by_node"),
            "the same channels",
        )
        rows = admin.cluster_channels(tenant, sort="topic", private=False)
        row = next(r for r in rows if r.topic == TOPIC)
        assert (row.subscribers, row.presence, row.by_node) == (2, 1, {node.id: 2})
        assert all(r.private for r in admin.cluster_channels(tenant, private=True))
        detail, here = admin.cluster_channel(tenant, TOPIC), admin.channel(tenant, TOPIC)
        assert (detail.subscribers, detail.presence, detail.fan_out) == (here.subscribers, here.presence, here.fan_out)
        assert [_without(s, "node") for s in detail.subscriber_list] == here.subscriber_list
        assert {s["node"] for s in detail.subscriber_list} == {node.id}

        until(
            lambda: same(admin.connections(tenant, limit=500), admin.cluster_connections(tenant, limit=500), "node"),
            "the same connections",
        )
        assert {c.node for c in admin.cluster_connections(tenant)} == {node.id}

        errors, cluster_errors = admin.errors(tenant), admin.cluster_errors(tenant)
        assert errors.data == [_without(r, "node") for r in cluster_errors.data]
        assert (errors.counts, errors.per_minute) == (cluster_errors.counts, cluster_errors.per_minute)
        assert cluster_errors.by_node == {node.id: errors.counts}

        series, cluster_series = admin.timeseries(tenant, window="1h"), admin.cluster_timeseries(tenant, window="1h")
        assert cluster_series.extra["series_names"] == series.extra["series_names"]
        assert set(cluster_series.series) == set(series.series) and cluster_series.extra["nodes"] == [node.id]


def _connection(admin: AdminClient, tenant: str, node: str, topic: str) -> str:
    return until(
        lambda: next(
            (c.id for c in admin.cluster_connections(tenant) if c.node == node and c.topics[0]["topic"] == topic), None
        ),
        f"a connection on {node}",
    )


@needs_redis
@pytest.mark.pg
@pytest.mark.redis
def test_the_cluster_views_list_both_nodes_and_actions_reach_the_other_node(pg_dsn):
    with (
        scratch_database(pg_dsn) as url,
        nodes(url, cluster_env(), 2) as (first, second),
        AdminClient(first.http_url, admin_token()) as admin,
        Traffic(first) as here,
        Traffic(second) as there,
    ):
        tenant = admin.tenants()[0].id
        until(lambda: [n.alive for n in admin.nodes()] == [True, True], "two live nodes")
        ids = {n.pid: n.id for n in admin.nodes()}
        near, far = ids[first.proc.pid], ids[second.proc.pid]
        for topic in (TOPIC, "console:kick"):
            here.join(topic)
            there.join(topic)

        until(lambda: {c.node for c in admin.cluster_connections(tenant)} == {near, far}, "both nodes' clients")
        row = until(
            lambda: next((r for r in admin.cluster_channels(tenant) if r.topic == TOPIC and r.subscribers == 2), None),
            "both nodes' subscribers",
        )
        assert row.by_node == {near: 1, far: 1}
        assert [r.subscribers for r in admin.channels(tenant) if r.topic == TOPIC] == [1]  # the process alone
        subscribers = admin.cluster_channel(tenant, TOPIC).subscriber_list
        assert sorted(s["node"] for s in subscribers) == sorted([near, far])
        assert admin.cluster().nodes == 2

        far_conn = _connection(admin, tenant, far, "console:kick")
        with pytest.raises(AdminApiError) as refused:
            admin.disconnect(tenant, "no-such-connection")
        assert refused.value.status == 404
        done = admin.disconnect(tenant, far_conn)
        assert (done.id, done.close_code, done.extra["node"]) == (far_conn, 1012, far)
        until(lambda: far_conn not in {c.id for c in admin.cluster_connections(tenant)}, "the far disconnect")
        assert len(admin.cluster_connections(tenant)) == 3

        shut = admin.shutdown_channel(tenant, TOPIC)
        assert shut == {"closed": 2, "message": "Server requested disconnect"}
        until(lambda: TOPIC not in {r.topic for r in admin.cluster_channels(tenant) if r.subscribers}, "shut")


@needs_redis
@pytest.mark.pg
@pytest.mark.redis
def test_behind_one_port_every_worker_answers_for_both(pg_dsn):
    with scratch_database(pg_dsn) as url:
        server = start_workers(url, cluster_env(), 2)
        try:
            with AdminClient(server.http_url, admin_token()) as admin, Traffic(server) as traffic:
                tenant = admin.tenants()[0].id
                pids = set(worker_pids(server))
                until(lambda: {n.pid for n in admin.nodes() if n.alive} == pids, "both workers live")
                # The kernel spreads the connections over the workers: join until both have some.
                for _ in range(40):
                    traffic.join(TOPIC)
                    if len({c.node for c in admin.cluster_connections(tenant)}) == 2:
                        break
                rows = admin.cluster_connections(tenant)
                assert len({c.node for c in rows}) == 2, "every connection landed on one worker"
                assert admin.cluster_channels(tenant)[0].subscribers == len(rows)
                # Each DELETE lands on either worker: every one must reach the connection's own.
                done = [admin.disconnect(tenant, c.id) for c in rows]
                assert [d.extra["node"] for d in done] == [c.node for c in rows]
                until(lambda: not admin.cluster_connections(tenant), "every connection closed")
        finally:
            server.stop()
