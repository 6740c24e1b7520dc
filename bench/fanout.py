"""The fan-out benchmark: realtime-core against a reference Node `ws` server.

Run as ``python -m bench.fanout`` or ``realtime-core bench fanout`` (which
calls main() with the remaining arguments). It reproduces the measurements of
docs/design.md §2 on this machine:

- deliveries per second with S subscribers on one topic and one publisher
  sending ~100-byte broadcasts (binary kind 3 in, kind 4 out, docs/protocol.md §2.3) as
  fast as a bounded in-flight window allows (bench/js/loadgen.js);
- p50/p99 latency at a moderate rate, the same for every server: a fraction
  (default 25 %) of the slower server's median deliveries/s;
- idle memory per connection: the server process's RSS growth over N idle,
  joined connections (bench/js/idle.js).

Every broadcast carries a sequence number and every run checks that each
subscriber received exactly 1 .. sent, once each, in order, and that the
server closed none (bench/js/loadgen.js, bench/_verify.py); the idle
connections must all stay open. A run that fails this is an error with a
"FAILED: ..." diagnosis, gives no figure, and the bench exits with status 1
without scoring the targets.

The same generator drives realtime-core and bench/js/ws_server.js, a fair,
idiomatic `ws` fan-out that frames each broadcast once. Servers run on one
core and the generator on another (taskset) when there are two. At the start
and end of every measured window the generator prints a mark, and this
module reads /proc: the server's CPU, each core's busy time, and the CPU of
unrelated processes (the machine may be shared). Runs of the servers are
interleaved so such noise falls on both alike. A last run per server and S
takes part of the generator's core away (--headroom-burn): if the rate holds,
the generator was not the bottleneck.

The targets (>= 1.2x the reference's deliveries/s at S = 1000, <= 10 KB per
idle connection) live in bench/_report.py only: they are printed and written
to the JSON file, and never asserted by unit tests. ``--check-targets`` turns
a missed target into exit status 3.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bench._cluster import Nodes, PrivateRedis, Workers, cluster_env
from bench._node import JS_DIR, ensure_node
from bench._proc import ProcessTree, Snapshot, raise_nofile, rss_kb
from bench._report import environment, finish, print_run, print_summary, run_main, summarize
from bench._servers import (
    BenchError,
    OurServer,
    Pinning,
    ReferenceServer,
    Server,
    free_port,
    new_secret,
    our_command,
    pinning,
    token,
)
from bench._verify import diagnose

__all__ = ["main"]

DEFAULT_JSON = Path(__file__).resolve().parent / "results" / "fanout.json"

# Tenant limits raised so that they never throttle the bench (docs/protocol.md §9.1 names).
OUR_ENV = {
    "TENANT_MAX_CONCURRENT_USERS": "100000",
    "TENANT_MAX_EVENTS_PER_SECOND": "100000000",
    "TENANT_MAX_JOINS_PER_SECOND": "100000",
    "TENANT_MAX_CHANNELS_PER_CLIENT": "100",
    "LOG_LEVEL": "warning",
    # One key for every server of every run: with an external DATABASE_URL they share the stored
    # (sealed) tenant secrets, which a key generated per run could not open.
    "DB_ENC_KEY": os.environ.get("DB_ENC_KEY") or "realtime-core-bench-db-enc-key",
}
IDLE_WARMUP_CONNECTIONS = 100  # opened and closed first: one-time costs stay out of the figure
IDLE_SETTLE_S = 2.0
MAX_CONSECUTIVE_FAILURES = 2
PROBLEMS_KEPT = 20  # per failed run, the per-subscriber summaries kept in the JSON file
FAULTS = ("duplicate", "drop", "reorder", "close")  # js/ws_server.js --fault
TRACED_TOPIC = "bench"  # loadgen.js's topic, realtime:bench
TRACED_SUB = "bench-traced"  # no bench client has this sub


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="realtime-core bench fanout",
        description="Fan-out throughput, latency and idle memory: realtime-core against Node ws.",
    )
    p.add_argument("--subscribers", default="100,1000,5000", help="comma-separated S values")
    p.add_argument("--duration", type=float, default=5.0, help="measured seconds per run")
    p.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds before each window")
    p.add_argument("--repeat", type=int, default=3, help="throughput runs per server and S (the median is kept)")
    p.add_argument(
        "--latency-fraction",
        type=float,
        default=0.25,
        help="latency-phase rate as a fraction of the slower server's deliveries/s",
    )
    p.add_argument(
        "--latency-deliveries",
        type=float,
        default=0.0,
        help="fixed latency-phase deliveries/s for every S (overrides --latency-fraction)",
    )
    p.add_argument("--idle-connections", type=int, default=5000, help="0 skips the memory measurement")
    p.add_argument(
        "--window-deliveries",
        type=int,
        default=50000,
        help="throughput phase: least deliveries in flight (the window grows to 250 ms of deliveries)",
    )
    p.add_argument(
        "--headroom-burn",
        type=float,
        # Against Node ws, which writes every frame apart, the generator
        # spends 4-7 us per delivery (one read per frame), 45-95 % of its
        # core at the reference's rates: half would always fail.
        default=0.25,
        help="share of the generator's core taken away in one extra run per server and S (0: no such run)",
    )
    p.add_argument("--client", choices=("raw", "ws"), default="raw", help="the generator's WebSocket client")
    p.add_argument("--json", type=Path, default=DEFAULT_JSON, help="where to write the figures")
    p.add_argument("--skip-reference", action="store_true", help="do not run the Node ws server")
    p.add_argument("--skip-ours", action="store_true", help="do not run realtime-core")
    p.add_argument(
        "--server-cmd",
        help="command line of our server; {host} and {port} are substituted, and "
        "'--host 127.0.0.1 --port N' is appended when it has no {port}",
    )
    p.add_argument("--no-pin", action="store_true", help="do not pin servers and generator to cores")
    p.add_argument(
        "--reference-fault",
        choices=FAULTS,
        help="break the reference server on purpose (the bench's own tests: every run must then fail)",
    )
    p.add_argument(
        "--grace-ms", type=int, default=250, help="after the last broadcast reached everyone: wait for late extras"
    )
    p.add_argument("--check-targets", action="store_true", help="exit with status 3 when a target is missed")
    p.add_argument(
        "--trace",
        action="store_true",
        help="measure ours with a delivery trace running on the bench topic (a subject that is not joined: "
        "one decision per broadcast), to show what tracing costs",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        help="above 1: our server with `serve --workers N` on Redis against one worker, alternated"
        " (no reference server; servers not pinned, the generator is)",
    )
    p.add_argument(
        "--nodes",
        type=int,
        default=1,
        help="above 1 (`bench cluster`): N nodes on N ports, subscribers spread over them, the publisher"
        " on the first, against one node, alternated",
    )
    p.add_argument("--redis", help="Redis of --workers/--nodes (default: a redis-server of the bench's own)")
    p.add_argument(
        "--admin-pollers",
        type=int,
        default=0,
        help="consoles polling every admin GET once a second beside our server, on the generator's core"
        " (bench/admin_poll.py); 0: none",
    )
    args = p.parse_args(argv)
    try:
        args.subscribers = [int(s) for s in args.subscribers.split(",") if s.strip()]
    except ValueError:
        p.error("--subscribers takes comma-separated integers, e.g. 100,1000,5000")
    if not args.subscribers or min(args.subscribers) < 1:
        p.error("--subscribers needs at least one positive count")
    if args.skip_ours and args.skip_reference:
        p.error("--skip-ours and --skip-reference leave nothing to measure")
    if args.admin_pollers < 0 or (args.admin_pollers and args.skip_ours):
        p.error("--admin-pollers needs a non-negative count, and our server")
    if args.workers < 1 or args.nodes < 1 or (args.workers > 1 and args.nodes > 1):
        p.error("--workers and --nodes take a positive count, and not both above 1")
    if (args.workers > 1 or args.nodes > 1) and args.skip_ours:
        p.error("--workers and --nodes measure our server: not with --skip-ours")
    if args.trace and (args.skip_ours or args.workers > 1 or args.nodes > 1):
        p.error("--trace measures one process of our server: not with --skip-ours, --workers or --nodes")
    if args.workers > 1 or args.nodes > 1:
        args.skip_reference = True
    if args.workers > 1 and args.json == DEFAULT_JSON:
        args.json = DEFAULT_JSON.with_name("fanout-workers.json")
    return args


# ------------------------------------------------------------------- runs


class Bench:
    """Runs the generator against the servers and collects every figure."""

    def __init__(self, args: argparse.Namespace, node: str, pin: Pinning) -> None:
        self.args = args
        self.node = node
        self.pin = pin
        self.servers: dict[str, Server] = {}
        self.runs: list[dict[str, Any]] = []
        self.idle: dict[str, dict[str, Any]] = {}
        self.failed: list[dict[str, Any]] = []  # runs that did not deliver exactly what was sent
        self.errors: list[str] = []
        self._failures: dict[str, int] = {}  # consecutive failed runs per server
        self.measured: dict[str, ProcessTree] = {}  # other processes whose CPU each run reports (redis)
        self.admin_secret = new_secret()  # our server's API_JWT_SECRET (admin pollers, --trace)
        self._trace: str | None = None  # the delivery trace running on ours (--trace)

    def _node(self, script: str, *opts: object) -> list[str]:
        return [*self.pin.generator, self.node, str(JS_DIR / script), *(str(o) for o in opts)]

    # -- one generator run

    def loadgen(self, server: Server, subscribers: int, phase: str, **opts: object) -> dict[str, Any]:
        """Run one loadgen.js phase; return its result with the /proc figures of its window."""
        a = self.args
        extra = [x for k, v in opts.items() for x in (f"--{k.replace('_', '-')}", v)]
        sub_urls = getattr(server, "sub_urls", None)
        if sub_urls:
            extra += ["--sub-urls", ",".join(sub_urls)]
        cmd = self._node(
            "loadgen.js",
            *("--url", server.url, "--subscribers", subscribers, "--phase", phase),
            *("--duration", a.duration, "--warmup", a.warmup, "--client", a.client, "--grace-ms", a.grace_ms),
            *extra,
        )
        others = {name: ProcessTree(s.pid) for name, s in self.servers.items() if s.alive()}
        others |= self.measured
        result: dict[str, Any] | None = None
        window: dict[str, Any] = {}
        with tempfile.TemporaryFile() as err:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err)
            assert proc.stdout is not None
            gen = ProcessTree(proc.pid)
            timeout = 120 + 4 * (a.duration + a.warmup) + subscribers / 50
            watchdog = threading.Timer(timeout, proc.kill)
            watchdog.start()
            start: Snapshot | None = None
            try:
                for line in proc.stdout:  # loadgen.js prints JSON lines only
                    msg = json.loads(line)
                    if msg.get("name") == "measure_start":
                        start = Snapshot.take()
                    elif msg.get("name") == "measure_end" and start is not None:
                        window = start.usage(Snapshot.take(), servers=others, generator=gen, ignore=[os.getpid()])
                    elif msg.get("event") in ("result", "error"):
                        result = msg
                proc.wait()
            finally:
                watchdog.cancel()
            err.seek(0)
            stderr = err.read().decode("utf-8", "replace")[-2000:]
        if result is None:
            result = {"event": "error", "error": f"loadgen exited with status {proc.returncode}: {stderr}"}
        if result["event"] == "error":
            tail = server.stderr_tail()[-1500:]
            tail = f"\n{server.name} server stderr (tail):\n{tail}" if tail else ""
            raise BenchError(f"{server.name}, S={subscribers}, {phase}: {result.get('error')}{tail}")
        del result["event"]
        self._verify(server, subscribers, phase, result)
        # The measured server's own figures, and the other server idling meanwhile.
        window["server_cpu_pct"] = window.pop(f"{server.name}_cpu_pct", None)
        window["server_children_cpu_pct"] = window.pop(f"{server.name}_children_cpu_pct", None)
        if getattr(server, "cpu_includes_children", False) and window["server_cpu_pct"] is not None:
            # Workers or nodes under one parent: the server is the whole tree.
            window["server_cpu_pct"] = round(window["server_cpu_pct"] + (window["server_children_cpu_pct"] or 0), 1)
        for name in self.measured:
            window.pop(f"{name}_children_cpu_pct", None)
        for name in others:
            if name != server.name and name not in self.measured:
                window[f"idle_{name}_cpu_pct"] = window.pop(f"{name}_cpu_pct", None)
                window.pop(f"{name}_children_cpu_pct", None)
        cores = window.get("core_busy_pct", {})
        window["server_core_busy_pct"] = cores.get(f"cpu{self.pin.server_cpu}")
        window["generator_core_busy_pct"] = cores.get(f"cpu{self.pin.generator_cpu}")
        return {"server": server.name, **result, **window}

    def _verify(self, server: Server, subscribers: int, phase: str, result: dict[str, Any]) -> None:
        """Raise BenchError with a diagnosis unless every subscriber received exactly 1 .. sent, in order."""
        v = result["verification"]
        problems = v.pop("problems")
        if v["exact"]:
            return
        lines = diagnose(problems, "seq")
        if v["publisher_received"]:
            lines.append(
                f"FAILED: the publisher received {v['publisher_received']} of its own broadcasts (self: false)"
            )
        if v["publisher_closed"]:
            lines.append("FAILED: the server closed the publisher")
        v["diagnosis"] = lines
        v["problems"] = problems[:PROBLEMS_KEPT]
        self.failed.append({"server": server.name, **result})
        where = f"{server.name}, S={subscribers}, {phase}"
        raise BenchError(
            f"{where}: the subscribers did not receive exactly the {v['sent']} broadcasts sent "
            f"({v['subscribers_exact']} of {v['subscribers']} did); no figure\n" + "\n".join(lines)
        )

    # -- idle memory

    def measure_idle(self, server: Server) -> dict[str, Any]:
        """Return the server process's RSS growth over N idle joined connections, in KB each."""
        n = self.args.idle_connections
        self._hold_idle(server, min(IDLE_WARMUP_CONNECTIONS, n), "realtime:idle-warmup")
        time.sleep(1.0)
        before = rss_kb(server.pid)

        def after() -> int:
            time.sleep(IDLE_SETTLE_S)
            return rss_kb(server.pid)

        rss_after, info = self._hold_idle(server, n, "realtime:idle", after)
        result = {
            "connections": n,
            "rss_before_kb": before,
            "rss_after_kb": rss_after,
            "kb_per_connection": round((rss_after - before) / n, 2),
            **info,
        }
        print(
            f"  {server.name:<9} idle memory: {result['kb_per_connection']:.2f} KB per connection "
            f"(RSS {before} -> {rss_after} KB, {n} connections joined in {info['connect_s']} s)",
            flush=True,
        )
        return result

    def _hold_idle(
        self, server: Server, n: int, topic: str, during: Callable[[], int] | None = None
    ) -> tuple[int | None, dict[str, Any]]:
        cmd = self._node("idle.js", "--url", server.url, "--connections", n, "--topic", topic)
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        assert proc.stdout is not None and proc.stdin is not None
        watchdog = threading.Timer(120 + n / 20, proc.kill)
        watchdog.start()
        try:
            line = proc.stdout.readline()
            ready = json.loads(line) if line else {"event": "error", "error": "idle.js exited without a word"}
            if ready.get("event") != "ready":
                proc.kill()
                proc.wait()
                tail = server.stderr_tail()[-1500:]
                tail = f"\n{server.name} server stderr (tail):\n{tail}" if tail else ""
                raise BenchError(f"{server.name}: idle connections failed: {ready.get('error')}{tail}")
            value = during() if during is not None else None
            proc.stdin.close()
            line = proc.stdout.readline()
            done = json.loads(line) if line else {}
            proc.wait()
        finally:
            watchdog.cancel()
        if done.get("event") != "done":
            raise BenchError(f"{server.name}: idle.js ended without its count of closed connections")
        if done["closed_by_server"]:
            notes = "; ".join(done.get("notes", [])[:3])
            raise BenchError(
                f"{server.name}: idle memory: no figure\nFAILED: {done['closed_by_server']} of {n} idle "
                f"connections closed by the server ({notes})"
            )
        return value, {
            "connect_s": ready.get("connect_s"),
            "closed_by_server": done.get("closed_by_server"),
            "notes": done.get("notes", []),
        }

    # -- the whole sequence

    def run(self) -> None:
        """Idle memory on fresh servers, then throughput, headroom and latency runs."""
        a = self.args
        names = list(self.servers)
        if a.idle_connections > 0:
            for name in names:
                server = self.servers[name]
                self._guard(server, "idle memory", lambda s=server: self.idle.__setitem__(s.name, self.measure_idle(s)))
        for s_count in a.subscribers:
            # Servers alternate inside each repeat: load from other processes
            # on a shared machine then falls on both alike.
            for rep in range(a.repeat):
                for name in names:
                    self._measure(name, s_count, "throughput", rep, window_deliveries=a.window_deliveries)
            if a.headroom_burn > 0:
                for name in names:
                    self._measure(
                        name, s_count, "throughput", 0, window_deliveries=a.window_deliveries, burn=a.headroom_burn
                    )
        for s_count in a.subscribers:
            rate = self.latency_rate(s_count)
            if rate is not None:
                for name in names:
                    self._measure(name, s_count, "latency", 0, rate=rate)

    def _measure(self, name: str, s_count: int, phase: str, rep: int, **opts: object) -> None:
        server = self.servers[name]

        def once() -> None:
            if self.args.trace and isinstance(server, OurServer):
                self._retrace(server)
            result = self.loadgen(server, s_count, phase, **opts)
            result["repeat"] = rep
            self.runs.append(result)
            print_run(result)

        self._guard(server, f"{phase} S={s_count}", once)

    def _retrace(self, server: OurServer) -> None:
        """A fresh trace for each run (a trace runs at most 10 minutes): the last one is stopped."""
        if self._trace is not None:
            server.stop_trace(self.admin_secret, self._trace)
        self._trace = server.trace(self.admin_secret, TRACED_TOPIC, TRACED_SUB)

    def _guard(self, server: Server, what: str, fn: Callable[[], None]) -> None:
        """Run fn, keeping a failure as an error; skip it once the server is dead or failed twice in a row."""
        failures = self._failures.get(server.name, 0)
        if not server.alive() or failures >= MAX_CONSECUTIVE_FAILURES:
            return
        try:
            fn()
            self._failures[server.name] = 0
        except BenchError as e:
            self.errors.append(str(e))
            print(f"error: {e}", file=sys.stderr, flush=True)
            self._failures[server.name] = failures + 1
            if failures + 1 == MAX_CONSECUTIVE_FAILURES:
                msg = f"the {server.name} server failed {failures + 1} runs in a row: skipping its other runs"
                self.errors.append(msg)
                print(f"error: {msg}", file=sys.stderr, flush=True)
        if not server.alive():
            code = server.proc.returncode if server.proc is not None else None
            msg = f"the {server.name} server died during {what} (status {code}); stderr (tail):\n{server.stderr_tail()}"
            self.errors.append(msg)
            print(f"error: {msg}", file=sys.stderr, flush=True)

    def latency_rate(self, s_count: int) -> float | None:
        """Return the latency phase's broadcasts/s for S subscribers, the same for every server."""
        if self.args.latency_deliveries > 0:
            return round(max(self.args.latency_deliveries / s_count, 0.2), 3)
        medians = []
        for name in self.servers:
            values = [
                r["deliveries_per_s"]
                for r in self.runs
                if r["server"] == name
                and r["subscribers"] == s_count
                and r["phase"] == "throughput"
                and not r.get("burn")
            ]
            if values:
                medians.append(statistics.median(values))
        if not medians:
            return None
        return round(max(self.args.latency_fraction * min(medians) / s_count, 0.2), 3)


class AdminPollers:
    """bench/admin_poll.py beside our server, on the generator's core, until stop()."""

    def __init__(self, pin: Pinning, url: str, admin_token: str, count: int) -> None:
        root = Path(__file__).resolve().parent.parent
        cmd = [*pin.generator, sys.executable, "-m", "bench.admin_poll", "--url", url, "--token", admin_token]
        self.proc = subprocess.Popen(
            [*cmd, "--pollers", str(count)], cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        print(f"admin pollers: {count}, every admin GET once a second", flush=True)

    def stop(self) -> dict[str, Any]:
        """Stop polling; what the pollers did (requests, failures), or why they gave nothing."""
        self.proc.terminate()
        try:
            out, err = self.proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, err = self.proc.communicate()
        try:
            result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
        except (IndexError, ValueError):
            return {"failures": 1, "first_failures": [f"no report (status {self.proc.returncode}): {err[-2000:]}"]}
        print(f"admin polling: {result}", flush=True)
        return result


# ------------------------------------------------------------------- scaled out


def _start_scaled(
    bench: Bench, args: argparse.Namespace, env: dict[str, str], work: Path, anon: str
) -> PrivateRedis | None:
    """Start our server scaled out beside the one-process `ours`: `serve --workers N`, or N nodes.
    Returns the bench's own Redis (None with --redis), which the caller stops."""
    redis = None
    if args.redis:
        url = args.redis
    else:
        redis = PrivateRedis([])
        url = redis.url
        bench.measured["redis"] = ProcessTree(redis.pid)
    scaled_env = {**env, **cluster_env(url)}
    port = free_port()
    if args.workers > 1:
        name = f"workers-{args.workers}"
        scaled_env["REALTIME_DATA_DIR"] = str(work / "data-workers")
        cmd = [*our_command(args.server_cmd, port), "--workers", str(args.workers)]
        server: OurServer = Workers(name, cmd, scaled_env, work)
    else:
        name = f"nodes-{args.nodes}"
        scaled_env["REALTIME_DATA_DIR"] = str(work / "data-nodes")
        ports = [port, *(free_port() for _ in range(args.nodes - 1))]
        server = Nodes(name, [sys.executable, "-m", "bench._cluster"], scaled_env, work, ports)
    print(f"starting {name} on Redis {url}: {shlex.join(server.cmd)}", flush=True)
    bench.servers[name] = server
    server.start(port, anon)
    return redis


# ------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    """Run the fan-out bench with command-line arguments `argv`; return the exit status."""
    return run_main(_run, _parse_args(argv))


def _run(args: argparse.Namespace) -> int:
    nofile = raise_nofile()
    need = max(max(args.subscribers), args.idle_connections) + 200
    if nofile < need:
        raise BenchError(f"the open-files limit is {nofile}, below the {need} sockets this run needs")
    node = ensure_node("the generator and the reference server")
    pin = pinning(args.no_pin)
    secret = new_secret()
    anon = token(secret, {"role": "anon"})
    print(f"fan-out bench: S={args.subscribers}, {args.duration:g} s windows, {pin.description}", flush=True)

    bench = Bench(args, node, pin)
    pollers: AdminPollers | None = None
    polling: dict[str, Any] | None = None
    redis: PrivateRedis | None = None
    with tempfile.TemporaryDirectory(prefix="rt-bench-") as tmp:
        work = Path(tmp)
        try:
            if not args.skip_ours:
                port = free_port()
                admin_secret = bench.admin_secret
                env = {**os.environ, **OUR_ENV, "REALTIME_JWT_SECRET": secret, "API_JWT_SECRET": admin_secret}
                if not env.get("DATABASE_URL"):
                    # our server then starts its own embedded PostgreSQL there
                    env["REALTIME_DATA_DIR"] = str(work / "data")
                scaled = args.workers > 1 or args.nodes > 1
                # Scaled out, the servers use every core: none is pinned (the generator still is).
                prefix = [] if scaled else pin.server
                ours = OurServer("ours", [*prefix, *our_command(args.server_cmd, port)], env, work)
                print(f"starting ours: {shlex.join(ours.cmd)}", flush=True)
                bench.servers["ours"] = ours
                ours.start(port, anon)
                if scaled:
                    redis = _start_scaled(bench, args, env, work, anon)
                if args.admin_pollers:
                    admin = token(admin_secret, {"sub": "bench", "admin": "read"})
                    pollers = AdminPollers(pin, f"http://127.0.0.1:{port}", admin, args.admin_pollers)
            if not args.skip_reference:
                port = free_port()
                cmd = [*pin.server, node, str(JS_DIR / "ws_server.js"), str(port)]
                if args.reference_fault:
                    cmd += ["--fault", args.reference_fault]
                ref = ReferenceServer("reference", cmd, dict(os.environ), work)
                bench.servers["reference"] = ref
                ref.start(port, anon)
            bench.run()
        finally:
            if redis is not None:
                redis.stop()
            if pollers is not None:
                polling = pollers.stop()
                if polling.get("failures"):
                    bench.errors.append(f"the admin pollers failed: {polling}")
            for server in bench.servers.values():
                server.stop()
        # kept before the temporary folder goes: what the servers logged
        logs = {name: server.stderr_tail()[-4000:] for name, server in bench.servers.items()}

    names = list(bench.servers)
    compare = (names[-1], "ours") if args.workers > 1 or args.nodes > 1 else ("ours", "reference")
    summary = summarize(bench.runs, names, args.subscribers, bench.idle, args.headroom_burn, compare)
    if bench.errors:
        summary["targets"] = {}  # a figure beside a failed run proves nothing
    print_summary(summary, bench.idle)
    lock = json.loads((JS_DIR / "package-lock.json").read_text())
    report = {
        "environment": {
            **environment(node),
            "ws": lock["packages"]["node_modules/ws"]["version"],
            "pinning": pin.description,
        },
        "config": {
            "subscribers": args.subscribers,
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "repeat": args.repeat,
            "window_deliveries": args.window_deliveries,
            "headroom_burn": args.headroom_burn,
            "latency_fraction": args.latency_fraction,
            "latency_deliveries": args.latency_deliveries or None,
            "idle_connections": args.idle_connections,
            "client": args.client,
            "payload_bytes": 100,
            "grace_ms": args.grace_ms,
            "reference_fault": args.reference_fault,
            "admin_pollers": args.admin_pollers,
            "workers": args.workers,
            "nodes": args.nodes,
            "redis": "own redis-server" if args.redis is None else "--redis",
            "trace": args.trace,
        },
        "admin_polling": polling,
        "exact": not bench.failed and not bench.errors,
        **summary,
        "idle_memory": bench.idle,
        "runs": bench.runs,
        "failed_runs": bench.failed,
        "errors": bench.errors,
        "server_stderr_tail": logs,
    }
    return finish(args.json, report, bench.errors, summary["targets"], args.check_targets)


if __name__ == "__main__":
    sys.exit(main())
