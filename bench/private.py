"""The private-channel benchmark: private joins per second, and broadcast from the database.

Run as ``python -m bench.private``. It starts a PostgreSQL (the embedded one,
or a database of its own inside DATABASE_URL), then ``realtime-core serve``
pinned to the first core with tenant limits raised out of the way, and
creates one read policy on realtime.messages::

    create policy ... for select to authenticated using (realtime.topic() like 'bench:%')

Then it runs up to three phases, each with its own Node process pinned to
the second core. The Python writers of (2) and (3) are threads of this
process and the embedded PostgreSQL is moved there too (``--pg-anywhere``
leaves it on every core), so the server's core runs the server alone, as
with a database on another machine:

- (1) joins: bench/js/private_joins.js opens --connections sockets and keeps
  --outstanding phx_join requests in flight on each, every one to a topic
  never used before (``bench:<run>-<n>``) with ``{"config":{"private":true}}``,
  so every join runs the server's RLS read check (spec §3.3 step 10, §7). Ok
  and error replies are counted over --duration seconds after --warmup;
  errors must be 0. The server handles one socket's joins one at a time
  (socket.py, as Phoenix does), so --connections is the server-side
  concurrency; the outstanding joins keep every socket's inbox full. The
  server's own histogram of the read check
  (``realtime_tenants_read_authorization_check`` at GET /metrics, pool wait
  included) is read before and after the window.
- (2) broadcast: bench/js/private_subscribers.js joins --subscribers sockets
  to the private topic ``bench:room``; writer threads call
  ``realtime.send(jsonb_build_object('i', n, 't', ns), 'e', 'bench:room')``
  for --batch consecutive n per statement (``generate_series``; one
  transaction each) as fast as the database takes them, never more than
  --max-lag seconds of deliveries ahead of the subscribers. Inserts/s and
  deliveries/s (frames received, summed over subscribers) are counted over
  the window. After the writers stop, every subscriber must hold every n
  (a bitmap per socket: missing and duplicated messages are reported).
  ``t`` is the writer's CLOCK_MONOTONIC before its statement, and Node reads
  the same clock, so "send -> client" needs no clock anchoring.
- (3) latency: the same subscribers; single-message statements at
  --latency-rate per second for --latency-duration seconds.

Each window also reads /proc (bench/_proc.py): CPU of the server, PostgreSQL
(when embedded), the Node generator and this process (the writers), each
core's busy time, and "other load": core time not spent by the bench's
processes (other processes, including short-lived ones such as a test suite's,
and the kernel). The machine may be shared, so (1) and (2) run --repeat times
(default 3) and the summary takes the median of the runs with other load
< WARN_OTHER_PCT (of all runs when none was that quiet); ``--wait-quiet S``
also waits before each run until the cores are idle. ``--profile`` runs
py-spy on the server during the (1) and (2) windows and prints where its
time goes.

The targets (>= 1,000 private joins/s with no error; >= 10,000 database
broadcasts/s delivered, each to all --subscribers) live here only: printed,
written to the JSON file, never asserted by unit tests. ``--check-targets``
turns a miss into exit status 3.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import platform
import queue
import resource
import secrets
import shlex
import shutil
import string
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import psycopg

from bench._proc import ProcessTree, Snapshot
from bench._servers import BenchError, OurServer, Pinning, free_port, our_command, pinning

# The Postgres Changes bench's database handling (embedded or DATABASE_URL)
# and py-spy summary. Its private helpers change under it; the few small
# ones needed here are below.
from bench.postgres_changes import Database, summarize_profile

__all__ = ["main"]

BENCH_DIR = Path(__file__).resolve().parent
JS_DIR = BENCH_DIR / "js"
DEFAULT_JSON = BENCH_DIR / "results" / "private.json"

TARGET_JOINS_PER_S = 1_000.0  # (1) ok replies to private joins per second
TARGET_DB_BROADCASTS_PER_S = 10_000.0  # (2) realtime.send messages/s delivered to every subscriber

# Tenant limits raised so that they never throttle the bench (spec 9.1 names).
SERVER_ENV = {
    "TENANT_MAX_EVENTS_PER_SECOND": "100000000",
    "TENANT_MAX_CONCURRENT_USERS": "100000",
    "TENANT_MAX_JOINS_PER_SECOND": "1000000",
    "TENANT_MAX_CHANNELS_PER_CLIENT": "100000",
    # Postgres Changes would decode the same WAL for nothing: no table is published.
    "REALTIME_POSTGRES_CHANGES": "false",
    "LOG_LEVEL": "warning",
    "PYTHONUNBUFFERED": "1",
}

TOPIC_PREFIX = "bench:"
ROOM = "bench:room"
EVENT = "e"
READ_CHECK = "realtime_tenants_read_authorization_check"

MIN_LEAD_DELIVERIES = 20_000  # (2): deliveries the writers may always be ahead by
WARN_CPU_PCT = 90.0  # a process using this share of one core may be the bottleneck
WARN_IDLE_CORE_PCT = 85.0  # a server core less busy than this was not the limit
# Core time not spent by the bench's processes (foreign, short-lived, kernel)
# that makes a window suspect; ~5-10 % is the kernel's share of our traffic.
WARN_OTHER_PCT = 20.0
QUIET_PCT = 15.0  # --wait-quiet: busy time of every core together, in % of one, between runs


# ------------------------------------------------------------ environment


def _raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _node() -> str:
    """Return the node executable, running `npm ci` in bench/js if node_modules is missing."""
    node = shutil.which("node")
    if node is None:
        raise BenchError("node is not on PATH: the generators need Node >= 18")
    if not (JS_DIR / "node_modules" / "ws").is_dir():
        npm = shutil.which("npm")
        if npm is None:
            raise BenchError(f"{JS_DIR}/node_modules is missing and npm is not on PATH")
        print(f"installing the bench's Node dependencies (npm ci in {JS_DIR}) ...", flush=True)
        done = subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=JS_DIR, capture_output=True, text=True)
        if done.returncode != 0:
            raise BenchError(f"npm ci failed in {JS_DIR}:\n{done.stderr[-2000:]}")
    return node


def _token(secret: str, claims: dict[str, Any]) -> str:
    import jwt  # PyJWT, a dependency of realtime-core

    return jwt.encode({"exp": int(time.time()) + 3600, "iss": "bench", **claims}, secret, algorithm="HS256")


def _output(*cmd: str) -> str | None:
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=10, cwd=BENCH_DIR)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() or None


def _environment(node: str, pin: Pinning, pg_version: str, embedded: bool) -> dict[str, Any]:
    model = None
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "commit": _output("git", "rev-parse", "--short", "HEAD"),
        "cpu_model": model,
        "cpus": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "node": _output(node, "--version"),
        "postgres": pg_version,
        "postgres_source": "embedded" if embedded else "DATABASE_URL",
        "pinning": pin.description,
        "clock": "CLOCK_MONOTONIC (Python time.monotonic_ns, Node process.hrtime.bigint)",
    }


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench.private",
        description="Private channels: joins/s (each an RLS read check) and broadcast from the database.",
    )
    p.add_argument("--duration", type=float, default=10.0, help="measured seconds of (1) and (2)")
    p.add_argument("--warmup", type=float, default=1.5, help="unmeasured seconds before each window")
    p.add_argument("--subscribers", type=int, default=100, help="(2), (3): subscribers of bench:room")
    p.add_argument("--connections", type=int, default=20, help="(1): sockets that join")
    p.add_argument("--outstanding", type=int, default=50, help="(1): joins in flight per socket")
    p.add_argument("--batch", type=int, default=500, help="(2): realtime.send calls per statement (transaction)")
    p.add_argument("--writers", type=int, default=2, help="(2): writer connections")
    p.add_argument(
        "--max-lag",
        type=float,
        default=0.5,
        help="(2): the writers wait while they are more than this many seconds of deliveries ahead "
        "(0: never wait; the backlog then drains after the window)",
    )
    p.add_argument("--latency-rate", type=float, default=100.0, help="(3): single sends per second")
    p.add_argument("--latency-duration", type=float, default=3.0, help="(3): seconds")
    p.add_argument("--latency-subscribers", type=int, default=5, help="sockets that record latency samples")
    p.add_argument("--drain-timeout", type=float, default=20.0, help="least seconds to wait for the last deliveries")
    p.add_argument("--phases", default="joins,broadcast,latency", help="comma-separated: joins, broadcast, latency")
    p.add_argument(
        "--repeat",
        type=int,
        default=3,
        help="runs of (1) and (2); the summary takes the median of the runs that other processes "
        "did not disturb (the machine may be shared)",
    )
    p.add_argument(
        "--wait-quiet",
        type=float,
        default=0.0,
        help="before each run, wait up to this many seconds until the cores are busy < "
        f"{QUIET_PCT:.0f}%% of one (the machine may be shared; 0: do not wait)",
    )
    p.add_argument("--db-pool-size", type=int, help="DB_POOL_SIZE of the server (its authorization pool)")
    p.add_argument("--json", type=Path, default=DEFAULT_JSON, help="where to write the figures")
    p.add_argument(
        "--server-cmd",
        help="command line of the server; {host} and {port} are substituted, and "
        "'--host 127.0.0.1 --port N' is appended when it has no {port}",
    )
    p.add_argument("--no-pin", action="store_true", help="do not pin the server and the generator to cores")
    p.add_argument(
        "--pg-anywhere",
        action="store_true",
        help="leave the embedded PostgreSQL on every core (default: on the generator's core, so that "
        "the server's core runs the server alone, as with a database on another machine)",
    )
    p.add_argument("--profile", action="store_true", help="run py-spy on the server during the (1) and (2) windows")
    p.add_argument("--check-targets", action="store_true", help="exit with status 3 when a target is missed")
    args = p.parse_args(argv)
    args.phases = [s.strip() for s in args.phases.split(",") if s.strip()]
    unknown = set(args.phases) - {"joins", "broadcast", "latency"}
    if unknown:
        p.error(f"unknown phases {sorted(unknown)}: choose among joins, broadcast, latency")
    if min(args.subscribers, args.connections, args.outstanding, args.batch, args.writers, args.repeat) < 1:
        p.error("--subscribers, --connections, --outstanding, --batch, --writers and --repeat must be positive")
    if args.duration <= 0 or args.latency_rate <= 0:
        p.error("--duration and --latency-rate must be positive")
    return args


# ------------------------------------------------------------------ metrics


def scrape_metrics(port: int) -> dict[str, float]:
    """GET /metrics; return {'name{labels}': value} (empty when unreachable)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            text = r.read().decode()
    except OSError:
        return {}
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        key, _, value = line.rpartition(" ")
        with contextlib.suppress(ValueError):
            out[key] = float(value)
    return out


def _metric(m: dict[str, float], name: str) -> float | None:
    """Sum of `name` over its label sets (one tenant here)."""
    values = [v for k, v in m.items() if k == name or k.startswith(name + "{")]
    return sum(values) if values else None


def histogram_delta(before: dict[str, float], after: dict[str, float], name: str) -> dict[str, Any] | None:
    """The Prometheus histogram `name` observed between two scrapes: counts per bucket and estimates.

    Quantiles are bucket upper bounds: "p99 <= 10 ms" means the 99th
    percentile fell in the bucket that ends at 10 ms."""
    buckets: dict[str, float] = {}
    for key, value in after.items():
        if key.startswith(name + "_bucket{"):
            le = key.rsplit('le="', 1)[1].split('"', 1)[0]
            buckets[le] = buckets.get(le, 0.0) + value - before.get(key, 0.0)
    if not buckets:
        return None
    count = (_metric(after, name + "_count") or 0.0) - (_metric(before, name + "_count") or 0.0)
    total_ms = (_metric(after, name + "_sum") or 0.0) - (_metric(before, name + "_sum") or 0.0)
    order = sorted(buckets, key=lambda le: float("inf") if le == "+Inf" else float(le))

    def quantile(q: float) -> str | None:
        if count <= 0:
            return None
        for le in order:
            if buckets[le] >= q * count:
                return le
        return "+Inf"

    return {
        "count": int(count),
        "mean_ms": round(total_ms / count, 3) if count > 0 else None,
        "p50_le_ms": quantile(0.50),
        "p90_le_ms": quantile(0.90),
        "p99_le_ms": quantile(0.99),
        "cumulative": {le: int(buckets[le]) for le in order},
    }


# ---------------------------------------------------------------- generator


class NodeProcess:
    """One Node script of bench/js, pinned to the generator's core, talking JSON lines."""

    def __init__(self, node: str, pin: Pinning, script: str, args: list[str], work: Path, tag: str) -> None:
        cmd = [*pin.generator, node, str(JS_DIR / script), *args]
        self.name = script
        self.delivered = 0
        self._history: collections.deque[tuple[float, int]] = collections.deque()
        self._lock = threading.Lock()
        self._replies: queue.Queue[dict[str, Any]] = queue.Queue()
        self._err_path = work / f"{tag}.stderr"
        self._err = open(self._err_path, "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._err)
        self.pid = self.proc.pid
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                msg = json.loads(line)
            except ValueError:
                continue
            if msg.get("event") == "progress":
                now = time.monotonic()
                with self._lock:
                    self.delivered = msg["delivered"]
                    self._history.append((now, self.delivered))
                    while len(self._history) > 2 and now - self._history[0][0] > 0.5:
                        self._history.popleft()
            else:
                self._replies.put(msg)
        self._replies.put({"event": "error", "error": f"{self.name} exited with status {self.proc.wait()}"})

    def rate(self) -> float:
        """Deliveries per second over the last ~0.5 s (0 when nothing arrived lately)."""
        with self._lock:
            if len(self._history) < 2:
                return 0.0
            (t0, d0), (t1, d1) = self._history[0], self._history[-1]
        if time.monotonic() - t1 > 0.5:
            return 0.0  # progress lines stop when deliveries do
        return (d1 - d0) / (t1 - t0) if t1 > t0 else 0.0

    def reply(self, timeout: float, what: str, event: str) -> dict[str, Any]:
        """The next JSON line that is not progress; raise BenchError unless its event is `event`."""
        try:
            msg = self._replies.get(timeout=timeout)
        except queue.Empty:
            raise BenchError(f"{self.name}: no {what} within {timeout:.0f} s{self._stderr()}") from None
        if msg.get("event") != event:
            raise BenchError(f"{self.name}: expected {what}, got {json.dumps(msg)[:500]}{self._stderr()}")
        return msg

    def _stderr(self) -> str:
        self._err.flush()
        try:
            tail = self._err_path.read_bytes()[-1500:].decode("utf-8", "replace").strip()
        except OSError:
            tail = ""
        return f"\nstderr (tail):\n{tail}" if tail else ""

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write((line + "\n").encode())
        self.proc.stdin.flush()

    def command(self, line: str, timeout: float, event: str) -> dict[str, Any]:
        self.send(line)
        return self.reply(timeout, f"a reply to {line.split(' ', 1)[0]}", event)

    def close(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(OSError):
                self.send("quit")
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._err.close()


# ------------------------------------------------------------------ writers


class Numbers:
    """Consecutive message numbers, handed to the writers in blocks."""

    def __init__(self) -> None:
        self._next = 0
        self._lock = threading.Lock()

    def take(self, n: int) -> int:
        with self._lock:
            start = self._next
            self._next += n
            return start

    @property
    def issued(self) -> int:
        with self._lock:
            return self._next


# Every message carries its number and the writer's CLOCK_MONOTONIC before the
# statement; realtime.send adds "id". The database makes the rows: the
# writers' own CPU stays out of the way.
_SEND_BATCH = (
    "select realtime.send(jsonb_build_object('i', %s::bigint + g, 't', %s::bigint), %s, %s)"
    " from generate_series(0, %s) g"
)
_SEND_ONE = "select realtime.send(jsonb_build_object('i', %s::bigint, 't', %s::bigint), %s, %s)"


class _Writer(threading.Thread):
    def __init__(self, dsn: str, name: str) -> None:
        super().__init__(daemon=True, name=name)
        self.dsn = dsn
        self.sent = 0  # messages in committed statements
        self.warnings = 0  # WarnSendingBroadcastMessage notices: realtime.send swallowed an error
        self.first_warning: str | None = None
        self.error: BaseException | None = None

    def _connect(self) -> psycopg.Connection[Any]:
        conn = psycopg.connect(self.dsn, autocommit=True, application_name="bench_private_writer")

        def notice(diag: psycopg.errors.Diagnostic) -> None:
            text = diag.message_primary or ""
            if "WarnSendingBroadcastMessage" in text:
                self.warnings += 1
                if self.first_warning is None:
                    self.first_warning = text

        conn.add_notice_handler(notice)
        return conn


class BulkWriter(_Writer):
    """--batch realtime.send calls per statement, as fast as the database takes them, within the allowed lead."""

    def __init__(
        self, dsn: str, numbers: Numbers, batch: int, allowed: Callable[[], bool], stop: threading.Event, k: int
    ) -> None:
        super().__init__(dsn, f"bulk writer {k}")
        self.numbers, self.batch, self.allowed, self.stop_event = numbers, batch, allowed, stop
        self.throttled_s = 0.0
        self.statement_s: list[float] = []

    def run(self) -> None:
        try:
            with self._connect() as conn:
                while not self.stop_event.is_set():
                    if not self.allowed():
                        t = time.monotonic()
                        time.sleep(0.002)
                        self.throttled_s += time.monotonic() - t
                        continue
                    start = self.numbers.take(self.batch)
                    t0 = time.monotonic_ns()
                    conn.execute(_SEND_BATCH, (start, t0, EVENT, ROOM, self.batch - 1))
                    self.statement_s.append((time.monotonic_ns() - t0) / 1e9)
                    self.sent += self.batch
        except BaseException as exc:  # reported by the phase
            self.error = exc


class PacedWriter(_Writer):
    """One realtime.send per statement at a fixed rate; records each statement's round trip."""

    def __init__(self, dsn: str, numbers: Numbers, rate: float, seconds: float) -> None:
        super().__init__(dsn, "paced writer")
        self.numbers, self.rate, self.seconds = numbers, rate, seconds
        self.roundtrip_ms: list[float] = []
        self.late = 0  # statements that started more than 5 ms behind schedule

    def run(self) -> None:
        try:
            with self._connect() as conn:
                total = int(self.rate * self.seconds)
                start = time.monotonic()
                for k in range(total):
                    wait = start + k / self.rate - time.monotonic()
                    if wait > 0:
                        time.sleep(wait)
                    elif wait < -0.005:
                        self.late += 1
                    n = self.numbers.take(1)
                    t0 = time.monotonic_ns()
                    conn.execute(_SEND_ONE, (n, t0, EVENT, ROOM))
                    self.roundtrip_ms.append((time.monotonic_ns() - t0) / 1e6)
                    self.sent += 1
        except BaseException as exc:
            self.error = exc


# --------------------------------------------------------------------- bench


def _fmt(v: Any, spec: str = ".0f") -> str:
    return "-" if v is None else format(v, spec)


def _r(v: float | None, digits: int = 1) -> float | None:
    return None if v is None else round(v, digits)


class Bench:
    """The server, its database and the phases; every figure ends up in `phases`."""

    def __init__(self, args: argparse.Namespace, node: str, pin: Pinning, work: Path) -> None:
        self.args = args
        self.node = node
        self.pin = pin
        self.work = work
        self.secret = "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(40))
        self.token = _token(self.secret, {"role": "authenticated", "sub": "bench"})
        self.db = Database(work)
        self.server: OurServer | None = None
        self.port = 0
        self.url = ""
        self.phases: dict[str, dict[str, Any]] = {}
        self.errors: list[str] = []
        self.profiles: dict[str, Any] = {}
        self.numbers = Numbers()
        self.subscribers: NodeProcess | None = None  # shared by (2) and (3)
        self.pg_pinned = 0  # PostgreSQL processes moved to the generator's core

    # -- lifecycle

    def start(self) -> None:
        self.db.start()
        self.port = free_port()
        env = {
            **os.environ,
            **SERVER_ENV,
            "DATABASE_URL": self.db.dsn,
            "SLOT_NAME_SUFFIX": self.db.name,  # slot names are cluster-wide
            "REALTIME_JWT_SECRET": self.secret,
        }
        if self.args.db_pool_size:
            env["DB_POOL_SIZE"] = str(self.args.db_pool_size)
        cmd = [*self.pin.server, *our_command(self.args.server_cmd, self.port)]
        self.server = OurServer("server", cmd, env, self.work)
        print(f"starting the server: {shlex.join(cmd)}", flush=True)
        self.server.start(self.port, _token(self.secret, {"role": "anon"}))
        self.url = f"ws://127.0.0.1:{self.port}/socket/websocket?apikey={self.token}&vsn=2.0.0"
        # The server's migrations made realtime.messages, its partitions and the roles.
        with psycopg.connect(self.db.dsn, autocommit=True) as conn:
            conn.execute(
                "create policy bench_read on realtime.messages for select to authenticated"
                f" using (realtime.topic() like '{TOPIC_PREFIX}%')"
            )
        # Writers (threads of this process, started from now on) stay off the
        # server's core.
        if self.pin.generator_cpu is not None:
            os.sched_setaffinity(0, {self.pin.generator_cpu})
            if not self.args.pg_anywhere:
                self.pg_pinned = self._pin_postgres(self.pin.generator_cpu)

    def _pin_postgres(self, cpu: int) -> int:
        """Move the embedded PostgreSQL (postmaster and every backend) to `cpu`; return how many processes moved.

        Backends forked later inherit the postmaster's affinity."""
        if self.db.pg_pid is None:
            return 0
        moved = 0
        snap = Snapshot.take()
        for pid in ProcessTree(self.db.pg_pid).members(snap.procs):
            with contextlib.suppress(OSError):
                os.sched_setaffinity(pid, {cpu})
                moved += 1
        return moved

    def stop(self) -> None:
        if self.subscribers is not None:
            self.subscribers.close()
            self.subscribers = None
        if self.server is not None:
            self.server.stop()
        self.db.stop()

    # -- measuring

    def _usage(self, gen_pid: int, a: Snapshot, b: Snapshot) -> dict[str, Any]:
        assert self.server is not None
        trees = {"server": ProcessTree(self.server.pid), "bench": ProcessTree(os.getpid())}
        if self.db.pg_pid is not None:
            trees["postgres"] = ProcessTree(self.db.pg_pid)
        gen = ProcessTree(gen_pid)
        u = a.usage(b, servers=trees, generator=gen)
        cores = u.get("core_busy_pct", {})
        wall = max(b.t - a.t, 1e-9)
        gen_ticks = sum(
            (b.procs[p][2] - (a.procs[p][2] if p in a.procs else 0)) for p in gen.members(b.procs) if p in b.procs
        )
        pg = None
        if "postgres_cpu_pct" in u:
            pg = round(u["postgres_cpu_pct"] + u["postgres_children_cpu_pct"], 1)
        gen_pct = round(100.0 * gen_ticks / os.sysconf("SC_CLK_TCK") / wall, 1)
        ours = u["server_cpu_pct"] + (pg or 0.0) + gen_pct + u["bench_cpu_pct"]
        return {
            "server_cpu_pct": u.get("server_cpu_pct"),
            "postgres_cpu_pct": pg,
            "generator_cpu_pct": gen_pct,
            "writer_cpu_pct": u.get("bench_cpu_pct"),
            "server_core_busy_pct": cores.get(f"cpu{self.pin.server_cpu}"),
            "generator_core_busy_pct": cores.get(f"cpu{self.pin.generator_cpu}"),
            "core_busy_pct": cores,
            "foreign_cpu_pct": u.get("foreign_cpu_pct"),
            "foreign_top": u.get("foreign_top"),
            # Every core's busy time not spent by the bench's processes: the
            # other processes above, those that started and ended within the
            # window (a test suite's), and the kernel (softirqs of our own
            # loopback traffic too, a few %).
            "other_load_pct": round(max(0.0, sum(cores.values()) - ours), 1),
        }

    def _profile_start(self, name: str, seconds: float) -> subprocess.Popen[bytes] | None:
        """Start py-spy on the server for `seconds`; _finish_profile() summarises it."""
        if not self.args.profile or self.server is None:
            return None
        exe = shutil.which("py-spy")
        if exe is None:
            print("  (no py-spy on PATH: pip install py-spy; profile skipped)", flush=True)
            return None
        out = self.work / f"{name}.raw"
        # Blocking sampling (no --nonblocking): reading a running process
        # truncated two thirds of the stacks here, which hides where the
        # time goes. Pausing 100 times a second costs the server a little.
        cmd = [exe, "record", "--pid", str(self.server.pid), "--duration", str(max(1, int(seconds)))]
        cmd += ["--rate", "100", "--format", "raw", "--gil", "-o", str(out)]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        proc.out_path = out  # type: ignore[attr-defined]
        return proc

    def _profile_finish(self, name: str, proc: subprocess.Popen[bytes] | None) -> None:
        if proc is None:
            return
        try:
            _, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
        out: Path = proc.out_path  # type: ignore[attr-defined]
        if out.exists():
            self.profiles[name] = summarize_profile(out.read_text())
        else:
            self.profiles[name] = {"error": err.decode("utf-8", "replace")[-500:]}

    def joins_phase(self, run: int) -> dict[str, Any]:
        """(1): private joins as fast as replies come; ok and error replies per second."""
        a = self.args
        prefix = f"{TOPIC_PREFIX}{run}-"  # every run joins topics no earlier run used
        gen = NodeProcess(
            self.node,
            self.pin,
            "private_joins.js",
            [
                *("--url", self.url, "--connections", str(a.connections), "--outstanding", str(a.outstanding)),
                *("--duration", str(a.duration), "--warmup", str(a.warmup), "--prefix", prefix),
            ],
            self.work,
            f"private_joins.{run}",
        )
        profile = None
        try:
            gen.reply(60, "the measure_start mark", "mark")
            m0, s0 = scrape_metrics(self.port), Snapshot.take()
            profile = self._profile_start(f"joins.{run}", a.duration)
            gen.reply(a.duration + 30, "the measure_end mark", "mark")
            m1, s1 = scrape_metrics(self.port), Snapshot.take()
            result = gen.reply(60, "the result", "result")
        finally:
            gen.close()
            self._profile_finish(f"joins.{run}", profile)
        win = result["window"]
        total = result["total"]
        errors_total = total["error"] + total["timeout"] + total["closed"]
        server_errors = (_metric(m1, "realtime_channel_join_errors_total") or 0) - (
            _metric(m0, "realtime_channel_join_errors_total") or 0
        )
        return {
            "phase": "joins",
            "connections": result["connections"],
            "outstanding_per_connection": result["outstanding_per_connection"],
            "window_s": round(result["window_s"], 3),
            "joins_ok_per_s": round(result["ok_per_s"], 1),
            "ok_per_second": result["ok_per_second"],
            "window": win,
            "total": total,
            "errors_window": win["error"] + win["timeout"] + win["closed"],
            "errors_total": errors_total,
            "error_reasons": result["reasons"],
            "server_join_errors": int(server_errors),
            "join_roundtrip": {k: _r(v, 2) if isinstance(v, float) else v for k, v in result["join_roundtrip"].items()},
            "read_check": histogram_delta(m0, m1, READ_CHECK),
            "channels_joined_at_end": _metric(m1, "realtime_channels_joined"),
            "connections_closed": result["connections_closed"],
            "notes": result["notes"],
            "generator_elu": _r(result.get("generator_elu"), 3),
            **self._usage(gen.pid, s0, s1),
        }

    def _open_subscribers(self) -> NodeProcess:
        if self.subscribers is not None:
            return self.subscribers
        a = self.args
        gen = NodeProcess(
            self.node,
            self.pin,
            "private_subscribers.js",
            [
                *("--url", self.url, "--subscribers", str(a.subscribers), "--topic", f"realtime:{ROOM}"),
                *("--event", EVENT, "--latency-subscribers", str(min(a.latency_subscribers, a.subscribers))),
            ],
            self.work,
            "private_subscribers",
        )
        try:
            ready = gen.reply(60 + a.subscribers / 10, "the ready line", "ready")
        except BaseException:
            gen.close()
            raise
        skew_ms = (time.monotonic_ns() - int(ready["hrtime_ns"])) / 1e6
        if not -1.0 < skew_ms < 1000.0:
            gen.close()
            raise BenchError(
                f"Node's process.hrtime and Python's time.monotonic_ns differ by {skew_ms:.1f} ms: "
                "they are not the same clock here, latency cannot be measured"
            )
        gen.ready = ready  # type: ignore[attr-defined]
        self.subscribers = gen
        return gen

    def _expect_all(self, gen: NodeProcess, rate: float) -> tuple[dict[str, Any], float]:
        """Wait until every subscriber holds every number issued so far; return (result, drain seconds)."""
        total = self.numbers.issued
        backlog = total * self.args.subscribers - gen.delivered
        timeout = max(self.args.drain_timeout, 3.0 * backlog / rate if rate > 0 else 0.0)
        t = time.monotonic()
        result = gen.command("expect " + json.dumps({"total": total, "timeout_s": timeout}), timeout + 30, "result")
        return result, time.monotonic() - t

    def _db_rows(self) -> int:
        with psycopg.connect(self.db.dsn) as conn:
            row = conn.execute(
                "select count(*) from realtime.messages where topic = %s and extension = 'broadcast'", (ROOM,)
            ).fetchone()
        return int(row[0]) if row else 0

    def broadcast_phase(self, run: int) -> dict[str, Any]:
        """(2): realtime.send as fast as the database takes it; inserts/s and deliveries/s."""
        a = self.args
        n = a.subscribers
        gen = self._open_subscribers()
        stop = threading.Event()
        writers: list[BulkWriter] = []
        floor = max(4 * a.batch * a.writers, MIN_LEAD_DELIVERIES // n)
        delivered_before = gen.delivered  # earlier runs' deliveries

        def allowed() -> bool:
            if a.max_lag <= 0:
                return True
            behind = sum(w.sent for w in writers) - (gen.delivered - delivered_before) / n
            return behind < max(floor, a.max_lag * gen.rate() / n)

        profile = None
        pg_m0 = scrape_metrics(self.port)
        try:
            writers.extend(BulkWriter(self.db.dsn, self.numbers, a.batch, allowed, stop, k) for k in range(a.writers))
            for w in writers:
                w.start()
            time.sleep(a.warmup)
            profile = self._profile_start(f"broadcast.{run}", a.duration)
            sent0, thr0 = sum(w.sent for w in writers), sum(w.throttled_s for w in writers)
            mk0, m0, s0 = gen.command("mark start", 30, "mark"), scrape_metrics(self.port), Snapshot.take()
            t0_ns = time.monotonic_ns()
            time.sleep(a.duration)
            mk1, m1, s1 = gen.command("mark end", 30, "mark"), scrape_metrics(self.port), Snapshot.take()
            t1_ns = time.monotonic_ns()
            sent1, thr1 = sum(w.sent for w in writers), sum(w.throttled_s for w in writers)
            stop.set()
            for w in writers:
                w.join(60)
            failed = [w.error for w in writers if w.error is not None]
            if failed:
                raise BenchError(f"a writer failed: {failed[0]}")
            wall = (t1_ns - t0_ns) / 1e9
            rate = (mk1["delivered"] - mk0["delivered"]) / wall
            result, drain_s = self._expect_all(gen, rate)
            latency = gen.command("latency " + json.dumps({"from_ns": t0_ns, "to_ns": t1_ns}), 30, "latency")
        finally:
            stop.set()
            self._profile_finish(f"broadcast.{run}", profile)
        pg_m1 = scrape_metrics(self.port)
        statements = [s for w in writers for s in w.statement_s]
        server_delivered = (_metric(m1, "realtime_db_broadcast_delivered_total") or 0) - (
            _metric(m0, "realtime_db_broadcast_delivered_total") or 0
        )
        issued = self.numbers.issued
        db_rows = self._db_rows()
        warnings_ = sum(w.warnings for w in writers)
        return {
            "phase": "broadcast",
            "subscribers": n,
            "writers": a.writers,
            "batch": a.batch,
            "window_s": round(wall, 3),
            "subscribe_s": round(gen.ready["subscribe_s"], 2),  # type: ignore[attr-defined]
            "inserts_per_s": round((sent1 - sent0) / wall, 1),
            "deliveries_per_s": round(rate, 1),
            "delivered_messages_per_s": round(rate / n, 1),
            "server_deliveries_per_s": round(server_delivered / wall, 1),
            "writer_throttled_pct": round(100.0 * (thr1 - thr0) / (wall * a.writers), 1),
            "statement_ms_p50": _r(_ms(_pct(statements, 0.5)), 2),
            "statement_ms_p99": _r(_ms(_pct(statements, 0.99)), 2),
            "send_to_client": _round_all(latency),
            "messages_issued": issued,
            "db_rows": db_rows,
            "send_warnings": warnings_,
            "send_first_warning": next((w.first_warning for w in writers if w.first_warning), None),
            "dropped_by_server": int(
                (_metric(pg_m1, "realtime_db_broadcast_dropped_total") or 0)
                - (_metric(pg_m0, "realtime_db_broadcast_dropped_total") or 0)
            ),
            "drain_s": round(drain_s, 2),
            "generator_elu": _r(mk1.get("generator_elu"), 3),
            **_correctness(result, issued, db_rows),
            **self._usage(gen.pid, s0, s1),
        }

    def latency_phase(self, run: int) -> dict[str, Any]:
        """(3): single sends at --latency-rate; send -> client percentiles over every recording subscriber."""
        a = self.args
        gen = self._open_subscribers()
        writer = PacedWriter(self.db.dsn, self.numbers, a.latency_rate, a.latency_duration)
        mk0, s0 = gen.command("mark start", 30, "mark"), Snapshot.take()
        t0_ns = time.monotonic_ns()
        writer.start()
        writer.join(a.latency_duration + 60)
        mk1, s1 = gen.command("mark end", 30, "mark"), Snapshot.take()
        t1_ns = time.monotonic_ns()
        if writer.error is not None:
            raise BenchError(f"the writer failed: {writer.error}")
        result, drain_s = self._expect_all(gen, 0.0)
        latency = gen.command("latency " + json.dumps({"from_ns": t0_ns, "to_ns": t1_ns}), 30, "latency")
        issued = self.numbers.issued
        db_rows = self._db_rows()
        wall = (t1_ns - t0_ns) / 1e9
        return {
            "phase": "latency",
            "subscribers": a.subscribers,
            "rate": a.latency_rate,
            "sends": writer.sent,
            "late_sends": writer.late,
            "deliveries_per_s": round((mk1["delivered"] - mk0["delivered"]) / wall, 1),
            "send_to_client": _round_all(latency),
            "statement_ms_p50": _r(_pct(writer.roundtrip_ms, 0.5), 2),
            "statement_ms_p99": _r(_pct(writer.roundtrip_ms, 0.99), 2),
            "messages_issued": issued,
            "db_rows": db_rows,
            "send_warnings": writer.warnings,
            "send_first_warning": writer.first_warning,
            "drain_s": round(drain_s, 2),
            **_correctness(result, issued, db_rows),
            **self._usage(gen.pid, s0, s1),
        }

    def run(self) -> None:
        a = self.args
        plan: dict[str, tuple[str, Callable[[int], dict[str, Any]], int]] = {
            "joins": (f"(1) private joins, {a.connections} sockets x {a.outstanding}", self.joins_phase, a.repeat),
            "broadcast": (f"(2) realtime.send -> {a.subscribers} subscribers", self.broadcast_phase, a.repeat),
            "latency": (f"(3) latency at {a.latency_rate:g} sends/s", self.latency_phase, 1),
        }
        for key in a.phases:
            label, fn, repeat = plan[key]
            runs = [self._one(key, label, fn, k) for k in range(repeat)]
            done = [r for r in runs if r is not None]
            if done:
                self.phases[key] = _median_run(done, MEDIAN_OF[key])

    def _one(self, key: str, label: str, fn: Callable[[int], dict[str, Any]], k: int) -> dict[str, Any] | None:
        """Run one phase once; return its figures, or None after recording the error."""
        if self.args.repeat > 1 and key != "latency":
            label = f"{label}, run {k + 1} of {self.args.repeat}"
        if self.server is None or not self.server.alive():
            self.errors.append(f"{label}: skipped, the server is not running")
            return None
        quiet = self._wait_quiet()
        print(f"{label} ...", flush=True)
        try:
            r = fn(k)
        except BenchError as e:
            msg = f"{label}: {e}"
            if self.server is not None:
                tail = self.server.stderr_tail()
                if "Traceback" in tail or "ERROR" in tail:
                    msg += f"\nserver stderr (tail):\n{tail[-1500:]}"
            self.errors.append(msg)
            print(f"error: {msg}", file=sys.stderr, flush=True)
            if self.server is not None and not self.server.alive():
                self.errors.append(f"the server died; stderr (tail):\n{self.server.stderr_tail()}")
            return None
        r["label"] = label
        if quiet is not None:
            r["cores_busy_pct_before"] = quiet
        _print_phase(r)
        return r

    def _wait_quiet(self) -> float | None:
        """Wait up to --wait-quiet seconds for a second in which the cores were busy < QUIET_PCT of one.

        The bench's own processes are idle between runs, so whatever keeps
        the cores busy then is other work. Returns the last second's figure
        (None when not asked to wait)."""
        if self.args.wait_quiet <= 0:
            return None
        deadline = time.monotonic() + self.args.wait_quiet
        waited = False
        while True:
            a = Snapshot.take()
            time.sleep(1.0)
            cores = a.usage(Snapshot.take(), servers={}, generator=None)["core_busy_pct"]
            busy = round(sum(cores.values()), 1)  # type: ignore[attr-defined]
            if busy < QUIET_PCT or time.monotonic() >= deadline:
                if waited:
                    print(f"  (the cores were {busy:.0f}% busy in the last second)", flush=True)
                return float(busy)
            if not waited:
                print(f"  waiting for a quiet machine: the cores are {busy:.0f}% busy ...", flush=True)
                waited = True


# The figure that ranks the runs of a phase.
MEDIAN_OF = {"joins": "joins_ok_per_s", "broadcast": "delivered_messages_per_s", "latency": "deliveries_per_s"}


def _median_run(runs: list[dict[str, Any]], key: str) -> dict[str, Any]:
    """The run whose `key` is the median (the lower one of an even count), with every run's figure beside it.

    Runs during which the cores spent >= WARN_OTHER_PCT of a core on anything
    but the bench's processes are left out when at least one run was clean:
    on a shared machine they measure the neighbours too."""
    clean = [r for r in runs if (r.get("other_load_pct") or 0.0) < WARN_OTHER_PCT]
    ranked = sorted(clean or runs, key=lambda r: r[key])
    mid = dict(ranked[(len(ranked) - 1) // 2])
    if len(runs) > 1:
        mid["runs"] = len(runs)
        mid["clean_runs"] = len(clean)
        mid[f"{key}_all"] = [r[key] for r in runs]
        mid[f"{key}_clean"] = [r[key] for r in clean]
        # A shared machine makes some runs slow: totals of errors and losses cover every run.
        for name in ("errors_total", "missing", "duplicates", "bad_frames"):
            if name in mid:
                mid[f"{name}_all_runs"] = sum(r.get(name, 0) for r in runs)
        mid["correct_all_runs"] = all(r.get("correct", True) for r in runs)
    return mid


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1000


def _round_all(d: dict[str, Any]) -> dict[str, Any]:
    return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in d.items() if k != "event"}


def _correctness(result: dict[str, Any], issued: int, db_rows: int) -> dict[str, Any]:
    ok = (
        result["drained"]
        and result["missing"] == 0
        and result["duplicates"] == 0
        and result["out_of_range"] == 0
        and result["bad_frames"] == 0
        and result["subscribers_closed"] == 0
        and db_rows == issued
    )
    return {
        "correct": bool(ok),
        "missing": result["missing"],
        "subscribers_short": result["subscribers_short"],
        "duplicates": result["duplicates"],
        "out_of_range": result["out_of_range"],
        "bad_frames": result["bad_frames"],
        "subscribers_closed": result["subscribers_closed"],
        "notes": result["notes"],
    }


# ------------------------------------------------------------------ report


def _correctness_text(r: dict[str, Any]) -> str:
    if r.get("correct"):
        return "ok"
    parts = [
        f"{key.replace('_', ' ')} {r[key]}"
        for key in ("missing", "duplicates", "out_of_range", "bad_frames", "subscribers_closed")
        if r.get(key)
    ]
    if "db_rows" in r and r["db_rows"] != r["messages_issued"]:
        parts.append(f"db rows {r['db_rows']} of {r['messages_issued']} sent")
    return ", ".join(parts) or "not drained"


def _cpu_text(r: dict[str, Any]) -> str:
    return (
        f"server {_fmt(r['server_cpu_pct'])}% (core {_fmt(r['server_core_busy_pct'])}%) "
        f"pg {_fmt(r['postgres_cpu_pct'])}% gen {_fmt(r['generator_cpu_pct'])}% "
        f"writers {_fmt(r['writer_cpu_pct'])}% other load {_fmt(r['other_load_pct'])}%"
    )


def _print_phase(r: dict[str, Any]) -> None:
    if r["phase"] == "joins":
        rc = r.get("read_check") or {}
        rt = r["join_roundtrip"]
        print(
            f"  {r['joins_ok_per_s']:.0f} ok joins/s, {r['errors_window']} errors in the window "
            f"({r['errors_total']} in all); join round trip p50 {_fmt(rt['p50_ms'], '.1f')} "
            f"p99 {_fmt(rt['p99_ms'], '.1f')} ms; read check mean {_fmt(rc.get('mean_ms'), '.2f')} ms "
            f"p99 <= {rc.get('p99_le_ms', '-')} ms",
            flush=True,
        )
    elif r["phase"] == "broadcast":
        lat = r["send_to_client"]
        print(
            f"  {r['inserts_per_s']:.0f} inserts/s, {r['deliveries_per_s']:.0f} deliveries/s "
            f"({r['delivered_messages_per_s']:.0f} messages/s to all {r['subscribers']}); writers waited "
            f"{r['writer_throttled_pct']:.0f}% of the time; send->client p50 {_fmt(lat['p50_ms'], '.1f')} "
            f"p99 {_fmt(lat['p99_ms'], '.1f')} ms; {_correctness_text(r)}",
            flush=True,
        )
    else:
        lat = r["send_to_client"]
        print(
            f"  send->client p50 {_fmt(lat['p50_ms'], '.2f')} p99 {_fmt(lat['p99_ms'], '.2f')} ms "
            f"({lat['count']} samples); {_correctness_text(r)}",
            flush=True,
        )
    print(f"  CPU: {_cpu_text(r)}", flush=True)


def targets(phases: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Return {name: {target, value, met}} for the figures that were measured (median runs)."""
    out: dict[str, dict[str, Any]] = {}
    j = phases.get("joins")
    if j is not None:
        v = j["joins_ok_per_s"]
        out["private_joins_per_s"] = {
            "target": f">= {TARGET_JOINS_PER_S:.0f}",
            "value": v,
            "met": v >= TARGET_JOINS_PER_S,
        }
        errors = j.get("errors_total_all_runs", j["errors_total"])
        out["private_join_errors"] = {"target": "0", "value": errors, "met": errors == 0}
    b = phases.get("broadcast")
    if b is not None:
        v = b["delivered_messages_per_s"]
        out["db_broadcasts_delivered_per_s"] = {
            "target": f">= {TARGET_DB_BROADCASTS_PER_S:.0f} (each to all {b['subscribers']} subscribers)",
            "value": v,
            "met": v >= TARGET_DB_BROADCASTS_PER_S,
        }
    for key in ("broadcast", "latency"):
        r = phases.get(key)
        if r is not None:
            ok = r.get("correct_all_runs", r["correct"])
            out[f"{key}_complete"] = {
                "target": "no loss (every subscriber gets every message once)",
                "value": _correctness_text(r) if ok or not r["correct"] else "a run lost or repeated messages",
                "met": ok,
            }
    return out


def warnings(phases: dict[str, dict[str, Any]]) -> list[str]:
    out = []
    for key, r in phases.items():
        if (r.get("generator_cpu_pct") or 0) >= WARN_CPU_PCT:
            out.append(
                f"{key}: the Node generator used {r['generator_cpu_pct']:.0f}% of a core: it may be the bottleneck"
            )
        gen_core = r.get("generator_core_busy_pct")
        if gen_core is not None and gen_core >= 95 and key != "latency":
            out.append(
                f"{key}: the generator's core was {gen_core:.0f}% busy (Node, writers, PostgreSQL): "
                "the load side may be the bottleneck"
            )
        if key != "latency":
            srv_core = r.get("server_core_busy_pct")
            if srv_core is not None and srv_core < WARN_IDLE_CORE_PCT:
                out.append(f"{key}: the server's core was only {srv_core:.0f}% busy: the server was not the limit")
        if (r.get("other_load_pct") or 0) >= WARN_OTHER_PCT:
            out.append(
                f"{key}: the cores spent {r['other_load_pct']:.0f}% of a core on other work meanwhile "
                f"(live processes {r['foreign_cpu_pct']:.0f}%: {', '.join(r.get('foreign_top') or []) or '-'}; "
                "the rest: processes that came and went, the kernel): figures may be low"
            )
        if r.get("send_warnings"):
            out.append(f"{key}: realtime.send raised {r['send_warnings']} warnings: {r.get('send_first_warning')}")
        if r.get("late_sends"):
            out.append(f"{key}: {r['late_sends']} sends started > 5 ms behind schedule (the writer was slow)")
    return out


def _spread(r: dict[str, Any], key: str) -> str:
    values = r.get(f"{key}_all")
    if not values:
        return ""
    clean = r.get("clean_runs", len(values))
    return f" ({clean}/{len(values)} clean, {min(values):.0f}-{max(values):.0f})"


def print_summary(phases: dict[str, dict[str, Any]], tgt: dict[str, dict[str, Any]], warn: list[str]) -> None:
    print()
    head = f"{'figure':<50} {'value':>24}  {'target':<9} result"
    print(head)
    print("-" * len(head))

    def row(name: str, value: str, target: dict[str, Any] | None = None) -> None:
        mark = "" if target is None else ("PASS" if target["met"] else "FAIL")
        want = "" if target is None else target["target"].split(" (")[0]
        print(f"{name:<50} {value:>24}  {want:<9} {mark}")

    j = phases.get("joins")
    if j is not None:
        rt, rc = j["join_roundtrip"], j.get("read_check") or {}
        row(
            "(1) private joins/s (ok replies)",
            _fmt(j["joins_ok_per_s"]) + _spread(j, "joins_ok_per_s"),
            tgt["private_joins_per_s"],
        )
        row("(1) join errors", str(tgt["private_join_errors"]["value"]), tgt["private_join_errors"])
        row("(1) join round trip p50 / p99 ms", f"{_fmt(rt['p50_ms'])} / {_fmt(rt['p99_ms'])}")
        if rc:
            row(
                "(1) server read check mean ms, p50 / p99 bucket",
                f"{_fmt(rc['mean_ms'], '.1f')}, <= {rc['p50_le_ms']} / <= {rc['p99_le_ms']}",
            )
        row(
            "(1) CPU % server / pg / generator",
            f"{_fmt(j['server_cpu_pct'])} / {_fmt(j['postgres_cpu_pct'])} / {_fmt(j['generator_cpu_pct'])}",
        )
    b = phases.get("broadcast")
    if b is not None:
        lat = b["send_to_client"]
        row(
            f"(2) db broadcasts delivered/s, each to all {b['subscribers']}",
            _fmt(b["delivered_messages_per_s"]) + _spread(b, "delivered_messages_per_s"),
            tgt["db_broadcasts_delivered_per_s"],
        )
        row("(2) deliveries/s at the subscribers", _fmt(b["deliveries_per_s"]))
        row("(2) inserts/s through realtime.send", _fmt(b["inserts_per_s"]))
        row("(2) writers waiting for deliveries, % of time", _fmt(b["writer_throttled_pct"]))
        row("(2) send -> client p50 / p99 ms, saturated", f"{_fmt(lat['p50_ms'])} / {_fmt(lat['p99_ms'])}")
        row(
            "(2) every subscriber got every message once",
            tgt["broadcast_complete"]["value"][:24],
            tgt["broadcast_complete"],
        )
        row(
            "(2) CPU % server / pg / generator / writers",
            f"{_fmt(b['server_cpu_pct'])} / {_fmt(b['postgres_cpu_pct'])} / "
            f"{_fmt(b['generator_cpu_pct'])} / {_fmt(b['writer_cpu_pct'])}",
        )
    lt = phases.get("latency")
    if lt is not None:
        lat = lt["send_to_client"]
        row(
            f"(3) send -> client p50 / p99 ms at {lt['rate']:g}/s",
            f"{_fmt(lat['p50_ms'], '.2f')} / {_fmt(lat['p99_ms'], '.2f')}",
        )
        row("(3) statement round trip p50 ms", _fmt(lt["statement_ms_p50"], ".2f"))
        row(
            "(3) every subscriber got every message once",
            tgt["latency_complete"]["value"][:24],
            tgt["latency_complete"],
        )
    print(
        "(CPU in % of one core over the window: server = realtime-core, pg = PostgreSQL and its backends, "
        "generator = the Node process, writers = this process. Read check: the server's histogram, pool wait "
        "included. Saturated latency includes the writers' lead of up to --max-lag seconds.)"
    )
    for w in warn:
        print(f"warning: {w}")


# The frames every sample of `realtime-core serve` starts with.
_ROOT_FRAMES = ("(cli.py)", "(runners.py)", "run (__init__.py)", "(realtime-core)", "(__main__.py)")


def print_profiles(profiles: dict[str, Any]) -> None:
    for name, prof in profiles.items():
        print()
        if not prof.get("samples"):
            print(f"profile {name}: no samples {prof.get('error', '')}")
            continue
        print(f"profile of the server during {name} ({prof['samples']} samples, py-spy --gil: CPU only):")
        print("  self time:")
        for f, p in prof["self"][:15]:
            print(f"    {p:5.1f}%  {f}")
        print("  inclusive:")
        shown = [(f, p) for f, p in prof["inclusive"] if not f.endswith(_ROOT_FRAMES)]
        for f, p in shown[:30]:
            print(f"    {p:5.1f}%  {f}")


# --------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    """Run the private-channel bench with command-line arguments `argv`; return the exit status."""
    args = _parse_args(argv)
    try:
        return _run(args)
    except BenchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _run(args: argparse.Namespace) -> int:
    _raise_nofile()
    node = _node()
    pin = pinning(args.no_pin)
    print(f"private bench: {args.duration:g} s windows, {args.subscribers} subscribers, {pin.description}", flush=True)
    t0 = time.monotonic()
    pg_version = "?"
    with tempfile.TemporaryDirectory(prefix="rt-bench-private-") as tmp:
        bench = Bench(args, node, pin, Path(tmp))
        try:
            bench.start()
            pg_version = bench.db.version()
            bench.run()
        finally:
            bench.stop()
    tgt = targets(bench.phases)
    warn = warnings(bench.phases)
    print_summary(bench.phases, tgt, warn)
    print_profiles(bench.profiles)
    report = {
        "environment": _environment(node, pin, pg_version, bench.db.embedded is not None),
        "config": {
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "connections": args.connections,
            "outstanding_per_connection": args.outstanding,
            "subscribers": args.subscribers,
            "batch": args.batch,
            "writers": args.writers,
            "max_lag_s": args.max_lag,
            "latency_rate": args.latency_rate,
            "latency_duration_s": args.latency_duration,
            "db_pool_size": args.db_pool_size,
            "phases": args.phases,
            "profile": args.profile,
            "repeat": args.repeat,
            "postgres_cpu": (
                f"cpu{pin.generator_cpu} ({bench.pg_pinned} processes moved)" if bench.pg_pinned else "any"
            ),
            "server_env": SERVER_ENV,
        },
        "phases": bench.phases,
        "targets": tgt,
        "warnings": warn,
        "profiles": bench.profiles,
        "errors": bench.errors,
        "elapsed_s": round(time.monotonic() - t0, 1),
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {args.json} ({report['elapsed_s']:.0f} s)")
    for e in bench.errors:
        print(f"error: {e}", file=sys.stderr)
    if bench.errors:
        return 1
    if args.check_targets and not all(t["met"] for t in tgt.values()):
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
