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
  so every join runs the server's RLS read check (docs/protocol.md §3.3 step 10, §7). Ok
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
  the window. After the writers stop, every subscriber must have received
  exactly every n sent, once each, and each writer's numbers in the order
  it sent them (every message names its writer; StreamCheck in
  bench/js/client.js), and the database must hold every message.
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

What the benchmarks share (the database, the server, the Node process, the
writer threads, /proc and py-spy) lives in bench/_harness.py and the modules
it names; this module holds the policy, the phases and their report.

A run of (2) or (3) that does not deliver exactly what was sent (a message
lost, repeated, out of its writer's order or never sent, a malformed frame,
a subscriber closed by the server) is an error with a "FAILED: ..."
diagnosis (bench/_verify.py): it gives no figure, and the bench exits with
status 1 without scoring the targets.

The targets (>= 1,000 private joins/s with no error; >= 10,000 database
broadcasts/s delivered, each to all --subscribers) live here only: printed,
written to the JSON file, never asserted by unit tests. ``--check-targets``
turns a miss into exit status 3.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import psycopg

from bench._harness import DatabaseBench, add_server_options
from bench._node import NodeProcess
from bench._proc import Snapshot
from bench._profile import print_profiles
from bench._report import WARN_CPU_PCT, WARN_IDLE_CORE_PCT, fmt, percentile, rounded, run_main, target
from bench._servers import BenchError, Pinning, token
from bench._verify import diagnose
from bench._writers import PacedWriter, ThrottledWriter, join_all
from console.client import AdminApiError, AdminClient
from realtime_core.metrics import Sample

__all__ = ["main"]

DEFAULT_JSON = Path(__file__).resolve().parent / "results" / "private.json"

TARGET_JOINS_PER_S = 1_000.0  # (1) ok replies to private joins per second
TARGET_DB_BROADCASTS_PER_S = 10_000.0  # (2) realtime.send messages/s delivered to every subscriber

# Tenant limits raised so that they never throttle the bench (docs/protocol.md §9.1 names).
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

LATENCY_LANE = 1000  # (3)'s writer; (2)'s writers are lanes 0 .. --writers - 1
PROBLEMS_KEPT = 20  # per failed run, the per-subscriber summaries kept in the JSON file
MIN_LEAD_DELIVERIES = 20_000  # (2): deliveries the writers may always be ahead by
# Core time not spent by the bench's processes (foreign, short-lived, kernel)
# that makes a window suspect; ~5-10 % is the kernel's share of our traffic.
WARN_OTHER_PCT = 20.0
QUIET_PCT = 15.0  # --wait-quiet: busy time of every core together, in % of one, between runs

_PROFILE_HEADING = "profile of the server during {name} ({samples} samples, py-spy --gil: CPU only):"


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
    p.add_argument("--grace-ms", type=int, default=250, help="after the last deliveries arrived: wait for late extras")
    p.add_argument(
        "--subscriber-fault",
        choices=("duplicate-loss",),
        help="falsify what the first subscriber records (the bench's own tests: (2) and (3) must then fail)",
    )
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
    add_server_options(p, DEFAULT_JSON)
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


def scrape_metrics(port: int) -> list[Sample]:
    """GET /metrics through the console's client; its samples (none when unreachable)."""
    with AdminClient(f"http://127.0.0.1:{port}", token="") as client:
        try:
            return client.samples()
        except AdminApiError:
            return []


def _metric(m: list[Sample], name: str) -> float | None:
    """Sum of `name` over its label sets (one tenant here)."""
    values = [s.value for s in m if s.name == name]
    return sum(values) if values else None


def _increase(before: list[Sample], after: list[Sample], name: str) -> float:
    """How much the counter `name` grew between two scrapes (0 where it is missing)."""
    return (_metric(after, name) or 0) - (_metric(before, name) or 0)


def histogram_delta(before: list[Sample], after: list[Sample], name: str) -> dict[str, Any] | None:
    """The Prometheus histogram `name` observed between two scrapes: counts per bucket and estimates.

    Quantiles are bucket upper bounds: "p99 <= 10 ms" means the 99th
    percentile fell in the bucket that ends at 10 ms."""
    buckets: dict[str, float] = {}
    for s in after:
        if s.name == name + "_bucket":
            buckets[s.labels["le"]] = buckets.get(s.labels["le"], 0.0) + s.value
    if not buckets:
        return None
    for s in before:
        if s.name == name + "_bucket" and s.labels["le"] in buckets:
            buckets[s.labels["le"]] -= s.value
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


# Every message carries its number, the writer's CLOCK_MONOTONIC before the
# statement and the writer's lane (its numbers grow); realtime.send adds
# "id". The database makes the rows: the writers' own CPU stays out of the way.
_SEND_BATCH = (
    "select realtime.send(jsonb_build_object('i', %s::bigint + g, 't', %s::bigint, 'w', %s::int), %s, %s)"
    " from generate_series(0, %s) g"
)
_SEND_ONE = "select realtime.send(jsonb_build_object('i', %s::bigint, 't', %s::bigint, 'w', %s::int), %s, %s)"


class _SendWarnings:
    """WarnSendingBroadcastMessage notices on one connection: realtime.send swallowed an error."""

    def __init__(self) -> None:
        self.count = 0
        self.first: str | None = None

    def __call__(self, diag: psycopg.errors.Diagnostic) -> None:
        text = diag.message_primary or ""
        if "WarnSendingBroadcastMessage" in text:
            self.count += 1
            if self.first is None:
                self.first = text


def _connect(dsn: str, warnings: _SendWarnings) -> psycopg.Connection[Any]:
    """A writer's connection, named for pg_stat_activity, counting realtime.send's warnings."""
    conn = psycopg.connect(dsn, autocommit=True, application_name="bench_private_writer")
    conn.add_notice_handler(warnings)
    return conn


class BulkWriter(ThrottledWriter):
    """--batch realtime.send calls per statement, as fast as the database takes them, within the allowed lead."""

    def __init__(
        self, dsn: str, numbers: Numbers, batch: int, allowed: Callable[[], bool], stop: threading.Event, k: int
    ) -> None:
        super().__init__(dsn, f"bulk writer {k}", allowed, stop)
        self.numbers, self.batch, self.lane = numbers, batch, k
        self.sent = 0  # messages in committed statements
        self.warnings = _SendWarnings()
        self.statement_s: list[float] = []

    def connect(self) -> psycopg.Connection[Any]:
        return _connect(self.dsn, self.warnings)

    def send_batch(self, conn: psycopg.Connection[Any]) -> None:
        start = self.numbers.take(self.batch)
        t0 = time.monotonic_ns()
        conn.execute(_SEND_BATCH, (start, t0, self.lane, EVENT, ROOM, self.batch - 1))
        self.statement_s.append((time.monotonic_ns() - t0) / 1e9)
        self.sent += self.batch


class LatencyWriter(PacedWriter):
    """One realtime.send per statement at a fixed rate; records each statement's round trip."""

    def __init__(self, dsn: str, numbers: Numbers, rate: float, seconds: float) -> None:
        super().__init__(dsn, "paced writer", rate, seconds)
        self.numbers = numbers
        self.sent = 0  # messages in committed statements
        self.warnings = _SendWarnings()
        self.roundtrip_ms: list[float] = []

    def connect(self) -> psycopg.Connection[Any]:
        return _connect(self.dsn, self.warnings)

    def send_one(self, conn: psycopg.Connection[Any]) -> None:
        n = self.numbers.take(1)
        t0 = time.monotonic_ns()
        conn.execute(_SEND_ONE, (n, t0, LATENCY_LANE, EVENT, ROOM))
        self.roundtrip_ms.append((time.monotonic_ns() - t0) / 1e6)
        self.sent += 1


# --------------------------------------------------------------------- bench


class Bench(DatabaseBench):
    """The server, its database and the phases; every figure ends up in `phases`."""

    # Blocking sampling (no --nonblocking): reading a running process
    # truncated two thirds of the stacks here, which hides where the
    # time goes. Pausing 100 times a second costs the server a little.
    profile_rate: ClassVar[int] = 100
    profile_nonblocking: ClassVar[bool] = False

    def __init__(self, args: argparse.Namespace, node: str, pin: Pinning, work: Path) -> None:
        super().__init__(args, node, pin, work)
        self.token = token(self.secret, {"role": "authenticated", "sub": "bench"})
        self.numbers = Numbers()
        self.subscribers: NodeProcess | None = None  # shared by (2) and (3)
        self.pg_pinned = 0  # PostgreSQL processes moved to the generator's core

    # -- lifecycle

    def start(self) -> None:
        env = dict(SERVER_ENV)
        if self.args.db_pool_size:
            env["DB_POOL_SIZE"] = str(self.args.db_pool_size)
        self.start_server(env)
        self.url = f"ws://127.0.0.1:{self.port}/socket/websocket?apikey={self.token}&vsn=2.0.0"
        # The server's migrations made realtime.messages, its partitions and the roles.
        with psycopg.connect(self.db.dsn, autocommit=True) as conn:
            conn.execute(
                "create policy bench_read on realtime.messages for select to authenticated"
                f" using (realtime.topic() like '{TOPIC_PREFIX}%')"
            )
        self.pin_writers()
        if self.pin.generator_cpu is not None and not self.args.pg_anywhere:
            self.pg_pinned = self.db.pin_to(self.pin.generator_cpu)

    def stop(self) -> None:
        if self.subscribers is not None:
            self.subscribers.close()
            self.subscribers = None
        super().stop()

    # -- measuring

    def _usage(self, gen: NodeProcess, a: Snapshot, b: Snapshot) -> dict[str, Any]:
        u = self.window_usage(gen.pid, a, b)
        ours = u["server_cpu_pct"] + (u["postgres_cpu_pct"] or 0.0) + u["generator_cpu_pct"] + u["writer_cpu_pct"]
        # Every core's busy time not spent by the bench's processes: the
        # other processes above, those that started and ended within the
        # window (a test suite's), and the kernel (softirqs of our own
        # loopback traffic too, a few %).
        u["other_load_pct"] = round(max(0.0, sum(u["core_busy_pct"].values()) - ours), 1)
        return u

    def joins_phase(self, run: int) -> dict[str, Any]:
        """(1): private joins as fast as replies come; ok and error replies per second."""
        a = self.args
        prefix = f"{TOPIC_PREFIX}{run}-"  # every run joins topics no earlier run used
        gen = self.node_process(
            "private_joins.js",
            [
                *("--url", self.url, "--connections", str(a.connections), "--outstanding", str(a.outstanding)),
                *("--duration", str(a.duration), "--warmup", str(a.warmup), "--prefix", prefix),
            ],
            f"private_joins.{run}",
        )
        profile = None
        try:
            gen.reply(60, "the measure_start mark", "mark")
            m0, s0 = scrape_metrics(self.port), Snapshot.take()
            profile = self.start_profile(f"joins.{run}", a.duration)
            gen.reply(a.duration + 30, "the measure_end mark", "mark")
            m1, s1 = scrape_metrics(self.port), Snapshot.take()
            result = gen.reply(60, "the result", "result")
        finally:
            gen.close()
            self.finish_profile(f"joins.{run}", profile)
        win = result["window"]
        total = result["total"]
        errors_total = total["error"] + total["timeout"] + total["closed"]
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
            "server_join_errors": int(_increase(m0, m1, "realtime_channel_join_errors_total")),
            "join_roundtrip": {
                k: rounded(v, 2) if isinstance(v, float) else v for k, v in result["join_roundtrip"].items()
            },
            "read_check": histogram_delta(m0, m1, READ_CHECK),
            "channels_joined_at_end": _metric(m1, "realtime_channels_joined"),
            "connections_closed": result["connections_closed"],
            "notes": result["notes"],
            "generator_elu": rounded(result.get("generator_elu"), 3),
            **self._usage(gen, s0, s1),
        }

    def _open_subscribers(self) -> NodeProcess:
        if self.subscribers is not None:
            return self.subscribers
        a = self.args
        gen = self.node_process(
            "private_subscribers.js",
            [
                *("--url", self.url, "--subscribers", str(a.subscribers), "--topic", f"realtime:{ROOM}"),
                *("--event", EVENT, "--latency-subscribers", str(min(a.latency_subscribers, a.subscribers))),
                *(("--fault", a.subscriber_fault) if a.subscriber_fault else ()),
            ],
            "private_subscribers",
        )
        gen.wait_ready(60 + a.subscribers / 10)
        self.subscribers = gen
        return gen

    def _expect_all(self, gen: NodeProcess, rate: float) -> tuple[dict[str, Any], float]:
        """Wait until every subscriber holds every number issued so far; return (result, drain seconds)."""
        total = self.numbers.issued
        backlog = total * self.args.subscribers - gen.delivered
        timeout = max(self.args.drain_timeout, 3.0 * backlog / rate if rate > 0 else 0.0)
        t = time.monotonic()
        arg = json.dumps({"total": total, "timeout_s": timeout, "grace_ms": self.args.grace_ms})
        result = gen.command("expect " + arg, timeout + 30 + self.args.grace_ms / 1000, "result")
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
            return behind < max(floor, a.max_lag * gen.rate(stale_after=0.5) / n)

        profile = None
        pg_m0 = scrape_metrics(self.port)
        try:
            writers.extend(BulkWriter(self.db.dsn, self.numbers, a.batch, allowed, stop, k) for k in range(a.writers))
            for w in writers:
                w.start()
            time.sleep(a.warmup)
            profile = self.start_profile(f"broadcast.{run}", a.duration)
            sent0, thr0 = sum(w.sent for w in writers), sum(w.throttled_s for w in writers)
            mk0, m0, s0 = gen.mark("start"), scrape_metrics(self.port), Snapshot.take()
            t0_ns = time.monotonic_ns()
            time.sleep(a.duration)
            mk1, m1, s1 = gen.mark("end"), scrape_metrics(self.port), Snapshot.take()
            t1_ns = time.monotonic_ns()
            sent1, thr1 = sum(w.sent for w in writers), sum(w.throttled_s for w in writers)
            stop.set()
            if (error := join_all(writers, 60)) is not None:
                raise BenchError(f"a writer failed: {error}")
            wall = (t1_ns - t0_ns) / 1e9
            rate = (mk1["delivered"] - mk0["delivered"]) / wall
            result, drain_s = self._expect_all(gen, rate)
            latency = _latency(gen, t0_ns, t1_ns)
        finally:
            stop.set()
            self.finish_profile(f"broadcast.{run}", profile)
        pg_m1 = scrape_metrics(self.port)
        statements = [s for w in writers for s in w.statement_s]
        issued = self.numbers.issued
        db_rows = self._db_rows()
        return {
            "phase": "broadcast",
            "subscribers": n,
            "writers": a.writers,
            "batch": a.batch,
            "window_s": round(wall, 3),
            "subscribe_s": round(gen.ready["subscribe_s"], 2),
            "inserts_per_s": round((sent1 - sent0) / wall, 1),
            "deliveries_per_s": round(rate, 1),
            "delivered_messages_per_s": round(rate / n, 1),
            "server_deliveries_per_s": round(_increase(m0, m1, "realtime_db_broadcast_delivered_total") / wall, 1),
            "writer_throttled_pct": round(100.0 * (thr1 - thr0) / (wall * a.writers), 1),
            "statement_ms_p50": rounded(_ms(percentile(statements, 0.5)), 2),
            "statement_ms_p99": rounded(_ms(percentile(statements, 0.99)), 2),
            "send_to_client": latency,
            "messages_issued": issued,
            "db_rows": db_rows,
            "send_warnings": sum(w.warnings.count for w in writers),
            "send_first_warning": next((w.warnings.first for w in writers if w.warnings.first), None),
            "dropped_by_server": int(_increase(pg_m0, pg_m1, "realtime_db_broadcast_dropped_total")),
            "drain_s": round(drain_s, 2),
            "generator_elu": rounded(mk1.get("generator_elu"), 3),
            "verification": _verification(result, issued, db_rows),
            **self._usage(gen, s0, s1),
        }

    def latency_phase(self, run: int) -> dict[str, Any]:
        """(3): single sends at --latency-rate; send -> client percentiles over every recording subscriber."""
        a = self.args
        gen = self._open_subscribers()
        writer = LatencyWriter(self.db.dsn, self.numbers, a.latency_rate, a.latency_duration)
        mk0, s0 = gen.mark("start"), Snapshot.take()
        t0_ns = time.monotonic_ns()
        writer.start()
        error = join_all([writer], a.latency_duration + 60)
        mk1, s1 = gen.mark("end"), Snapshot.take()
        t1_ns = time.monotonic_ns()
        if error is not None:
            raise BenchError(f"the writer failed: {error}")
        result, drain_s = self._expect_all(gen, 0.0)
        latency = _latency(gen, t0_ns, t1_ns)
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
            "send_to_client": latency,
            "statement_ms_p50": rounded(percentile(writer.roundtrip_ms, 0.5), 2),
            "statement_ms_p99": rounded(percentile(writer.roundtrip_ms, 0.99), 2),
            "messages_issued": issued,
            "db_rows": db_rows,
            "send_warnings": writer.warnings.count,
            "send_first_warning": writer.warnings.first,
            "drain_s": round(drain_s, 2),
            "verification": _verification(result, issued, db_rows),
            **self._usage(gen, s0, s1),
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
        if self.server_down(label):
            return None
        quiet = self._wait_quiet()
        r = self.attempt(label, lambda: fn(k))
        if r is None:
            return None
        v = r.get("verification")
        if v is not None and not v["exact"]:
            self.failed[f"{key}.{k}"] = r  # no figure
            msg = (
                f"{label}: the subscribers did not receive exactly the {v['messages_issued']} messages sent "
                f"({v['subscribers_exact']} of {v['subscribers']} did); no figure\n" + "\n".join(v["diagnosis"])
            )
            self.errors.append(msg)
            print(f"error: {msg}", file=sys.stderr, flush=True)
            return None
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
        # A shared machine makes some runs slow: the total of join errors covers every run.
        if "errors_total" in mid:
            mid["errors_total_all_runs"] = sum(r["errors_total"] for r in runs)
    return mid


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1000


def _latency(gen: NodeProcess, from_ns: int, to_ns: int) -> dict[str, Any]:
    """Send -> client percentiles of the messages sent between two instants (private_subscribers.js `latency`)."""
    latency = gen.command("latency " + json.dumps({"from_ns": from_ns, "to_ns": to_ns}), 30, "latency")
    return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in latency.items() if k != "event"}


def _verification(result: dict[str, Any], issued: int, db_rows: int) -> dict[str, Any]:
    """The run's verification (private_subscribers.js `expect`), with the database's count and the diagnosis."""
    v = dict(result["verification"])
    problems = v.pop("problems")
    lines = diagnose(problems, "message")
    if db_rows != issued:
        lines.append(f"FAILED: the database holds {db_rows} broadcast rows of the {issued} messages sent")
    v.update(
        exact=v["exact"] and db_rows == issued,
        messages_issued=issued,
        db_rows=db_rows,
        drained=result["drained"],
        diagnosis=lines,
        problems=problems[:PROBLEMS_KEPT],
        notes=result["notes"],
    )
    return v


# ------------------------------------------------------------------ report


def _exact_text(r: dict[str, Any]) -> str:
    v = r["verification"]
    return f"exact ({v['messages_issued']} x {v['subscribers']})"


def _cpu_text(r: dict[str, Any]) -> str:
    return (
        f"server {fmt(r['server_cpu_pct'])}% (core {fmt(r['server_core_busy_pct'])}%) "
        f"pg {fmt(r['postgres_cpu_pct'])}% gen {fmt(r['generator_cpu_pct'])}% "
        f"writers {fmt(r['writer_cpu_pct'])}% other load {fmt(r['other_load_pct'])}%"
    )


def _print_phase(r: dict[str, Any]) -> None:
    if r["phase"] == "joins":
        rc = r.get("read_check") or {}
        rt = r["join_roundtrip"]
        print(
            f"  {r['joins_ok_per_s']:.0f} ok joins/s, {r['errors_window']} errors in the window "
            f"({r['errors_total']} in all); join round trip p50 {fmt(rt['p50_ms'], '.1f')} "
            f"p99 {fmt(rt['p99_ms'], '.1f')} ms; read check mean {fmt(rc.get('mean_ms'), '.2f')} ms "
            f"p99 <= {rc.get('p99_le_ms', '-')} ms",
            flush=True,
        )
    elif r["phase"] == "broadcast":
        lat = r["send_to_client"]
        print(
            f"  {r['inserts_per_s']:.0f} inserts/s, {r['deliveries_per_s']:.0f} deliveries/s "
            f"({r['delivered_messages_per_s']:.0f} messages/s to all {r['subscribers']}); writers waited "
            f"{r['writer_throttled_pct']:.0f}% of the time; send->client p50 {fmt(lat['p50_ms'], '.1f')} "
            f"p99 {fmt(lat['p99_ms'], '.1f')} ms; {_exact_text(r)}",
            flush=True,
        )
    else:
        lat = r["send_to_client"]
        print(
            f"  send->client p50 {fmt(lat['p50_ms'], '.2f')} p99 {fmt(lat['p99_ms'], '.2f')} ms "
            f"({lat['count']} samples); {_exact_text(r)}",
            flush=True,
        )
    print(f"  CPU: {_cpu_text(r)}", flush=True)


def targets(phases: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Return {name: {target, value, met}} for the figures that were measured (median runs)."""
    out: dict[str, dict[str, Any]] = {}
    j = phases.get("joins")
    if j is not None:
        v = j["joins_ok_per_s"]
        out["private_joins_per_s"] = target(f">= {TARGET_JOINS_PER_S:.0f}", v, v >= TARGET_JOINS_PER_S)
        errors = j.get("errors_total_all_runs", j["errors_total"])
        out["private_join_errors"] = target("0", errors, errors == 0)
    b = phases.get("broadcast")
    if b is not None:
        v = b["delivered_messages_per_s"]
        want = f">= {TARGET_DB_BROADCASTS_PER_S:.0f} (each to all {b['subscribers']} subscribers)"
        out["db_broadcasts_delivered_per_s"] = target(want, v, v >= TARGET_DB_BROADCASTS_PER_S)
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

    def row(name: str, value: str, goal: dict[str, Any] | None = None) -> None:
        mark = "" if goal is None else ("PASS" if goal["met"] else "FAIL")
        want = "" if goal is None else goal["target"].split(" (")[0]
        print(f"{name:<50} {value:>24}  {want:<9} {mark}")

    j = phases.get("joins")
    if j is not None:
        rt, rc = j["join_roundtrip"], j.get("read_check") or {}
        row(
            "(1) private joins/s (ok replies)",
            fmt(j["joins_ok_per_s"]) + _spread(j, "joins_ok_per_s"),
            tgt.get("private_joins_per_s"),
        )
        row("(1) join errors", str(j.get("errors_total_all_runs", j["errors_total"])), tgt.get("private_join_errors"))
        row("(1) join round trip p50 / p99 ms", f"{fmt(rt['p50_ms'])} / {fmt(rt['p99_ms'])}")
        if rc:
            row(
                "(1) server read check mean ms, p50 / p99 bucket",
                f"{fmt(rc['mean_ms'], '.1f')}, <= {rc['p50_le_ms']} / <= {rc['p99_le_ms']}",
            )
        row(
            "(1) CPU % server / pg / generator",
            f"{fmt(j['server_cpu_pct'])} / {fmt(j['postgres_cpu_pct'])} / {fmt(j['generator_cpu_pct'])}",
        )
    b = phases.get("broadcast")
    if b is not None:
        lat = b["send_to_client"]
        row(
            f"(2) db broadcasts delivered/s, each to all {b['subscribers']}",
            fmt(b["delivered_messages_per_s"]) + _spread(b, "delivered_messages_per_s"),
            tgt.get("db_broadcasts_delivered_per_s"),
        )
        row("(2) deliveries/s at the subscribers", fmt(b["deliveries_per_s"]))
        row("(2) inserts/s through realtime.send", fmt(b["inserts_per_s"]))
        row("(2) writers waiting for deliveries, % of time", fmt(b["writer_throttled_pct"]))
        row("(2) send -> client p50 / p99 ms, saturated", f"{fmt(lat['p50_ms'])} / {fmt(lat['p99_ms'])}")
        row("(2) every subscriber got every message once", _exact_text(b)[:24])
        row(
            "(2) CPU % server / pg / generator / writers",
            f"{fmt(b['server_cpu_pct'])} / {fmt(b['postgres_cpu_pct'])} / "
            f"{fmt(b['generator_cpu_pct'])} / {fmt(b['writer_cpu_pct'])}",
        )
    lt = phases.get("latency")
    if lt is not None:
        lat = lt["send_to_client"]
        row(
            f"(3) send -> client p50 / p99 ms at {lt['rate']:g}/s",
            f"{fmt(lat['p50_ms'], '.2f')} / {fmt(lat['p99_ms'], '.2f')}",
        )
        row("(3) statement round trip p50 ms", fmt(lt["statement_ms_p50"], ".2f"))
        row("(3) every subscriber got every message once", _exact_text(lt)[:24])
    print(
        "(CPU in % of one core over the window: server = realtime-core, pg = PostgreSQL and its backends, "
        "generator = the Node process, writers = this process. Read check: the server's histogram, pool wait "
        "included. Saturated latency includes the writers' lead of up to --max-lag seconds.)"
    )
    for w in warn:
        print(f"warning: {w}")


# The frames every sample of `realtime-core serve` starts with.
_ROOT_FRAMES = ("(cli.py)", "(runners.py)", "run (__init__.py)", "(realtime-core)", "(__main__.py)")


# --------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    """Run the private-channel bench with command-line arguments `argv`; return the exit status."""
    return run_main(_run, _parse_args(argv))


def _run(args: argparse.Namespace) -> int:
    bench = Bench.measure(
        args,
        node_users="the generators",
        banner=f"private bench: {args.duration:g} s windows, {args.subscribers} subscribers",
        folder_prefix="rt-bench-private-",
    )
    tgt = {} if bench.errors else targets(bench.phases)
    warn = warnings(bench.phases)
    print_summary(bench.phases, tgt, warn)
    print_profiles(bench.profiles, _PROFILE_HEADING, hide=_ROOT_FRAMES)
    pin = bench.pin
    config = {
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
        "grace_ms": args.grace_ms,
        "subscriber_fault": args.subscriber_fault,
        "postgres_cpu": f"cpu{pin.generator_cpu} ({bench.pg_pinned} processes moved)" if bench.pg_pinned else "any",
        "server_env": SERVER_ENV,
    }
    return bench.finish(config, tgt, warn)


if __name__ == "__main__":
    sys.exit(main())
