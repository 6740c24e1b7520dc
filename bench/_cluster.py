"""Our server scaled out, for bench/fanout.py's `--workers N` and `bench cluster`.

- PrivateRedis: a redis-server of the bench's own on a free port (no persistence), whose CPU
  the bench reads from /proc by its pid. `--redis URL` uses another one instead (its CPU is
  then not measured).
- Workers: `realtime-core serve --workers N` on one port; its CPU is the parent's and its
  workers' (the embedded PostgreSQL, idle in a fan-out, included).
- Nodes: N `realtime-core serve` on N ports, one cluster on one database, started by
  `python -m bench._cluster` (a launcher, so that the bench measures one process tree).
  Subscribers are spread over every node, the publisher is on the first.

Each run gets a cluster name of its own (REALTIME_CLUSTER), so a shared Redis carries no
other traffic into it."""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from bench._servers import BenchError, OurServer, _tail, free_port

__all__ = ["Nodes", "PrivateRedis", "Workers", "cluster_env"]

READY_TIMEOUT_S = 30.0


def cluster_env(redis_url: str) -> dict[str, str]:
    return {"REDIS_URL": redis_url, "REALTIME_CLUSTER": f"bench-{secrets.token_hex(4)}"}


class PrivateRedis:
    """redis-server on a free port of 127.0.0.1, until stop()."""

    def __init__(self, cmd_prefix: list[str]) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            raise BenchError("redis-server is not on PATH: install Redis 7, or pass --redis URL")
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        cmd = [*cmd_prefix, exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.pid = self.proc.pid
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not _answers(self.port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise BenchError(f"redis-server did not start on port {self.port}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


class Workers(OurServer):
    """`serve --workers N`: ready once the parent says every worker listens; measured as one tree."""

    cpu_includes_children = True

    def _ready(self) -> bool:
        return " workers (pids " in _tail(self._out, 20_000)

    def start(self, port: int, apikey: str) -> None:
        super().start(port, apikey)
        assert self.proc is not None
        self._pid = self.proc.pid  # the parent, whose descendants are the workers


class Nodes(OurServer):
    """N nodes on N ports (python -m bench._cluster); the publisher's is the first."""

    cpu_includes_children = True

    def __init__(self, name: str, cmd: list[str], env: dict[str, str], workdir: Path, ports: list[int]) -> None:
        super().__init__(name, [*cmd, "--ports", ",".join(map(str, ports))], env, workdir)
        self.ports = ports

    def _ready(self) -> bool:
        for port in self.ports:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthcheck", timeout=2) as r:
                    if r.status != 200:
                        return False
            except (OSError, urllib.error.URLError):
                return False
        return True

    def start(self, port: int, apikey: str) -> None:
        super().start(port, apikey)
        assert self.proc is not None
        self._pid = self.proc.pid
        self.sub_urls = [self.url.replace(f":{port}/", f":{p}/") for p in self.ports]


# ------------------------------------------------------------- the launcher


def _launch(argv: list[str]) -> int:
    """Start the nodes (and the embedded PostgreSQL when DATABASE_URL is unset); stop them on SIGINT/SIGTERM."""
    p = argparse.ArgumentParser(prog="python -m bench._cluster")
    p.add_argument("--ports", required=True)
    p.add_argument("--pin", default="", help="taskset prefix of the nodes, space-separated")
    args = p.parse_args(argv)
    ports = [int(x) for x in args.ports.split(",")]
    env = dict(os.environ)
    from realtime_core.config import Settings

    # As `serve --workers` does: the data dir's generated secrets made once, before the nodes start.
    settings = Settings.from_env()
    settings.resolve_jwt_secret()
    settings.resolve_db_enc_key()
    pg = None
    if not env.get("DATABASE_URL"):
        from realtime_core.embedded_pg import EmbeddedPostgres

        pg = EmbeddedPostgres(Path(env.get("REALTIME_DATA_DIR", ".realtime")).resolve())
        env["DATABASE_URL"] = pg.start()
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    nodes: list[subprocess.Popen[bytes]] = []
    try:
        for index, port in enumerate(ports):
            node_env = dict(env)
            if index:  # a replication slot has one reader: the first node's
                node_env |= {"REALTIME_DB_BROADCAST": "false", "REALTIME_POSTGRES_CHANGES": "false"}
            cmd = [*args.pin.split(), sys.executable, "-m", "realtime_core", "serve", "--host", "127.0.0.1"]
            nodes.append(subprocess.Popen([*cmd, "--port", str(port)], env=node_env))
        while not stopping and all(n.poll() is None for n in nodes):
            time.sleep(0.1)
    finally:
        for n in nodes:
            if n.poll() is None:
                n.send_signal(signal.SIGINT)
        for n in nodes:
            try:
                n.wait(10)
            except subprocess.TimeoutExpired:
                n.kill()
                n.wait()
        if pg is not None:
            pg.stop()
    return 0 if stopping else 1


if __name__ == "__main__":
    sys.exit(_launch(sys.argv[1:]))
