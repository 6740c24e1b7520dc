"""The servers under test: started pinned to a core, polled until ready, stopped.

bench/fanout.py builds one OurServer (realtime-core serve) and one
ReferenceServer (bench/js/ws_server.js), calls start() on each, measures
through `url` and `pid`, and calls stop() at the end, whatever happened.
bench/_harness.py does the same with one OurServer on a database of its
own. new_secret() and token() make the JWT secret each run gives our server
and the tokens its clients present."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import secrets
import shlex
import shutil
import signal
import socket
import string
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from bench._proc import listener_pid

__all__ = [
    "BenchError",
    "OurServer",
    "Pinning",
    "ReferenceServer",
    "Server",
    "free_port",
    "new_secret",
    "our_command",
    "pinning",
    "token",
]

READY_TIMEOUT_S = 60.0
BENCH_TENANT = "realtime-dev"  # our server's default tenant
STOP_TIMEOUT_S = 15.0  # realtime-core stops its embedded PostgreSQL first


class BenchError(Exception):
    """A failure that stops the bench, with a message meant for the user."""


@dataclasses.dataclass
class Pinning:
    """Where the servers and the generator run: taskset prefixes, or none."""

    server: list[str]
    generator: list[str]
    server_cpu: int | None
    generator_cpu: int | None
    description: str


def pinning(disabled: bool) -> Pinning:
    """Put servers on the first allowed core and the generator on the second."""
    cpus = sorted(os.sched_getaffinity(0))
    taskset = shutil.which("taskset")
    if disabled or taskset is None or len(cpus) < 2:
        why = "disabled" if disabled else "taskset missing" if taskset is None else "fewer than 2 cores"
        return Pinning([], [], None, None, f"not pinned ({why})")
    s, g = cpus[0], cpus[1]
    return Pinning([taskset, "-c", str(s)], [taskset, "-c", str(g)], s, g, f"server on cpu{s}, generator on cpu{g}")


def free_port() -> int:
    """Return a TCP port that was free on 127.0.0.1 a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def new_secret() -> str:
    """Return a random JWT secret of 40 letters and digits, new for each run."""
    return "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(40))


def token(secret: str, claims: dict[str, Any]) -> str:
    """Return an HS256 JWT with `claims`, issued by "bench", valid for an hour."""
    import jwt  # PyJWT, a dependency of realtime-core

    return jwt.encode({"exp": int(time.time()) + 3600, "iss": "bench", **claims}, secret, algorithm="HS256")


def _tail(path: Path, limit: int = 3000) -> str:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return ""
    return data[-limit:].decode("utf-8", "replace")


class Server:
    """One server under test. Subclasses say how to tell that it is ready."""

    def __init__(self, name: str, cmd: list[str], env: dict[str, str], workdir: Path) -> None:
        self.name = name
        self.cmd = cmd
        self.env = env
        self.port = 0
        self.url = ""
        self.proc: subprocess.Popen[bytes] | None = None
        self._pid: int | None = None
        self._out = workdir / f"{name}.stdout"
        self._err = workdir / f"{name}.stderr"

    @property
    def pid(self) -> int:
        """The process that listens on the port (the Python or Node process itself)."""
        assert self.proc is not None
        return self._pid or self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stderr_tail(self) -> str:
        return _tail(self._err)

    def start(self, port: int, apikey: str) -> None:
        """Start the server on `port` and wait until it is ready; raise BenchError if it is not."""
        self.port = port
        self.url = f"ws://127.0.0.1:{port}/socket/websocket?apikey={apikey}&vsn=2.0.0"
        with open(self._out, "wb") as out, open(self._err, "wb") as err:
            self.proc = subprocess.Popen(
                self.cmd,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                cwd=Path(__file__).resolve().parent.parent,
            )
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if not self.alive():
                raise BenchError(
                    f"the {self.name} server exited with status {self.proc.returncode} before it was ready.\n"
                    f"command: {shlex.join(self.cmd)}\nstderr (tail):\n{self.stderr_tail()}"
                )
            if self._ready():
                self._pid = listener_pid(port)
                return
            time.sleep(0.1)
        self.stop()
        raise BenchError(
            f"the {self.name} server was not ready within {READY_TIMEOUT_S:.0f} s.\n"
            f"command: {shlex.join(self.cmd)}\nstderr (tail):\n{self.stderr_tail()}"
        )

    def _ready(self) -> bool:
        raise NotImplementedError

    def stop(self) -> None:
        """Stop with SIGINT, then SIGKILL after STOP_TIMEOUT_S."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class OurServer(Server):
    """realtime-core serve; ready when GET /healthcheck answers 200 ok."""

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthcheck", timeout=2) as r:
                return r.status == 200 and r.read().strip().lower() == b"ok"
        except (OSError, urllib.error.URLError):
            return False

    def trace(self, admin_secret: str, topic: str, sub: str, seconds: int = 600) -> str:
        """Start a delivery trace of `sub` on `topic` (POST /admin/v1/tenants/realtime-dev/traces,
        with an admin token signed by `admin_secret`, the server's API_JWT_SECRET); return its id."""
        body = json.dumps({"topic": topic, "sub": sub, "seconds": seconds}).encode()
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}/admin/v1/tenants/{BENCH_TENANT}/traces",
            data=body,
            method="POST",
            headers={
                "Authorization": f"Bearer {token(admin_secret, {'sub': 'bench'})}",
                "content-type": "application/json",
            },
        )
        try:
            with urllib.request.urlopen(request, timeout=5) as r:
                return str(json.loads(r.read())["id"])
        except (OSError, urllib.error.URLError, KeyError, ValueError) as e:
            raise BenchError(f"could not start a delivery trace on {self.name}: {e}") from e

    def stop_trace(self, admin_secret: str, trace_id: str) -> None:
        """Stop the delivery trace `trace_id` (DELETE; a trace already gone is fine)."""
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}/admin/v1/tenants/{BENCH_TENANT}/traces/{trace_id}",
            method="DELETE",
            headers={"Authorization": f"Bearer {token(admin_secret, {'sub': 'bench'})}"},
        )
        try:
            with urllib.request.urlopen(request, timeout=5):
                pass
        except urllib.error.HTTPError as e:
            if e.code != 404:
                raise BenchError(f"could not stop the delivery trace on {self.name}: {e}") from e
        except (OSError, urllib.error.URLError) as e:
            raise BenchError(f"could not stop the delivery trace on {self.name}: {e}") from e


class ReferenceServer(Server):
    """bench/js/ws_server.js; ready when it prints "listening <port>"."""

    def _ready(self) -> bool:
        return _tail(self._out).startswith("listening ")


def our_command(server_cmd: str | None, port: int) -> list[str]:
    """Return the command line of realtime-core serve on 127.0.0.1:`port`.

    `server_cmd` replaces it: {host} and {port} are substituted, and
    "--host 127.0.0.1 --port N" is appended when it has no {port}.
    """
    if server_cmd:
        if "{port}" in server_cmd:
            return shlex.split(server_cmd.format(host="127.0.0.1", port=port))
        return [*shlex.split(server_cmd), "--host", "127.0.0.1", "--port", str(port)]
    args = ["serve", "--host", "127.0.0.1", "--port", str(port)]
    exe = shutil.which("realtime-core")
    if exe is not None:
        return [exe, *args]
    if importlib.util.find_spec("realtime_core") is None:
        raise BenchError(
            "realtime-core is not installed: no `realtime-core` on PATH and no realtime_core module. "
            "Install it (pip install -e .) or run with --skip-ours."
        )
    return [sys.executable, "-m", "realtime_core", *args]
