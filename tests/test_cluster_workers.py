"""`realtime-core serve --workers N` (cluster/workers.py): N processes on one port, one cluster on Redis."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys

import httpx
import pytest
from cluster import (
    channel,
    cluster_env,
    needs_redis,
    shard_subscribers,
    start_workers,
    wait_subscribers,
    worker_pids,
)
from conftest import MS, ROOT, make_token
from wire import V1, Frame, RawClient, eventually

from realtime_core.metrics import parse_samples

DELIVERY = 5_000 * MS
SOCKETS = 12  # all on one worker by chance: 2 ** -11


def test_more_than_one_worker_needs_redis():
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    done = subprocess.run(
        [sys.executable, "-m", "realtime_core", "serve", "--port", "0", "--workers", "2"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2
    assert "--workers above 1 needs REDIS_URL (or --redis URL)" in done.stderr


def node_of_a_new_connection(http_url: str) -> str:
    """The node id of the worker a new connection lands on (its /metrics)."""
    with httpx.Client() as client:  # a connection of its own
        text = client.get(f"{http_url}/metrics").text
    return next(s.labels["node"] for s in parse_samples(text) if s.name == "realtime_cluster_node_info")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.pg
@pytest.mark.redis
@needs_redis
async def test_two_workers_share_one_port_and_broadcasts_cross_them(fresh_database, topic):
    env = cluster_env()
    server = start_workers(fresh_database, env, 2)
    clients: list[RawClient] = []
    try:
        pids = worker_pids(server)
        assert len(set(pids)) == 2
        seen: set[str] = set()
        for _ in range(200):
            seen.add(await asyncio.to_thread(node_of_a_new_connection, server.http_url))
            if len(seen) == 2:
                break
        assert len(seen) == 2, "every connection landed on one worker"

        clients = [await RawClient.open(server.socket_url(make_token(), V1), V1) for _ in range(SOCKETS)]
        joins = [await client.join(f"realtime:{topic}") for client in clients]
        # Both workers listen on the topic's channel: each has sockets of its own on it.
        await asyncio.to_thread(wait_subscribers, env["REDIS_URL"], channel(env, topic), 2)
        payload = {"type": "broadcast", "event": "m", "payload": {"n": 1}}
        await clients[0].push(f"realtime:{topic}", "broadcast", payload, join_ref=joins[0].ref)
        for client in clients[1:]:
            frame = await client.expect_event(f"realtime:{topic}", "broadcast", DELIVERY)
            assert frame.payload == payload
            await client.nothing_pending(lambda f: isinstance(f, Frame) and f.event == "broadcast")
        await clients[0].nothing_pending(lambda f: isinstance(f, Frame) and f.event == "broadcast")
    finally:
        for client in clients:
            await client.close()
        assert server.stop(signal.SIGTERM) == 0, server.log()
    await eventually(lambda: not any(alive(pid) for pid in pids), DELIVERY, "every worker stopped")


@pytest.mark.pg
@pytest.mark.redis
@needs_redis
async def test_a_dead_worker_is_logged_and_restarted(fresh_database):
    server = start_workers(fresh_database, cluster_env(), 2)
    try:
        first, second = worker_pids(server)
        os.kill(second, signal.SIGKILL)
        await eventually(lambda: "restarting worker 1" in server.log(), 10_000 * MS, "the restart")
        assert f"worker 1 (pid {second}) exited with status -9" in server.log()
        await eventually(
            lambda: server.log().count("[worker 1] realtime-core") >= 2, 30_000 * MS, "the new worker listening"
        )
        assert alive(first)
        assert server.proc.poll() is None
    finally:
        assert server.stop(signal.SIGTERM) == 0, server.log()


@pytest.mark.pg
@pytest.mark.redis
@needs_redis
async def test_workers_share_the_secrets_generated_into_the_data_dir(fresh_database, tmp_path, topic):
    """Without REALTIME_JWT_SECRET and DB_ENC_KEY, every worker uses the secrets kept in the data dir:
    a token signed with its JWT secret is good on each. (The race of workers generating them at once
    is avoided by the parent making them first; how close the starts fall is not controlled here.)"""
    env = {**cluster_env(), "REALTIME_DATA_DIR": str(tmp_path)}
    server = start_workers(fresh_database, env, 2, without=("REALTIME_JWT_SECRET", "DB_ENC_KEY"))
    clients: list[RawClient] = []
    try:
        secret = (tmp_path / "jwt_secret").read_text().strip()
        token = make_token(secret=secret)
        clients = [await RawClient.open(server.socket_url(token, V1), V1) for _ in range(SOCKETS)]
        for client in clients:
            await client.join(f"realtime:{topic}")
        # Sockets on both workers joined with the one secret.
        assert shard_subscribers(env["REDIS_URL"], channel(env, topic)) == 2
        assert not [line for line in server.output if "exited with status" in line], server.log()
    finally:
        for client in clients:
            await client.close()
        assert server.stop(signal.SIGTERM) == 0, server.log()


@pytest.mark.pg
def test_workers_that_cannot_reach_redis_stop_everything_with_the_reason(fresh_database):
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    command = [sys.executable, "-m", "realtime_core", "serve", "--port", "0", "--workers", "2"]
    done = subprocess.run(
        [*command, "--redis", "redis://127.0.0.1:1/0"],
        cwd=ROOT,
        env={**env, "DATABASE_URL": fresh_database, "LOG_LEVEL": "info"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 1, output
    assert "REDIS_URL redis://127.0.0.1:1/0 does not answer" in output
    assert "died 3 times right after starting: stopping them all" in output
    assert "Traceback" not in output
