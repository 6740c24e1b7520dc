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
After the writers stop, every subscriber must receive exactly the rows the
database holds for it (read with SQL: every row of ``items``, its own rows of
``items_rls``): each row's ``record.id`` once, and the rows of each writer
in that writer's commit order (a writer commits one transaction after the
other, so its ids grow; the ``body`` of a throughput row names its writer).
Whatever else happens (a row lost, repeated, out of order or not its own, a
malformed frame, a subscriber closed by the server) makes the phase an
error with a "FAILED: ..." diagnosis (bench/_verify.py): it gives no figure,
and the bench exits with status 1 without scoring the targets. The same
holds for (a): every committed row, once, in commit order.

The server runs on the first allowed core and the subscribers on the second
(taskset); the writers share the second core; PostgreSQL is left on every
core. Each window also reads /proc: CPU of the server, PostgreSQL (when
embedded), the generator and the writers, each core's busy time, and other
processes' CPU (the machine may be shared). ``--profile`` runs py-spy on the server
during every measured window and prints where its time goes.

What the benchmarks share (the database, the server, the Node process, the
writer threads, /proc and py-spy) lives in bench/_harness.py and the modules
it names; this module holds the tables, the phases and their report.

The targets (p50 <= 5 ms and p99 <= 25 ms commit -> client in (a), >= 20k
delivered changes/s in (b)) live here only: printed, written to the JSON
file, never asserted by unit tests. ``--check-targets`` turns a miss into
exit status 3.
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
from psycopg import sql

from bench._harness import DatabaseBench, add_server_options
from bench._node import NodeProcess
from bench._proc import Snapshot
from bench._profile import print_profiles
from bench._report import WARN_CPU_PCT, WARN_FOREIGN_PCT, fmt, percentile, rounded, run_main, target
from bench._servers import BenchError, Pinning, token
from bench._verify import verify_subscribers
from bench._writers import PacedWriter, ThrottledWriter, join_all

__all__ = ["main"]

DEFAULT_JSON = Path(__file__).resolve().parent / "results" / "postgres_changes.json"

TARGET_P50_MS = 5.0  # (a) commit -> client, one subscriber, 100 changes/s
TARGET_P99_MS = 25.0
TARGET_RLS_DELIVERED_PER_S = 20_000.0  # (b) 100 subscribers, RLS by `sub`

# Tenant limits raised so that they never throttle the bench (docs/protocol.md §9.1 names).
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

PROBLEMS_KEPT = 20  # per failed phase, the per-subscriber summaries kept in the JSON file

_PROFILE_HEADING = "profile of the server during phase {name} ({samples} py-spy samples holding the GIL):"


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
    p.add_argument("--grace-ms", type=int, default=250, help="after the last deliveries arrived: wait for late extras")
    p.add_argument(
        "--subscriber-fault",
        choices=("duplicate-loss", "reorder"),
        help="falsify what the first subscriber records (the bench's own tests: every phase must then fail)",
    )
    p.add_argument(
        "--phases", default="a,a-rls,b,c", help="comma-separated phases to run: a, a-rls, b, c (default: all)"
    )
    add_server_options(p, DEFAULT_JSON)
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


# ----------------------------------------------------------------- writers


class LatencyWriter(PacedWriter):
    """Single-row INSERT commits at a fixed rate; records (body ns, commit acknowledged ns)."""

    def __init__(self, dsn: str, table: str, owner: str, rate: float, seconds: float) -> None:
        super().__init__(dsn, f"latency writer {table}", rate, seconds)
        self.owner = owner
        self.query = sql.SQL("insert into {} (owner, body) values (%s, %s)").format(sql.Identifier(table))
        self.samples: list[tuple[int, int]] = []

    def write(self, conn: psycopg.Connection[Any]) -> None:
        conn.execute(self.query, (self.owner, "0"))  # connection warm-up, not a sample
        conn.execute(self.query, (self.owner, "0"))
        super().write(conn)

    def send_one(self, conn: psycopg.Connection[Any]) -> None:
        t0 = time.monotonic_ns()
        conn.execute(self.query, (self.owner, str(t0)))
        self.samples.append((t0, time.monotonic_ns()))


class BulkWriter(ThrottledWriter):
    """Multi-row INSERT transactions as fast as the database takes them, within the allowed lead.

    Each row's body is the writer's lane, "w<k>": the subscribers must get
    one writer's rows in the order it committed them.
    """

    def __init__(
        self,
        dsn: str,
        table: str,
        owners: int,
        batch: int,
        offset: int,
        lane: int,
        allowed: Callable[[], bool],
        stop: threading.Event,
    ) -> None:
        super().__init__(dsn, f"bulk writer {table} {lane}", allowed, stop)
        self.owners, self.batch, self.offset, self.lane = owners, batch, offset, lane
        # Rows are generated by the database: the writer's own CPU stays out of the way.
        self.query = sql.SQL(
            "insert into {} (owner, body) select 'user' || ((%s + g) %% %s), %s from generate_series(0, %s) g"
        ).format(sql.Identifier(table))
        self.rows = 0

    def send_batch(self, conn: psycopg.Connection[Any]) -> None:
        conn.execute(self.query, (self.offset, self.owners, f"w{self.lane}", self.batch - 1))
        self.rows += self.batch
        self.offset = (self.offset + self.batch) % self.owners


# ----------------------------------------------------------------- figures


def _expect(gen: NodeProcess, counts: list[int], timeout: float, grace_ms: int) -> dict[str, Any]:
    """Wait until subscriber i received counts[i] rows (pg_subscribers.js `expect`); return its result."""
    arg = json.dumps({"counts": counts, "timeout_s": timeout, "grace_ms": grace_ms})
    return gen.command("expect " + arg, timeout + 30 + grace_ms / 1000, "result")


def expected_rows(rows: list[tuple[int, str | None, str | None]], n: int, rls: bool) -> list[set[int]]:
    """The ids each of `n` subscribers must receive of `rows` (id, owner, body).

    Without RLS every subscriber sees every row (one set, shared); with RLS
    subscriber i sees the rows whose owner is "user<i>" (its JWT's sub).
    """
    if not rls:
        every = {r[0] for r in rows}
        return [every] * n
    index = {f"user{i}": i for i in range(n)}
    sets: list[set[int]] = [set() for _ in range(n)]
    for row_id, owner, _ in rows:
        i = index.get(owner or "")
        if i is not None:
            sets[i].add(row_id)
    return sets


def writer_lanes(rows: list[tuple[int, str | None, str | None]]) -> dict[int, int] | None:
    """id -> the bulk writer that inserted it (body "w<k>"); None when one writer (the latency phase) wrote them."""
    lanes = {r[0]: int(r[2][1:]) for r in rows if r[2] is not None and r[2].startswith("w")}
    return lanes or None


def _latency_summary(values_ms: list[float]) -> dict[str, Any]:
    return {
        "count": len(values_ms),
        "p50_ms": rounded(percentile(values_ms, 0.50), 3),
        "p90_ms": rounded(percentile(values_ms, 0.90), 3),
        "p99_ms": rounded(percentile(values_ms, 0.99), 3),
        "p999_ms": rounded(percentile(values_ms, 0.999), 3),
        "max_ms": rounded(max(values_ms), 3) if values_ms else None,
        "min_ms": rounded(min(values_ms), 3) if values_ms else None,
        "mean_ms": rounded(sum(values_ms) / len(values_ms), 3) if values_ms else None,
    }


# -------------------------------------------------------------------- bench


class Bench(DatabaseBench):
    """The server, its database and the phases; every figure ends up in `phases`."""

    # py-spy samples 250 times a second without pausing the server.
    profile_rate: ClassVar[int] = 250
    profile_nonblocking: ClassVar[bool] = True

    def __init__(self, args: argparse.Namespace, node: str, pin: Pinning, work: Path) -> None:
        super().__init__(args, node, pin, work)
        n = max(args.subscribers, 1)
        self.tokens = work / "tokens.txt"
        self.tokens.write_text(
            "".join(token(self.secret, {"role": "authenticated", "sub": f"user{i}"}) + "\n" for i in range(n))
        )

    def start(self) -> None:
        self.start_server(SERVER_ENV)
        self.url = f"ws://127.0.0.1:{self.port}/socket/websocket?vsn=2.0.0"
        # The server's migrations made the roles and the publication.
        self._create_tables()
        # Writers stay off the server's core. PostgreSQL, started above, keeps every core.
        self.pin_writers()

    def _create_tables(self) -> None:
        """Create items and items_rls and add them to supabase_realtime (the server made the roles)."""
        with psycopg.connect(self.db.dsn, autocommit=True) as conn:
            conn.execute(_SCHEMA)
            if conn.execute("select 1 from pg_publication where pubname = 'supabase_realtime'").fetchone() is None:
                conn.execute("create publication supabase_realtime")
            conn.execute("alter publication supabase_realtime add table items, items_rls")

    # -- measuring

    def _subscribers(self, table: str, count: int, *, latency: bool) -> NodeProcess:
        opts = ["--url", self.url, "--tokens", str(self.tokens), "--table", table, "--subscribers", str(count)]
        if latency:
            opts.append("--latency")
        if self.args.subscriber_fault:
            opts += ["--fault", self.args.subscriber_fault]
        gen = self.node_process("pg_subscribers.js", opts, f"pg_subscribers.{table}.{count}")
        gen.wait_ready(60 + count / 10)
        return gen

    def _max_id(self, table: str) -> int:
        with psycopg.connect(self.db.dsn) as conn:
            row = conn.execute(sql.SQL("select coalesce(max(id), 0) from {}").format(sql.Identifier(table))).fetchone()
        return int(row[0]) if row else 0

    def _rows_since(self, table: str, start_id: int) -> list[tuple[int, str | None, str | None]]:
        """(id, owner, body) of every row past `start_id`: what the database committed in the phase."""
        with psycopg.connect(self.db.dsn) as conn:
            query = sql.SQL("select id, owner, body from {} where id > %s order by id").format(sql.Identifier(table))
            return [(int(i), o, b) for i, o, b in conn.execute(query, (start_id,)).fetchall()]

    def _verify(self, result: dict[str, Any], expected: list[set[int]], lanes: dict[int, int] | None) -> dict[str, Any]:
        """The phase's verification (bench/_verify.py) from what pg_subscribers.js reported."""
        v = verify_subscribers(result.pop("subscribers"), expected, lanes, "id")
        v["problems"] = v["problems"][:PROBLEMS_KEPT]
        v["drained"] = result["drained"]
        v["notes"] = result["notes"]
        return v

    def latency_phase(self, name: str, table: str, rls: bool) -> dict[str, Any]:
        """One subscriber, --rate single-row commits per second; commit -> client percentiles."""
        a = self.args
        start_id = self._max_id(table)
        gen = self._subscribers(table, 1, latency=True)
        profile = None
        try:
            writer = LatencyWriter(self.db.dsn, table, "user0", a.rate, a.warmup + a.duration)
            t_start = time.monotonic_ns()
            writer.start()
            time.sleep(a.warmup)
            profile = self.start_profile(name, a.duration)
            window_from = time.monotonic_ns()
            m0, s0 = gen.mark("start"), Snapshot.take()
            time.sleep(a.duration)
            m1, s1 = gen.mark("end"), Snapshot.take()
            window_to = time.monotonic_ns()
            if (error := join_all([writer], a.duration + 30)) is not None:
                raise BenchError(f"{name}: the writer failed: {error}")
            rows = self._rows_since(table, start_id)
            expected = expected_rows(rows, 1, rls)
            result = _expect(gen, [len(expected[0])], max(a.drain_timeout, 5.0), a.grace_ms)
        finally:
            gen.close()
            self.finish_profile(name, profile)
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
        usage = self.window_usage(gen.pid, s0, s1)
        return {
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
            "verification": self._verify(result, expected, None),
            **usage,
        }

    def throughput_phase(self, name: str, table: str, rls: bool) -> dict[str, Any]:
        """N subscribers, bulk inserts as fast as the database takes them; delivered changes/s."""
        a = self.args
        n = a.subscribers
        fanout = 1 if rls else n  # deliveries per row
        start_id = self._max_id(table)
        gen = self._subscribers(table, n, latency=False)
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
                BulkWriter(self.db.dsn, table, n, a.batch, k * (n // a.writers), k, allowed, stop)
                for k in range(a.writers)
            )
            for w in writers:
                w.start()
            time.sleep(a.warmup)
            profile = self.start_profile(name, a.duration)
            m0, s0 = gen.mark("start"), Snapshot.take()
            rows0, thr0, t0 = sum(w.rows for w in writers), sum(w.throttled_s for w in writers), time.monotonic()
            time.sleep(a.duration)
            m1, s1 = gen.mark("end"), Snapshot.take()
            rows1, thr1, t1 = sum(w.rows for w in writers), sum(w.throttled_s for w in writers), time.monotonic()
            stop.set()
            if (error := join_all(writers, 30)) is not None:
                raise BenchError(f"{name}: a writer failed: {error}")
            rows = self._rows_since(table, start_id)
            expected = expected_rows(rows, n, rls)
            counts = [len(e) for e in expected]
            rate = (m1["delivered"] - m0["delivered"]) / (t1 - t0)
            backlog = sum(counts) - gen.delivered
            timeout = max(a.drain_timeout, 3.0 * backlog / rate if rate > 0 else 0.0)
            t_drain = time.monotonic()
            result = _expect(gen, counts, timeout, a.grace_ms)
            drain_s = time.monotonic() - t_drain
        finally:
            stop.set()
            gen.close()
            self.finish_profile(name, profile)
        wall = t1 - t0
        inserted = len(rows)
        return {
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
            "generator_elu": rounded(m1.get("generator_elu"), 3),
            "verification": self._verify(result, expected, writer_lanes(rows)),
            **self.window_usage(gen.pid, s0, s1),
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
            if self.server_down(label):
                continue
            r = self.attempt(label, fn)
            if r is None:
                continue
            v = r["verification"]
            if v["exact"]:
                self.phases[key] = r
                _print_phase(r)
                continue
            self.failed[key] = r  # no figure
            msg = (
                f"{label}: the subscribers did not receive exactly the rows committed "
                f"({v['subscribers_exact']} of {v['subscribers']} did); no figure\n" + "\n".join(v["diagnosis"])
            )
            self.errors.append(msg)
            print(f"error: {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------ report


def _print_phase(r: dict[str, Any]) -> None:
    if "commit_to_client" in r:
        c, i = r["commit_to_client"], r["insert_to_client"]
        figures = (
            f"commit->client p50 {fmt(c['p50_ms'], '.2f')} p99 {fmt(c['p99_ms'], '.2f')} ms "
            f"(insert->client p50 {fmt(i['p50_ms'], '.2f')} p99 {fmt(i['p99_ms'], '.2f')}; {c['count']} samples)"
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
        f"  {figures}; server {fmt(r['server_cpu_pct'])}% pg {fmt(r['postgres_cpu_pct'])}% "
        f"gen {fmt(r['generator_cpu_pct'])}% writers {fmt(r['writer_cpu_pct'])}% others {fmt(r['foreign_cpu_pct'])}%; "
        + _exact_text(r),
        flush=True,
    )


def _exact_text(r: dict[str, Any]) -> str:
    v = r["verification"]
    return f"exact ({v['expected_per_subscriber_min']}-{v['expected_per_subscriber_max']} rows each)"


def targets(phases: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Return {name: {target, value, met}} for the figures that were measured."""
    out: dict[str, dict[str, Any]] = {}
    a = phases.get("a")
    if a is not None:
        p50, p99 = a["commit_to_client"]["p50_ms"], a["commit_to_client"]["p99_ms"]
        out["a_commit_to_client_p50_ms"] = target(f"<= {TARGET_P50_MS}", p50, p50 is not None and p50 <= TARGET_P50_MS)
        out["a_commit_to_client_p99_ms"] = target(f"<= {TARGET_P99_MS}", p99, p99 is not None and p99 <= TARGET_P99_MS)
    b = phases.get("b")
    if b is not None:
        v = b["delivered_per_s"]
        out["b_rls_delivered_per_s"] = target(
            f">= {TARGET_RLS_DELIVERED_PER_S:.0f}", v, v >= TARGET_RLS_DELIVERED_PER_S
        )
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
        f"{'srv%':>5} {'srvcore':>7} {'pg%':>5} {'gen%':>5} {'wrt%':>5} {'other%':>6}  verified"
    )
    print(head)
    print("-" * len(head))
    for r in phases.values():
        lat = r.get("commit_to_client", {})
        rows = r.get("inserted_rows_per_s", r.get("rate"))
        print(
            f"{r['label']:<26} {r['subscribers']:>5} {fmt(rows):>8} {fmt(r['delivered_per_s']):>9} "
            f"{fmt(lat.get('p50_ms'), '.2f'):>7} {fmt(lat.get('p99_ms'), '.2f'):>7} "
            f"{fmt(r['server_cpu_pct']):>5} {fmt(r['server_core_busy_pct']):>7} "
            f"{fmt(r['postgres_cpu_pct']):>5} {fmt(r['generator_cpu_pct']):>5} "
            f"{fmt(r['writer_cpu_pct']):>5} {fmt(r['foreign_cpu_pct']):>6}  {_exact_text(r)}"
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
                f"{key}: insert sent -> client p50 {fmt(i['p50_ms'], '.2f')} p99 {fmt(i['p99_ms'], '.2f')} ms; "
                f"INSERT+COMMIT round trip p50 {fmt(rt['p50_ms'], '.2f')} p99 {fmt(rt['p99_ms'], '.2f')} ms"
            )
    print()
    for name, t in tgt.items():
        mark = "PASS" if t["met"] else "FAIL"
        print(f"[{mark}] {name}: {t['value']} (target {t['target']})")
    for w in warn:
        print(f"warning: {w}")


# -------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    """Run the Postgres Changes bench with command-line arguments `argv`; return the exit status."""
    return run_main(_run, _parse_args(argv))


def _run(args: argparse.Namespace) -> int:
    bench = Bench.measure(
        args,
        node_users="the subscribers",
        banner=f"postgres-changes bench: {args.subscribers} subscribers, {args.duration:g} s windows",
        folder_prefix="rt-bench-pg-",
    )
    tgt = {} if bench.errors else targets(bench.phases)
    warn = warnings(bench.phases)
    print_summary(bench.phases, tgt, warn)
    print_profiles(bench.profiles, _PROFILE_HEADING)
    config = {
        "subscribers": args.subscribers,
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "latency_rate": args.rate,
        "batch_rows": args.batch,
        "writers": args.writers,
        "max_lag_s": args.max_lag,
        "grace_ms": args.grace_ms,
        "subscriber_fault": args.subscriber_fault,
        "phases": args.phases,
        "profile": args.profile,
    }
    return bench.finish(config, tgt, warn)


if __name__ == "__main__":
    sys.exit(main())
