"""Helpers of the scale-out tests: the machine's Redis, a private one, and nodes of one cluster.

Every test gets a cluster name of its own (REALTIME_CLUSTER), so tests running at the same time
on the shared Redis at 127.0.0.1:6379 never see each other's channels."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator

import pytest
import redis
from conftest import BASE_ENV, JWT_SECRET, MS, ROOT, ServerProcess, start_server
from psycopg.conninfo import conninfo_to_dict

from realtime_core.cluster import codec
from realtime_core.config import Settings
from realtime_core.hub import StreamKey

__all__ = [
    "REDIS_URL",
    "TENANT",
    "PrivateRedis",
    "channel",
    "cluster_env",
    "needs_redis",
    "nodes",
    "shard_subscribers",
    "start_workers",
    "wait_subscribers",
    "worker_pids",
]

REDIS_URL = "redis://127.0.0.1:6379/0"
TENANT = Settings().tenant_name


def _redis_answers() -> bool:
    try:
        return bool(redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1).ping())
    except redis.RedisError:
        return False


needs_redis = pytest.mark.skipif(not _redis_answers(), reason="no Redis answers at 127.0.0.1:6379")


def cluster_env(redis_url: str = REDIS_URL) -> dict[str, str]:
    """The environment of the nodes of one new cluster."""
    return {"REDIS_URL": redis_url, "REALTIME_CLUSTER": f"test-{uuid.uuid4().hex[:10]}"}


def channel(env: dict[str, str], topic: str, private: bool = False) -> bytes:
    """The Redis channel of `topic` of the default tenant in the cluster of `env`."""
    return codec.channel(f"rt:{env['REALTIME_CLUSTER']}:", StreamKey(TENANT, private, topic))


def shard_subscribers(redis_url: str, name: bytes) -> int:
    """How many connections (one per node) listen on channel `name`."""
    client = redis.Redis.from_url(redis_url, socket_connect_timeout=1)
    try:
        return int(client.execute_command("PUBSUB", "SHARDNUMSUB", name)[1])
    finally:
        client.close()


def wait_subscribers(redis_url: str, name: bytes, count: int, timeout: float = 5_000 * MS) -> None:
    """Wait until `count` nodes listen on channel `name`."""
    deadline = time.monotonic() + timeout
    while (seen := shard_subscribers(redis_url, name)) != count:
        if time.monotonic() > deadline:
            raise AssertionError(f"{seen} node(s) listen on {name!r}, expected {count}")
        time.sleep(10 * MS)


@contextlib.contextmanager
def nodes(database_url: str, env: dict[str, str], count: int) -> Iterator[list[ServerProcess]]:
    """`count` nodes of the cluster of `env` on one database. Only the first streams the replication
    slots (a slot has one reader)."""
    started: list[ServerProcess] = []
    try:
        for index in range(count):
            extra = {} if index == 0 else {"REALTIME_DB_BROADCAST": "false", "REALTIME_POSTGRES_CHANGES": "false"}
            started.append(start_server(database_url, {**env, **extra}))
        yield started
    finally:
        for node in started:
            node.stop()
    for node in started:
        assert not node.lost_task_errors(), node.log()


class PrivateRedis:
    """A redis-server of the test's own on a free port, which the test may stop and restart."""

    def __init__(self) -> None:
        if shutil.which("redis-server") is None:
            pytest.fail("redis-server is not on PATH (the redis tests restart a private one)", pytrace=False)
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 5_000 * MS
        while True:
            try:
                if redis.Redis.from_url(self.url, socket_connect_timeout=0.2).ping():
                    return
            except redis.RedisError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(10 * MS)

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait()

    def freeze(self) -> None:
        """SIGSTOP: connections stay open and nothing answers, as in a network partition."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)

    def __enter__(self) -> PrivateRedis:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.process is not None and self.process.poll() is None:
            self.thaw()
            self.kill()


def start_workers(database_url: str, env: dict[str, str], workers: int, without: tuple[str, ...] = ()) -> ServerProcess:
    """`realtime-core serve --port 0 --workers N`, once its parent says every worker listens;
    `without`: variables left unset."""
    full_env = {**os.environ, **BASE_ENV, "DATABASE_URL": database_url, "REALTIME_JWT_SECRET": JWT_SECRET, **env}
    for name in without:
        full_env.pop(name, None)
    full_env["SLOT_NAME_SUFFIX"] = str(conninfo_to_dict(database_url).get("dbname", "postgres"))
    proc = subprocess.Popen(
        [sys.executable, "-m", "realtime_core", "serve", "--port", "0", "--workers", str(workers)],
        cwd=ROOT,
        env=full_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    output: list[str] = []
    found = threading.Event()
    port: list[int] = []

    def drain() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            output.append(line)
            m = re.match(rf"realtime-core \S+ listening on http://[\d.]+:(\d+) with {workers} workers", line)
            if m:
                port.append(int(m.group(1)))
                found.set()
        found.set()

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    if not found.wait(60_000 * MS) or not port:
        proc.kill()
        proc.wait()
        reader.join(5)
        raise RuntimeError("the workers did not start:\n" + "".join(output))
    return ServerProcess(proc, port[0], database_url, full_env, output, reader)


def worker_pids(server: ServerProcess) -> list[int]:
    """The pids the parent announced."""
    line = next(line for line in server.output if " workers (pids " in line)
    return [int(pid) for pid in re.search(r"\(pids ([\d ]+)\)", line).group(1).split()]  # type: ignore[union-attr]
