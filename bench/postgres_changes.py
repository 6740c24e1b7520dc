"""The Postgres Changes benchmark: commit-to-client latency and delivered changes per second.

Run as ``python -m bench.postgres_changes`` (``realtime-core bench
postgres-changes`` calls main() with the remaining arguments). It starts a
PostgreSQL (the embedded one, or a database of its own inside DATABASE_URL),
then ``realtime-core serve`` pinned to the first core, creates two published
tables, and runs four phases, each with its own Node subscriber process
(bench/js/pg_subscribers.js, pinned to the second core) and Python writers
(threads of this process, also kept off the server's core):

- (a) latency: one subscriber on ``items`` (no RLS), 100 single-row INSERT
  commits per second; the row's ``body`` holds the writer's CLOCK_MONOTONIC
  time (time.monotonic_ns()) and the subscriber reads the same kernel clock
  (process.hrtime.bigint()), so the difference needs no clock anchoring.
  "commit -> client" starts when the writer got the COMMIT acknowledgement;
  "insert -> client" starts before the INSERT was sent (it adds statement
  and fsync time). (a-rls) repeats it on ``items_rls`` (one RLS group).
- (b) throughput with RLS: N subscribers (default 100) on ``items_rls``,
  each with its own JWT (role authenticated, sub user<i>); the policy shows
  each subscriber its own rows. Writers insert 100-row transactions, owners
  round-robin over the N subscribers, as fast as the database takes them.
- (c) the same on ``items`` without RLS: every subscriber receives every
  row, so delivered = rows x N.

For (b) and (c), delivered changes/s are counted at the subscribers over the
steady window (after --warmup, for --duration seconds) and the writers' rate
over the same window. The writers never run more than --max-lag seconds of
deliveries (at the recent rate; at least MIN_LEAD_DELIVERIES, or four
batches per writer) ahead of the subscribers, so a server slower than the
database leaves a bounded backlog. The share of time they waited, and the
rows/s the database took while they wrote, say which side was the limit.
After the writers stop, every subscriber must reach the number of rows the
database holds for it (counted with SQL), within a timeout; any shortfall,
excess, row of another owner or malformed frame is reported.

The server runs on the first allowed core and the subscribers on the second
(taskset); the writers share the second core; PostgreSQL is left on every
core. Each window also reads /proc: CPU of the server, PostgreSQL (when
embedded), the generator and the writers, each core's busy time, and other
processes' CPU (the machine may be shared). ``--profile`` runs py-spy on the server
during every measured window and prints where its time goes.

The targets (p50 <= 5 ms and p99 <= 25 ms commit -> client in (a), >= 20k
delivered changes/s in (b)) live here only: printed, written to the JSON
file, never asserted by unit tests. ``--check-targets`` turns a miss into
exit status 3.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
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
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from bench._proc import ProcessTree, Snapshot
from bench._servers import BenchError, OurServer, Pinning, free_port, our_command, pinning

__all__ = ["main"]

BENCH_DIR = Path(__file__).resolve().parent
JS_DIR = BENCH_DIR / "js"
DEFAULT_JSON = BENCH_DIR / "results" / "postgres_changes.json"

TARGET_P50_MS = 5.0  # (a) commit -> client, one subscriber, 100 changes/s
TARGET_P99_MS = 25.0
TARGET_RLS_DELIVERED_PER_S = 20_000.0  # (b) 100 subscribers, RLS by `sub`

# Tenant limits raised so that they never throttle the bench (spec 9.1 names).
SERVER_ENV = {
    "TENANT_MAX_EVENTS_PER_SECOND": "100000000",
    "TENANT_MAX_CONCURRENT_USERS": "100000",
    "TENANT_MAX_JOINS_PER_SECOND": "100000",
    "TENANT_MAX_CHANNELS_PER_CLIENT": "100",
    "REALTIME_POSTGRES_CHANGES": "true",
    "LOG_LEVEL": "warning",
    "PYTHONUNBUFFERED": "1",
}

_SCHEMA = """
create table items_rls (id bigserial primary key, owner text not null, body text);
alter table items_rls enable row level security;
create policy own_rows on items_rls for select to authenticated
    using (owner = current_setting('request.jwt.claims', true)::jsonb ->> 'sub');
grant select on items_rls to authenticated;
create table items (id bigserial primary key, owner text, body text);
grant select on items to authenticated;
"""

# (b), (c): deliveries the writers may always be ahead by. Unbounded, they left
# 260k rows behind a 5 s window against a server doing a few hundred rows/s
# (commit 46bcabe), and the drain outlasted any sensible timeout.
MIN_LEAD_DELIVERIES = 2000
WARN_CPU_PCT = 90.0  # a process using this share of one core may be the bottleneck
WARN_FOREIGN_PCT = 15.0  # CPU of unrelated processes that makes a window suspect


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="realtime-core bench postgres-changes",
        description="Postgres Changes: commit -> client latency, and delivered changes/s with and without RLS.",
    )
    p.add_argument("--duration", type=float, default=10.0, help="measured seconds per phase")
    p.add_argument("--warmup", type=float, default=1.5, help="unmeasured seconds before each window")
    p.add_argument("--subscribers", type=int, default=100, help="subscribers in the throughput phases (b), (c)")
    p.add_argument("--rate", type=float, default=100.0, help="(a): single-row commits per second")
    p.add_argument("--batch", type=int, default=100, help="(b), (c): rows per INSERT transaction")
    p.add_argument("--writers", type=int, default=2, help="(b), (c): writer connections")
    p.add_argument(
        "--max-lag",
        type=float,
        default=1.0,
        help="(b), (c): the writers wait while they are more than this many seconds of deliveries ahead "
        "(0: never wait; the backlog then drains after the window)",
    )
    p.add_argument("--drain-timeout", type=float, default=20.0, help="least seconds to wait for the last deliveries")
    p.add_argument(
        "--phases", default="a,a-rls,b,c", help="comma-separated phases to run: a, a-rls, b, c (default: all)"
    )
    p.add_argument("--json", type=Path, default=DEFAULT_JSON, help="where to write the figures")
    p.add_argument(
        "--server-cmd",
        help="command line of the server; {host} and {port} are substituted, and "
        "'--host 127.0.0.1 --port N' is appended when it has no {port}",
    )
    p.add_argument("--no-pin", action="store_true", help="do not pin the server and the generator to cores")
    p.add_argument(
        "--profile",
        action="store_true",
        help="run py-spy on the server during every measured window (it perturbs the figures a little)",
    )
    p.add_argument("--check-targets", action="store_true", help="exit with status 3 when a target is missed")
    args = p.parse_args(argv)
    args.phases = [s.strip() for s in args.phases.split(",") if s.strip()]
    unknown = set(args.phases) - {"a", "a-rls", "b", "c"}
    if unknown:
        p.error(f"unknown phases {sorted(unknown)}: choose among a, a-rls, b, c")
    if args.subscribers < 1 or args.batch < 1 or args.writers < 1 or args.rate <= 0:
        p.error("--subscribers, --batch, --writers and --rate must be positive")
    return args


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
        raise BenchError("node is not on PATH: the subscribers need Node >= 18")
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


# ---------------------------------------------------------------- database


class Database:
    """A database of the bench's own: in an embedded PostgreSQL, or inside DATABASE_URL."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.embedded: Any = None
        self.admin_dsn = ""
        self.dsn = ""
        self.name = f"rt_bench_{secrets.token_hex(4)}"

    @property
    def pg_pid(self) -> int | None:
        return self.embedded.pid if self.embedded is not None else None

    def start(self) -> None:
        url = os.environ.get("DATABASE_URL")
        if url:
            self.admin_dsn = url
        else:
            from realtime_core.embedded_pg import EmbeddedPostgres

            self.embedded = EmbeddedPostgres(self.work / "pg")
            self.admin_dsn = self.embedded.start()
        with psycopg.connect(self.admin_dsn, autocommit=True) as conn:
            row = conn.execute("show wal_level").fetchone()
            if row is None or row[0] != "logical":
                raise BenchError(f"PostgreSQL at DATABASE_URL has wal_level={row and row[0]}; it must be logical")
            conn.execute(sql.SQL("create database {}").format(sql.Identifier(self.name)))
        params = conninfo_to_dict(self.admin_dsn)
        params["dbname"] = self.name
        self.dsn = make_conninfo(**params)

    def version(self) -> str:
        with psycopg.connect(self.dsn) as conn:
            row = conn.execute("show server_version").fetchone()
        return str(row[0]) if row else "?"

    def create_tables(self) -> None:
        """Create items and items_rls and add them to supabase_realtime (the server made the roles)."""
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute(_SCHEMA)
            if conn.execute("select 1 from pg_publication where pubname = 'supabase_realtime'").fetchone() is None:
                conn.execute("create publication supabase_realtime")
            conn.execute("alter publication supabase_realtime add table items, items_rls")

    def stop(self) -> None:
        """Drop the slot and the database (a durable slot retains WAL forever), or stop PostgreSQL."""
        if self.embedded is not None:
            self.embedded.stop()
            return
        if not self.dsn:
            return
        with contextlib.suppress(psycopg.Error), psycopg.connect(self.admin_dsn, autocommit=True) as conn:
            conn.execute(
                "select pg_drop_replication_slot(slot_name) from pg_replication_slots where database = %s",
                (self.name,),
            )
            conn.execute(sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(self.name)))


# --------------------------------------------------------------- generator


class Subscribers:
    """One pg_subscribers.js process: N subscribed connections, driven over stdin/stdout."""

    def __init__(
        self,
        node: str,
        pin: Pinning,
        url: str,
        tokens: Path,
        *,
        table: str,
        count: int,
        latency: bool,
        owner_check: bool,
        work: Path,
    ) -> None:
        cmd = [
            *pin.generator,
            node,
            str(JS_DIR / "pg_subscribers.js"),
            *("--url", url, "--tokens", str(tokens), "--table", table, "--subscribers", str(count)),
        ]
        if latency:
            cmd.append("--latency")
        if owner_check:
            cmd.append("--owner-check")
        self.count = count
        self.delivered = 0
        self.ready: dict[str, Any] = {}  # the ready line, once wait_ready() returned
        self._history: collections.deque[tuple[float, int]] = collections.deque()
        self._lock = threading.Lock()
        self._replies: queue.Queue[dict[str, Any]] = queue.Queue()
        self._err = open(work / f"pg_subscribers.{table}.{count}.stderr", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._err)
        self.pid = self.proc.pid
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            msg = json.loads(line)
            if msg.get("event") == "ready":
                msg["_py_monotonic_ns"] = time.monotonic_ns()
            if msg.get("event") == "progress":
                now = time.monotonic()
                with self._lock:
                    self.delivered = msg["delivered"]
                    self._history.append((now, self.delivered))
                    while len(self._history) > 2 and now - self._history[0][0] > 0.5:
                        self._history.popleft()
            else:
                self._replies.put(msg)
        self._replies.put({"event": "error", "error": f"pg_subscribers.js exited with status {self.proc.wait()}"})

    def rate(self) -> float:
        """Deliveries per second over the last ~0.5 s."""
        with self._lock:
            if len(self._history) < 2:
                return 0.0
            (t0, d0), (t1, d1) = self._history[0], self._history[-1]
        return (d1 - d0) / (t1 - t0) if t1 > t0 else 0.0

    def _reply(self, timeout: float, what: str) -> dict[str, Any]:
        try:
            msg = self._replies.get(timeout=timeout)
        except queue.Empty:
            raise BenchError(f"pg_subscribers.js: no {what} within {timeout:.0f} s{self._stderr()}") from None
        if msg.get("event") == "error":
            raise BenchError(f"pg_subscribers.js: {msg.get('error')}{self._stderr()}")
        return msg

    def _stderr(self) -> str:
        self._err.flush()
        try:
            tail = Path(self._err.name).read_bytes()[-1500:].decode("utf-8", "replace").strip()
        except OSError:
            tail = ""
        return f"\nstderr (tail):\n{tail}" if tail else ""

    def _send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write((line + "\n").encode())
        self.proc.stdin.flush()

    def wait_ready(self) -> dict[str, Any]:
        msg = self._reply(60 + self.count / 10, "ready line")
        if msg.get("event") != "ready":
            raise BenchError(f"pg_subscribers.js: expected ready, got {msg}")
        # Node's CLOCK_MONOTONIC when it wrote the line, and ours when we read
        # it: the difference is a pipe delay, positive and small, if both
        # processes read the same clock.
        skew_ms = (msg["_py_monotonic_ns"] - int(msg["hrtime_ns"])) / 1e6
        if not -1.0 < skew_ms < 1000.0:
            raise BenchError(
                f"Node's process.hrtime and Python's time.monotonic_ns differ by {skew_ms:.1f} ms: "
                "they are not the same clock here, latency cannot be measured"
            )
        msg["clock_check_ms"] = round(skew_ms, 3)
        self.ready = msg
        return msg

    def mark(self, name: str) -> dict[str, Any]:
        self._send(f"mark {name}")
        msg = self._reply(30, f"mark {name}")
        if msg.get("event") != "mark":
            raise BenchError(f"pg_subscribers.js: expected a mark, got {msg}")
        return msg

    def expect(self, counts: list[int], timeout: float) -> dict[str, Any]:
        self._send("expect " + json.dumps({"counts": counts, "timeout_s": timeout}))
        msg = self._reply(timeout + 30, "result")
        if msg.get("event") != "result":
            raise BenchError(f"pg_subscribers.js: expected a result, got {msg}")
        return msg

    def close(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(OSError):
                self._send("quit")
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._err.close()


# ----------------------------------------------------------------- writers


class LatencyWriter(threading.Thread):
    """Single-row INSERT commits at a fixed rate; records (body ns, commit acknowledged ns)."""

    def __init__(self, dsn: str, table: str, owner: str, rate: float, seconds: float) -> None:
        super().__init__(daemon=True, name=f"latency writer {table}")
        self.dsn, self.table, self.owner, self.rate, self.seconds = dsn, table, owner, rate, seconds
        self.samples: list[tuple[int, int]] = []
        self.late = 0  # commits that started more than 5 ms behind schedule
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with psycopg.connect(self.dsn, autocommit=True) as conn:
                query = sql.SQL("insert into {} (owner, body) values (%s, %s)").format(sql.Identifier(self.table))
                conn.execute(query, (self.owner, "0"))  # connection warm-up, not a sample
                conn.execute(query, (self.owner, "0"))
                total = int(self.rate * self.seconds)
                start = time.monotonic()
                for k in range(total):
                    due = start + k / self.rate
                    wait = due - time.monotonic()
                    if wait > 0:
                        time.sleep(wait)
                    elif wait < -0.005:
                        self.late += 1
                    t0 = time.monotonic_ns()
                    conn.execute(query, (self.owner, str(t0)))
                    self.samples.append((t0, time.monotonic_ns()))
        except BaseException as exc:  # reported by the phase
            self.error = exc


class BulkWriter(threading.Thread):
    """Multi-row INSERT transactions as fast as the database takes them, within the allowed lead."""

    def __init__(
        self, dsn: str, table: str, owners: int, batch: int, offset: int, allowed: Any, stop: threading.Event
    ) -> None:
        super().__init__(daemon=True, name=f"bulk writer {table} {offset}")
        self.dsn, self.table, self.owners, self.batch, self.offset = dsn, table, owners, batch, offset
        self.allowed = allowed  # () -> bool: may the writers run further ahead?
        self.stop_event = stop
        self.rows = 0
        self.throttled_s = 0.0
        self.error: BaseException | None = None

    def run(self) -> None:
        # Rows are generated by the database: the writer's own CPU stays out of the way.
        query = sql.SQL(
            "insert into {} (owner, body) select 'user' || ((%s + g) %% %s), %s from generate_series(0, %s) g"
        ).format(sql.Identifier(self.table))
        offset = self.offset
        try:
            with psycopg.connect(self.dsn, autocommit=True) as conn:
                while not self.stop_event.is_set():
                    if not self.allowed():
                        t = time.monotonic()
                        time.sleep(0.002)
                        self.throttled_s += time.monotonic() - t
                        continue
                    conn.execute(query, (offset, self.owners, str(time.monotonic_ns()), self.batch - 1))
                    self.rows += self.batch
                    offset = (offset + self.batch) % self.owners
        except BaseException as exc:
            self.error = exc


# ----------------------------------------------------------------- figures


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def _latency_summary(values_ms: list[float]) -> dict[str, Any]:
    return {
        "count": len(values_ms),
        "p50_ms": _round(_pct(values_ms, 0.50)),
        "p90_ms": _round(_pct(values_ms, 0.90)),
        "p99_ms": _round(_pct(values_ms, 0.99)),
        "p999_ms": _round(_pct(values_ms, 0.999)),
        "max_ms": _round(max(values_ms)) if values_ms else None,
        "min_ms": _round(min(values_ms)) if values_ms else None,
        "mean_ms": _round(sum(values_ms) / len(values_ms)) if values_ms else None,
    }


def _round(v: float | None, digits: int = 3) -> float | None:
    return None if v is None else round(v, digits)


def _fmt(v: Any, spec: str = ".0f") -> str:
    return "-" if v is None else format(v, spec)


# -------------------------------------------------------------------- bench


class Bench:
    """The server, its database and the phases; every figure ends up in `phases`."""

    def __init__(self, args: argparse.Namespace, node: str, pin: Pinning, work: Path) -> None:
        self.args = args
        self.node = node
        self.pin = pin
        self.work = work
        self.secret = "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(40))
        self.db = Database(work)
        self.server: OurServer | None = None
        self.url = ""
        self.phases: dict[str, dict[str, Any]] = {}
        self.errors: list[str] = []
        self.profiles: dict[str, Any] = {}
        n = max(args.subscribers, 1)
        self.tokens = work / "tokens.txt"
        self.tokens.write_text(
            "".join(_token(self.secret, {"role": "authenticated", "sub": f"user{i}"}) + "\n" for i in range(n))
        )

    # -- lifecycle

    def start(self) -> None:
        self.db.start()
        port = free_port()
        env = {
            **os.environ,
            **SERVER_ENV,
            "DATABASE_URL": self.db.dsn,
            "SLOT_NAME_SUFFIX": self.db.name,  # slot names are cluster-wide
            "REALTIME_JWT_SECRET": self.secret,
        }
        self.server = OurServer("server", [*self.pin.server, *our_command(self.args.server_cmd, port)], env, self.work)
        print(f"starting the server: {shlex.join(self.server.cmd)}", flush=True)
        self.server.start(port, _token(self.secret, {"role": "anon"}))
        self.url = f"ws://127.0.0.1:{port}/socket/websocket?vsn=2.0.0"
        # The server's migrations made the roles and the publication.
        self.db.create_tables()
        # Writers (threads of this process, started from now on) stay off the
        # server's core. PostgreSQL, started above, keeps every core.
        if self.pin.generator_cpu is not None:
            os.sched_setaffinity(0, {self.pin.generator_cpu})

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()  # SIGINT, then SIGKILL after a timeout
        self.db.stop()

    # -- measuring

    def _snapshot_trees(self, gen: Subscribers) -> tuple[dict[str, ProcessTree], ProcessTree]:
        assert self.server is not None
        trees = {"server": ProcessTree(self.server.pid), "bench": ProcessTree(os.getpid())}
        if self.db.pg_pid is not None:
            trees["postgres"] = ProcessTree(self.db.pg_pid)
        return trees, ProcessTree(gen.pid)

    def _usage(self, gen: Subscribers, a: Snapshot, b: Snapshot) -> dict[str, Any]:
        trees, gtree = self._snapshot_trees(gen)
        u = a.usage(b, servers=trees, generator=gtree)
        cores = u.get("core_busy_pct", {})
        pg = None
        if "postgres_cpu_pct" in u:
            pg = round(u["postgres_cpu_pct"] + u["postgres_children_cpu_pct"], 1)
        gen_ticks = _proc_ticks(gen.pid, a, b)
        wall = max(b.t - a.t, 1e-9)
        return {
            "server_cpu_pct": u.get("server_cpu_pct"),
            "postgres_cpu_pct": pg,
            "generator_cpu_pct": round(100.0 * gen_ticks / os.sysconf("SC_CLK_TCK") / wall, 1),
            "writer_cpu_pct": u.get("bench_cpu_pct"),
            "server_core_busy_pct": cores.get(f"cpu{self.pin.server_cpu}"),
            "generator_core_busy_pct": cores.get(f"cpu{self.pin.generator_cpu}"),
            "core_busy_pct": cores,
            "foreign_cpu_pct": u.get("foreign_cpu_pct"),
            "foreign_top": u.get("foreign_top"),
        }

    def _subscribers(self, table: str, count: int, *, latency: bool, owner_check: bool) -> Subscribers:
        gen = Subscribers(
            self.node,
            self.pin,
            self.url,
            self.tokens,
            table=table,
            count=count,
            latency=latency,
            owner_check=owner_check,
            work=self.work,
        )
        try:
            gen.wait_ready()
        except BaseException:
            gen.close()
            raise
        return gen

    def _profile(self, name: str) -> _Profile | None:
        """Start py-spy on the server for the coming window, when --profile asks for it."""
        if not self.args.profile or self.server is None:
            return None
        return _start_profile(self.server.pid, self.args.duration, self.work / f"{name}.raw")

    def _max_id(self, table: str) -> int:
        with psycopg.connect(self.db.dsn) as conn:
            row = conn.execute(sql.SQL("select coalesce(max(id), 0) from {}").format(sql.Identifier(table))).fetchone()
        return int(row[0]) if row else 0

    def latency_phase(self, name: str, table: str, rls: bool) -> dict[str, Any]:
        """One subscriber, --rate single-row commits per second; commit -> client percentiles."""
        a = self.args
        gen = self._subscribers(table, 1, latency=True, owner_check=rls)
        profile = None
        try:
            writer = LatencyWriter(self.db.dsn, table, "user0", a.rate, a.warmup + a.duration)
            t_start = time.monotonic_ns()
            writer.start()
            time.sleep(a.warmup)
            profile = self._profile(name)
            window_from = time.monotonic_ns()
            m0, s0 = gen.mark("start"), Snapshot.take()
            time.sleep(a.duration)
            m1, s1 = gen.mark("end"), Snapshot.take()
            window_to = time.monotonic_ns()
            writer.join(a.duration + 30)
            if writer.error is not None:
                raise BenchError(f"{name}: the writer failed: {writer.error}")
            sent = len(writer.samples) + 2
            result = gen.expect([sent], max(a.drain_timeout, 5.0))
        finally:
            gen.close()
            if profile is not None:
                self.profiles[name] = _finish_profile(profile)
        acked = dict(writer.samples)
        commit_ms: list[float] = []
        insert_ms: list[float] = []
        samples = result.pop("latency_samples") or []
        received = {int(body) for body, _ in samples}
        # Rows the subscriber never got: when they were written, and how long
        # their INSERT+COMMIT took (a slow commit hints at a visibility race).
        missing = [
            {"t_s": round((t0 - t_start) / 1e9, 3), "commit_ms": round((done - t0) / 1e6, 2)}
            for t0, done in writer.samples
            if t0 not in received
        ]
        for body, diff in samples:
            ts = int(body)
            if ts not in acked or not window_from <= ts <= window_to:
                continue
            recv = ts + diff
            insert_ms.append(diff / 1e6)
            commit_ms.append((recv - acked[ts]) / 1e6)
        commit_s = [(done - t0) / 1e6 for t0, done in writer.samples if window_from <= t0 <= window_to]
        usage = self._usage(gen, s0, s1)
        out = {
            "phase": name,
            "table": table,
            "rls": rls,
            "subscribers": 1,
            "rate": a.rate,
            "window_s": round((window_to - window_from) / 1e9, 3),
            "commits": len(writer.samples),
            "late_commits": writer.late,
            "delivered_per_s": round((m1["delivered"] - m0["delivered"]) / ((window_to - window_from) / 1e9), 1),
            "commit_to_client": _latency_summary(commit_ms),
            "insert_to_client": _latency_summary(insert_ms),
            "insert_commit_roundtrip": _latency_summary(commit_s),
            "missing_rows": len(missing),
            "missing_first": missing[:20],
            "clock_check_ms": gen.ready["clock_check_ms"],
            "elapsed_s": round((time.monotonic_ns() - t_start) / 1e9, 2),
            **self._correctness(result),
            **usage,
        }
        return out

    def throughput_phase(self, name: str, table: str, rls: bool) -> dict[str, Any]:
        """N subscribers, bulk inserts as fast as the database takes them; delivered changes/s."""
        a = self.args
        n = a.subscribers
        fanout = 1 if rls else n  # deliveries per row
        start_id = self._max_id(table)
        gen = self._subscribers(table, n, latency=False, owner_check=rls)
        stop = threading.Event()
        writers: list[BulkWriter] = []
        # The writers may always be this far ahead: enough rows for the server
        # to fill a decent batch even before a delivery rate is known.
        floor_rows = max(4 * a.batch * a.writers, MIN_LEAD_DELIVERIES // fanout)

        def allowed() -> bool:
            if a.max_lag <= 0:
                return True
            inserted = sum(w.rows for w in writers)
            behind = inserted - gen.delivered / fanout
            return behind < max(floor_rows, a.max_lag * gen.rate() / fanout)

        profile = None
        try:
            writers.extend(
                BulkWriter(self.db.dsn, table, n, a.batch, k * (n // a.writers), allowed, stop)
                for k in range(a.writers)
            )
            for w in writers:
                w.start()
            time.sleep(a.warmup)
            profile = self._profile(name)
            m0, s0 = gen.mark("start"), Snapshot.take()
            rows0, thr0, t0 = sum(w.rows for w in writers), sum(w.throttled_s for w in writers), time.monotonic()
            time.sleep(a.duration)
            m1, s1 = gen.mark("end"), Snapshot.take()
            rows1, thr1, t1 = sum(w.rows for w in writers), sum(w.throttled_s for w in writers), time.monotonic()
            stop.set()
            for w in writers:
                w.join(30)
            errors = [w.error for w in writers if w.error is not None]
            if errors:
                raise BenchError(f"{name}: a writer failed: {errors[0]}")
            counts = self._expected_counts(table, start_id, n, rls)
            rate = (m1["delivered"] - m0["delivered"]) / (t1 - t0)
            backlog = sum(counts) - gen.delivered
            timeout = max(a.drain_timeout, 3.0 * backlog / rate if rate > 0 else 0.0)
            t_drain = time.monotonic()
            result = gen.expect(counts, timeout)
            drain_s = time.monotonic() - t_drain
        finally:
            stop.set()
            gen.close()
            if profile is not None:
                self.profiles[name] = _finish_profile(profile)
        wall = t1 - t0
        inserted = sum(counts) // fanout
        out = {
            "phase": name,
            "table": table,
            "rls": rls,
            "subscribers": n,
            "writers": a.writers,
            "batch_rows": a.batch,
            "window_s": round(wall, 3),
            "subscribe_s": round(gen.ready["subscribe_s"], 2),
            "inserted_rows_per_s": round((rows1 - rows0) / wall, 1),
            "delivered_per_s": round(rate, 1),
            "delivered_rows_per_s": round(rate / fanout, 1),
            "deliveries_per_row": fanout,
            "writer_throttled_pct": round(100.0 * (thr1 - thr0) / (wall * a.writers), 1),
            # what the database took while the writers were not waiting
            "db_accepts_rows_per_s": round(
                (rows1 - rows0) * a.writers / max(wall * a.writers - (thr1 - thr0), 1e-3), 1
            ),
            "rows_total": inserted,
            "deliveries_expected": sum(counts),
            "backlog_at_stop": backlog,
            "drain_s": round(drain_s, 2),
            "generator_elu": _round(m1.get("generator_elu"), 3),
            **self._correctness(result),
            **self._usage(gen, s0, s1),
        }
        return out

    def _expected_counts(self, table: str, start_id: int, n: int, rls: bool) -> list[int]:
        with psycopg.connect(self.db.dsn) as conn:
            if rls:
                rows = conn.execute(
                    sql.SQL("select owner, count(*) from {} where id > %s group by owner").format(
                        sql.Identifier(table)
                    ),
                    (start_id,),
                ).fetchall()
                by_owner = {owner: int(c) for owner, c in rows}
                return [by_owner.get(f"user{i}", 0) for i in range(n)]
            row = conn.execute(
                sql.SQL("select count(*) from {} where id > %s").format(sql.Identifier(table)), (start_id,)
            ).fetchone()
            total = int(row[0]) if row else 0
            return [total] * n

    @staticmethod
    def _correctness(result: dict[str, Any]) -> dict[str, Any]:
        ok = (
            result["drained"]
            and result["shortfall"] == 0
            and result["excess"] == 0
            and result["wrong_owner"] == 0
            and result["bad_frames"] == 0
            and result["subscribers_closed"] == 0
        )
        return {
            "correct": bool(ok),
            "shortfall": result["shortfall"],
            "subscribers_short": result["subscribers_short"],
            "excess": result["excess"],
            "wrong_owner": result["wrong_owner"],
            "bad_frames": result["bad_frames"],
            "subscribers_closed": result["subscribers_closed"],
            "notes": result["notes"],
        }

    def run(self) -> None:
        a = self.args
        plan = {
            "a": ("(a) latency, items", lambda: self.latency_phase("a", "items", False)),
            "a-rls": ("(a) latency, items_rls", lambda: self.latency_phase("a-rls", "items_rls", True)),
            "b": (f"(b) {a.subscribers} subs, items_rls", lambda: self.throughput_phase("b", "items_rls", True)),
            "c": (f"(c) {a.subscribers} subs, items", lambda: self.throughput_phase("c", "items", False)),
        }
        for key in a.phases:
            label, fn = plan[key]
            if self.server is None or not self.server.alive():
                self.errors.append(f"{label}: skipped, the server is not running")
                continue
            print(f"{label} ...", flush=True)
            try:
                r = fn()
            except BenchError as e:
                msg = f"{label}: {e}"
                tail = self.server.stderr_tail() if self.server is not None else ""
                if "Traceback" in tail or "ERROR" in tail:
                    msg += f"\nserver stderr (tail):\n{tail[-1500:]}"
                self.errors.append(msg)
                print(f"error: {msg}", file=sys.stderr, flush=True)
                if self.server is not None and not self.server.alive():
                    self.errors.append(f"the server died; stderr (tail):\n{self.server.stderr_tail()}")
                continue
            r["label"] = label
            self.phases[key] = r
            _print_phase(r)


def _proc_ticks(pid: int, a: Snapshot, b: Snapshot) -> int:
    after = b.procs.get(pid)
    before = a.procs.get(pid)
    if after is None:
        return 0
    return after[2] - (before[2] if before is not None else 0)


# ------------------------------------------------------------------ profile


@dataclasses.dataclass
class _Profile:
    """A py-spy recording in progress."""

    proc: subprocess.Popen[bytes]
    out: Path


def _start_profile(pid: int, seconds: float, out: Path) -> _Profile | None:
    exe = shutil.which("py-spy")
    if exe is None:
        print("  (no py-spy on PATH: pip install py-spy; profile skipped)", flush=True)
        return None
    # --gil keeps only samples where the server holds the GIL, so shares are
    # of the Python CPU time, not of wall time spent waiting on sockets.
    cmd = [exe, "record", "--pid", str(pid), "--duration", str(max(1, int(seconds))), "--rate", "250"]
    cmd += ["--format", "raw", "--nonblocking", "--gil", "-o", str(out)]
    return _Profile(subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE), out)


def _finish_profile(profile: _Profile) -> dict[str, Any]:
    try:
        _, err = profile.proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        profile.proc.kill()
        _, err = profile.proc.communicate()
    if not profile.out.exists():
        return {"error": err.decode("utf-8", "replace")[-500:]}
    return summarize_profile(profile.out.read_text())


def _func(frame: str) -> str:
    """`name (path/to/file.py:123)` -> `name (file.py)`."""
    name, _, where = frame.partition(" (")
    where = where.rstrip(")")
    file = where.rsplit(":", 1)[0].rsplit("/", 1)[-1]
    return f"{name} ({file})" if file else name


def summarize_profile(raw: str, top: int = 25) -> dict[str, Any]:
    """Self and inclusive shares per function from py-spy's collapsed stacks."""
    self_counts: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        count = int(n)
        frames = [
            _func(f) for f in stack.split(";") if f and not f.startswith("process ") and not f.startswith("thread ")
        ]
        if not frames:
            continue
        total += count
        self_counts[frames[-1]] += count
        for f in set(frames):
            incl[f] += count
    if not total:
        return {"samples": 0}
    return {
        "samples": total,
        "self": [(f, round(100.0 * c / total, 1)) for f, c in self_counts.most_common(top)],
        "inclusive": [(f, round(100.0 * c / total, 1)) for f, c in incl.most_common(top * 2)],
    }


# ------------------------------------------------------------------ report


def _print_phase(r: dict[str, Any]) -> None:
    if "commit_to_client" in r:
        c, i = r["commit_to_client"], r["insert_to_client"]
        figures = (
            f"commit->client p50 {_fmt(c['p50_ms'], '.2f')} p99 {_fmt(c['p99_ms'], '.2f')} ms "
            f"(insert->client p50 {_fmt(i['p50_ms'], '.2f')} p99 {_fmt(i['p99_ms'], '.2f')}; {c['count']} samples)"
        )
    else:
        per_row = r["deliveries_per_row"]
        figures = (
            f"inserted {r['inserted_rows_per_s']:.0f} rows/s, delivered {r['delivered_per_s']:.0f}/s "
            + (f"(= {r['delivered_rows_per_s']:.0f} rows/s x {per_row} subscribers) " if per_row > 1 else "")
            + f"(writers waited {r['writer_throttled_pct']:.0f}% of the time; the database took "
            f"{r['db_accepts_rows_per_s']:.0f} rows/s while they wrote)"
        )
    print(
        f"  {figures}; server {_fmt(r['server_cpu_pct'])}% pg {_fmt(r['postgres_cpu_pct'])}% "
        f"gen {_fmt(r['generator_cpu_pct'])}% writers {_fmt(r['writer_cpu_pct'])}% others {_fmt(r['foreign_cpu_pct'])}%"
        + ("" if r["correct"] else f"  INCORRECT: {_correctness_text(r)}"),
        flush=True,
    )


def _correctness_text(r: dict[str, Any]) -> str:
    if r["correct"]:
        return "ok"
    parts = []
    for key in ("shortfall", "excess", "wrong_owner", "bad_frames", "subscribers_closed"):
        if r.get(key):
            parts.append(f"{key.replace('_', ' ')} {r[key]}")
    return ", ".join(parts) or "not drained"


def targets(phases: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Return {name: {target, value, met}} for the figures that were measured."""
    out: dict[str, dict[str, Any]] = {}
    a = phases.get("a")
    if a is not None:
        p50, p99 = a["commit_to_client"]["p50_ms"], a["commit_to_client"]["p99_ms"]
        out["a_commit_to_client_p50_ms"] = {
            "target": f"<= {TARGET_P50_MS}",
            "value": p50,
            "met": p50 is not None and p50 <= TARGET_P50_MS,
        }
        out["a_commit_to_client_p99_ms"] = {
            "target": f"<= {TARGET_P99_MS}",
            "value": p99,
            "met": p99 is not None and p99 <= TARGET_P99_MS,
        }
    b = phases.get("b")
    if b is not None:
        v = b["delivered_per_s"]
        out["b_rls_delivered_per_s"] = {
            "target": f">= {TARGET_RLS_DELIVERED_PER_S:.0f}",
            "value": v,
            "met": v >= TARGET_RLS_DELIVERED_PER_S,
        }
    for key, r in phases.items():
        out[f"{key}_correct"] = {
            "target": "no loss, no excess, own rows only",
            "value": _correctness_text(r),
            "met": r["correct"],
        }
    return out


def warnings(phases: dict[str, dict[str, Any]]) -> list[str]:
    out = []
    for key, r in phases.items():
        if (r.get("generator_cpu_pct") or 0) >= WARN_CPU_PCT:
            out.append(
                f"{key}: the subscribers' process used {r['generator_cpu_pct']:.0f}% of a core: "
                "it may be the bottleneck"
            )
        if (r.get("foreign_cpu_pct") or 0) >= WARN_FOREIGN_PCT:
            out.append(
                f"{key}: other processes used {r['foreign_cpu_pct']:.0f}% of a core meanwhile "
                f"({', '.join(r.get('foreign_top') or [])}): figures may be low"
            )
        if r.get("late_commits"):
            out.append(f"{key}: {r['late_commits']} commits started > 5 ms behind schedule (the writer was slow)")
    return out


def print_summary(phases: dict[str, dict[str, Any]], tgt: dict[str, dict[str, Any]], warn: list[str]) -> None:
    print()
    head = (
        f"{'phase':<26} {'subs':>5} {'rows/s':>8} {'deliv/s':>9} {'p50 ms':>7} {'p99 ms':>7} "
        f"{'srv%':>5} {'srvcore':>7} {'pg%':>5} {'gen%':>5} {'wrt%':>5} {'other%':>6}  correct"
    )
    print(head)
    print("-" * len(head))
    for r in phases.values():
        lat = r.get("commit_to_client", {})
        rows = r.get("inserted_rows_per_s", r.get("rate"))
        print(
            f"{r['label']:<26} {r['subscribers']:>5} {_fmt(rows):>8} {_fmt(r['delivered_per_s']):>9} "
            f"{_fmt(lat.get('p50_ms'), '.2f'):>7} {_fmt(lat.get('p99_ms'), '.2f'):>7} "
            f"{_fmt(r['server_cpu_pct']):>5} {_fmt(r['server_core_busy_pct']):>7} "
            f"{_fmt(r['postgres_cpu_pct']):>5} {_fmt(r['generator_cpu_pct']):>5} "
            f"{_fmt(r['writer_cpu_pct']):>5} {_fmt(r['foreign_cpu_pct']):>6}  {_correctness_text(r)}"
        )
    print(
        "(p50/p99: commit acknowledged to the writer -> frame received; rows/s: inserted; deliv/s: frames received "
        "by all subscribers over the window; CPU in % of one core: srv = server, srvcore = the server's core busy "
        "(any process), pg = PostgreSQL, gen = Node subscribers, wrt = Python writers, other = unrelated processes)"
    )
    for key in ("a", "a-rls"):
        r = phases.get(key)
        if r is not None:
            i, rt = r["insert_to_client"], r["insert_commit_roundtrip"]
            print(
                f"{key}: insert sent -> client p50 {_fmt(i['p50_ms'], '.2f')} p99 {_fmt(i['p99_ms'], '.2f')} ms; "
                f"INSERT+COMMIT round trip p50 {_fmt(rt['p50_ms'], '.2f')} p99 {_fmt(rt['p99_ms'], '.2f')} ms"
            )
    print()
    for name, t in tgt.items():
        mark = "PASS" if t["met"] else "FAIL"
        print(f"[{mark}] {name}: {t['value']} (target {t['target']})")
    for w in warn:
        print(f"warning: {w}")


def print_profiles(profiles: dict[str, Any]) -> None:
    for name, prof in profiles.items():
        print()
        if not prof.get("samples"):
            print(f"profile {name}: no samples {prof.get('error', '')}")
            continue
        print(f"profile of the server during phase {name} ({prof['samples']} py-spy samples holding the GIL):")
        print("  self time:")
        for f, p in prof["self"][:15]:
            print(f"    {p:5.1f}%  {f}")
        print("  inclusive:")
        for f, p in prof["inclusive"][:30]:
            print(f"    {p:5.1f}%  {f}")


# -------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    """Run the Postgres Changes bench with command-line arguments `argv`; return the exit status."""
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
    print(
        f"postgres-changes bench: {args.subscribers} subscribers, {args.duration:g} s windows, {pin.description}",
        flush=True,
    )
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="rt-bench-pg-") as tmp:
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
            "subscribers": args.subscribers,
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "latency_rate": args.rate,
            "batch_rows": args.batch,
            "writers": args.writers,
            "max_lag_s": args.max_lag,
            "phases": args.phases,
            "profile": args.profile,
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
