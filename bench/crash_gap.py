"""Postgres Changes across a server crash: which rows a resubscribing client gets, misses or gets twice.

Run as ``python -m bench.crash_gap``. It starts a PostgreSQL (the embedded
one, or a database of its own inside DATABASE_URL) and ``realtime-core serve``
on it, creates a published table, and subscribes one official Python client
(``realtime``'s AsyncRealtimeClient, auto-reconnect on, its own backoff) to
its INSERTs. A writer thread commits one row per 1/--rate s, ids 1, 2, 3, ...
Then, --kills times: --steady seconds of deliveries, SIGKILL of the server,
a restart on the same port (after --down seconds), and the client's own
reconnect and rejoin. After a last --steady window the writer stops and the
bench waits for the last row.

Every committed id is then classified: delivered once, delivered more than
once (duplicated), or never (missing). A missing row is attributed to the
crash whose window it was committed in: from the previous resubscription
(the client's `Subscribed to PostgreSQL` system message) to this crash's
resubscription. Rows missing outside every window, duplicates, or a client
that never resubscribes are errors (exit status 1); missing rows inside a
window are the figure this bench measures.

Each crash reports the rows it lost, split into those committed before the
kill (read or sent, not received) and after it, and the times from the kill
to the restarted server answering /healthcheck and to the resubscription.
Figures are printed and written to --json (bench/results/crash_gap.json).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import shlex
import signal
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psycopg

from bench._database import Database
from bench._report import finish, run_main
from bench._servers import BenchError, OurServer, free_port, new_secret, our_command, token

__all__ = ["main"]

DEFAULT_JSON = Path(__file__).resolve().parent / "results" / "crash_gap.json"
SUBSCRIBED = "Subscribed to PostgreSQL"
RESUBSCRIBE_TIMEOUT_S = 60.0
DRAIN_TIMEOUT_S = 15.0


@dataclass
class Crash:
    """One kill -9 and what followed, times in seconds after the kill."""

    killed_at: float  # time.monotonic()
    server_ready_s: float = 0.0
    resubscribed_s: float | None = None
    missing: int = 0
    missing_before_kill: int = 0
    first_missing_id: int | None = None
    last_missing_id: int | None = None


class RowWriter(threading.Thread):
    """Commits one row per 1/rate s until stopped; committed[i] is when row i + 1 was acknowledged."""

    def __init__(self, dsn: str, rate: float) -> None:
        super().__init__(daemon=True, name="crash-gap-writer")
        self.dsn, self.rate = dsn, rate
        self.committed: list[float] = []
        self.stop_event = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with psycopg.connect(self.dsn, autocommit=True) as conn:
                start = time.monotonic()
                while not self.stop_event.is_set():
                    row_id = len(self.committed) + 1
                    conn.execute("insert into crash_gap (id) values (%s)", (row_id,))
                    self.committed.append(time.monotonic())
                    wait = start + row_id / self.rate - time.monotonic()
                    if wait > 0:
                        time.sleep(wait)
        except BaseException as exc:  # reported by the bench
            self.error = exc


class CrashGap:
    """The server, its database, the writer and the client of one run."""

    def __init__(self, args: argparse.Namespace, work: Path) -> None:
        self.args = args
        self.work = work
        self.secret = new_secret()
        self.db = Database(work)
        self.port = free_port()
        self.server: OurServer | None = None
        self.servers_started = 0
        self.delivered: dict[int, int] = {}
        self.subscribed_at: list[float] = []
        self.crashes: list[Crash] = []
        self.totals: dict[str, int] = {}
        self.errors: list[str] = []

    # -- server

    def start_server(self) -> float:
        """Start realtime-core serve on self.port; return when it answered /healthcheck (monotonic)."""
        env = {
            **os.environ,
            "DATABASE_URL": self.db.dsn,
            "SLOT_NAME_SUFFIX": self.db.name,
            "REALTIME_JWT_SECRET": self.secret,
            "REALTIME_DB_BROADCAST": "false",
        }
        cmd = our_command(self.args.server_cmd, self.port)
        self.servers_started += 1
        if self.servers_started == 1:
            print(f"starting the server: {shlex.join(cmd)}", flush=True)
        self.server = OurServer(f"server{self.servers_started}", cmd, env, self.work)
        self.server.start(self.port, token(self.secret, {"role": "anon"}))
        return time.monotonic()

    def kill_server(self) -> float:
        """SIGKILL the server (the process listening on the port); return when (monotonic)."""
        assert self.server is not None and self.server.proc is not None
        os.kill(self.server.pid, signal.SIGKILL)
        killed_at = time.monotonic()
        self.server.proc.wait()
        return killed_at

    def create_table(self) -> None:
        with psycopg.connect(self.db.dsn, autocommit=True) as conn:
            conn.execute("create table crash_gap (id bigint primary key, inserted_at timestamptz default now())")
            conn.execute("alter publication supabase_realtime add table crash_gap")
            conn.execute("grant select on crash_gap to anon")

    # -- client

    def on_change(self, payload: dict[str, Any]) -> None:
        row_id = int(payload["data"]["record"]["id"])
        self.delivered[row_id] = self.delivered.get(row_id, 0) + 1

    def on_system(self, payload: Any) -> None:
        message = payload.get("message") if isinstance(payload, dict) else getattr(payload, "message", None)
        if message == SUBSCRIBED:
            self.subscribed_at.append(time.monotonic())

    async def wait_subscribed(self, count: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while len(self.subscribed_at) < count:
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.01)
        return True

    # -- run

    async def run(self) -> None:
        from realtime import AsyncRealtimeClient

        args = self.args
        await asyncio.to_thread(self.start_server)
        self.create_table()
        client = AsyncRealtimeClient(
            f"ws://127.0.0.1:{self.port}/socket",
            token(self.secret, {"role": "anon"}),
            max_retries=100,
            initial_backoff=args.client_backoff,
        )
        await client.connect()
        channel = client.channel("crash-gap")
        channel.on_postgres_changes("INSERT", schema="public", table="crash_gap", callback=self.on_change)
        channel.on_system(self.on_system)
        await channel.subscribe()
        if not await self.wait_subscribed(1, RESUBSCRIBE_TIMEOUT_S):
            raise BenchError("the client never got 'Subscribed to PostgreSQL'")
        writer = RowWriter(self.db.dsn, args.rate)
        writer.start()
        try:
            for k in range(args.kills):
                await asyncio.sleep(args.steady)
                crash = Crash(killed_at=await asyncio.to_thread(self.kill_server))
                self.crashes.append(crash)
                await asyncio.sleep(args.down)
                ready = await asyncio.to_thread(self.start_server)
                crash.server_ready_s = ready - crash.killed_at
                if not await self.wait_subscribed(k + 2, RESUBSCRIBE_TIMEOUT_S):
                    raise BenchError(f"crash {k + 1}: the client did not resubscribe within {RESUBSCRIBE_TIMEOUT_S} s")
                crash.resubscribed_s = self.subscribed_at[k + 1] - crash.killed_at
                print(
                    f"crash {k + 1}: server ready after {crash.server_ready_s:.2f} s,"
                    f" client resubscribed after {crash.resubscribed_s:.2f} s",
                    flush=True,
                )
            await asyncio.sleep(args.steady)
        finally:
            writer.stop_event.set()
            await asyncio.to_thread(writer.join, 10)
        if writer.error is not None:
            raise BenchError(f"the writer failed: {writer.error!r}")
        last = len(writer.committed)
        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        while last not in self.delivered and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        await client.close()
        self.classify(writer.committed)

    def classify(self, committed: list[float]) -> None:
        """Attribute every missing row to the crash whose window it was committed in."""
        windows = [
            (self.subscribed_at[k], self.subscribed_at[k + 1], crash)  # previous and this crash's resubscription
            for k, crash in enumerate(self.crashes)
        ]
        unexplained: list[int] = []
        for index, at in enumerate(committed):
            row_id = index + 1
            if row_id in self.delivered:
                continue
            crash = next((c for start, end, c in windows if start < at <= end), None)
            if crash is None:
                unexplained.append(row_id)
                continue
            crash.missing += 1
            crash.missing_before_kill += at < crash.killed_at
            crash.first_missing_id = crash.first_missing_id or row_id
            crash.last_missing_id = row_id
        duplicated = sorted(i for i, n in self.delivered.items() if n > 1)
        self.totals = {
            "committed": len(committed),
            "delivered_once": sum(1 for n in self.delivered.values() if n == 1),
            "duplicated": len(duplicated),
            "missing": len(committed) - len(self.delivered),
            "missing_outside_crash_windows": len(unexplained),
        }
        if unexplained:
            self.errors.append(f"{len(unexplained)} rows missing outside every crash window, e.g. {unexplained[:10]}")
        if duplicated:
            self.errors.append(f"{len(duplicated)} rows delivered more than once, e.g. {duplicated[:10]}")


def _run(args: argparse.Namespace) -> int:
    print(f"crash gap: {args.rate:g} rows/s, {args.kills} kill -9, {args.steady:g} s between", flush=True)
    with tempfile.TemporaryDirectory(prefix="rt_crash_gap_") as tmp:
        bench = CrashGap(args, Path(tmp))
        try:
            bench.db.start()
            pg_version = bench.db.version()
            asyncio.run(bench.run())
        finally:
            if bench.server is not None:
                bench.server.stop()
            bench.db.stop()
    missing = [c.missing for c in bench.crashes]
    print(f"\n{'crash':>5} {'missing':>8} {'before kill':>12} {'server ready s':>15} {'resubscribed s':>15}")
    for k, c in enumerate(bench.crashes, 1):
        resub = f"{c.resubscribed_s:.2f}" if c.resubscribed_s is not None else "-"
        print(f"{k:>5} {c.missing:>8} {c.missing_before_kill:>12} {c.server_ready_s:>15.2f} {resub:>15}")
    t = bench.totals
    print(
        f"\ncommitted {t['committed']}, delivered once {t['delivered_once']}, duplicated {t['duplicated']},"
        f" missing {t['missing']} (outside crash windows: {t['missing_outside_crash_windows']})"
    )
    summary = {
        "missing_per_crash_min": min(missing),
        "missing_per_crash_median": statistics.median(missing),
        "missing_per_crash_max": max(missing),
        "missing_ms_per_crash_median": round(statistics.median(missing) / args.rate * 1000),
    }
    print(
        f"missing rows per crash: min {summary['missing_per_crash_min']},"
        f" median {summary['missing_per_crash_median']:g}, max {summary['missing_per_crash_max']}"
        f" (at {args.rate:g} rows/s: ~{summary['missing_ms_per_crash_median']} ms of commits)"
    )
    report = {
        "environment": {
            "python": platform.python_version(),
            "machine": platform.machine(),
            "postgres": pg_version,
            "postgres_source": "DATABASE_URL" if os.environ.get("DATABASE_URL") else "embedded",
        },
        "config": {**vars(args), "json": str(args.json)},
        "totals": t,
        "summary": summary,
        "crashes": [{k: v for k, v in asdict(c).items() if k != "killed_at"} for c in bench.crashes],
        "errors": bench.errors,
    }
    return finish(args.json, report, bench.errors, {}, False)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.crash_gap", description=__doc__.split("\n\n")[0])
    p.add_argument("--rate", type=float, default=100.0, help="rows committed per second (default 100)")
    p.add_argument("--kills", type=int, default=3, help="kill -9 and restart cycles (default 3)")
    p.add_argument("--steady", type=float, default=3.0, help="seconds of deliveries before each kill and at the end")
    p.add_argument("--down", type=float, default=0.0, help="seconds the killed server stays down before its restart")
    p.add_argument(
        "--client-backoff", type=float, default=1.0, help="the client's initial_backoff in s (its default: 1.0)"
    )
    p.add_argument("--json", type=Path, default=DEFAULT_JSON, help="where to write the figures")
    p.add_argument("--server-cmd", help="command line of the server ({host} and {port} are substituted)")
    args = p.parse_args(argv)
    if args.kills < 1 or args.rate <= 0:
        p.error("--kills must be at least 1 and --rate positive")
    return run_main(_run, args)


if __name__ == "__main__":
    sys.exit(main())
