"""What bench/postgres_changes.py and bench/private.py share: realtime-core serve on a database of its own.

Each defines a Bench that subclasses DatabaseBench and implements start()
(start_server(), then its own tables or policies, then pin_writers()) and
run() (its phases, each through attempt()). Its _run() calls
Bench.measure(), which prepares the machine and runs the whole bench in a
temporary folder, prints its summary, and returns finish(): the JSON report
and the exit status. DatabaseBench holds the database, the server, the Node
generators, the /proc figures of a window, the py-spy profiles, the phases'
results and the errors."""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, Self

from bench._database import Database
from bench._node import NodeProcess, ensure_node
from bench._proc import ProcessTree, Snapshot, raise_nofile
from bench._profile import Profile
from bench._report import environment, finish
from bench._servers import BenchError, OurServer, Pinning, free_port, new_secret, our_command, pinning, token

__all__ = ["CLOCK", "DatabaseBench", "add_server_options"]

# What latency figures rest on: the writers and the Node generators read one clock.
CLOCK = "CLOCK_MONOTONIC (Python time.monotonic_ns, Node process.hrtime.bigint)"


def add_server_options(p: argparse.ArgumentParser, default_json: Path) -> None:
    """Add --json, --server-cmd and --no-pin, in that order."""
    p.add_argument("--json", type=Path, default=default_json, help="where to write the figures")
    p.add_argument(
        "--server-cmd",
        help="command line of the server; {host} and {port} are substituted, and "
        "'--host 127.0.0.1 --port N' is appended when it has no {port}",
    )
    p.add_argument("--no-pin", action="store_true", help="do not pin the server and the generator to cores")


class DatabaseBench:
    """The server under test, its database and the figures of the phases; subclasses add the phases."""

    # py-spy's sampling (--profile): samples per second, and whether to read
    # the server without pausing it.
    profile_rate: ClassVar[int] = 100
    profile_nonblocking: ClassVar[bool] = False

    def __init__(self, args: argparse.Namespace, node: str, pin: Pinning, work: Path) -> None:
        self.t0 = time.monotonic()  # elapsed_s counts from here
        self.args = args
        self.node = node
        self.pin = pin
        self.work = work
        self.secret = new_secret()
        self.db = Database(work)
        self.pg_version = "?"
        self.server: OurServer | None = None
        self.port = 0
        self.url = ""
        self.phases: dict[str, dict[str, Any]] = {}
        self.failed: dict[str, dict[str, Any]] = {}  # phases that did not deliver exactly what was sent
        self.errors: list[str] = []
        self.profiles: dict[str, Any] = {}

    # -- lifecycle

    @classmethod
    def measure(cls, args: argparse.Namespace, *, node_users: str | None, banner: str, folder_prefix: str) -> Self:
        """Prepare the machine, print `banner` with the pinning, and run a whole bench in a temporary folder.

        `node_users` names who needs Node (see ensure_node); None when every
        client is Python, Node then being only named in the report's
        environment. The bench's server and database are stopped, and the
        folder is gone, on return.
        """
        raise_nofile()
        node = ensure_node(node_users) if node_users is not None else shutil.which("node") or "node"
        pin = pinning(args.no_pin)
        print(f"{banner}, {pin.description}", flush=True)
        with tempfile.TemporaryDirectory(prefix=folder_prefix) as tmp:
            bench = cls(args, node, pin, Path(tmp))
            try:
                bench.start()
                bench.pg_version = bench.db.version()
                bench.run()
            finally:
                bench.stop()
        return bench

    def start(self) -> None:
        raise NotImplementedError

    def run(self) -> None:
        raise NotImplementedError

    def start_server(self, server_env: dict[str, str]) -> None:
        """Start the database, then realtime-core serve on it pinned to the server's core, with `server_env`."""
        self.db.start()
        self.port = free_port()
        env = {
            **os.environ,
            **server_env,
            "DATABASE_URL": self.db.dsn,
            "SLOT_NAME_SUFFIX": self.db.name,  # slot names are cluster-wide
            "REALTIME_JWT_SECRET": self.secret,
        }
        cmd = [*self.pin.server, *our_command(self.args.server_cmd, self.port)]
        self.server = OurServer("server", cmd, env, self.work)
        print(f"starting the server: {shlex.join(cmd)}", flush=True)
        self.server.start(self.port, token(self.secret, {"role": "anon"}))

    def pin_writers(self) -> None:
        """Keep this process, and so the writer threads started from now on, off the server's core."""
        if self.pin.generator_cpu is not None:
            os.sched_setaffinity(0, {self.pin.generator_cpu})

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()  # SIGINT, then SIGKILL after a timeout
        self.db.stop()

    # -- measuring

    def node_process(self, script: str, args: list[str], tag: str) -> NodeProcess:
        """Start bench/js/`script` on the generator's core; its stderr goes to <tag>.stderr."""
        return NodeProcess(self.node, self.pin, script, args, self.work, tag)

    def window_usage(self, gen_pid: int, a: Snapshot, b: Snapshot) -> dict[str, Any]:
        """Return the CPU figures of the window between two snapshots, in % of one core.

        server, PostgreSQL with its backends (embedded only), the Node
        generator `gen_pid`, this process (the writers), each core's busy
        time, and the processes outside the bench (foreign).
        """
        assert self.server is not None
        trees = {
            "server": ProcessTree(self.server.pid),
            "bench": ProcessTree(os.getpid()),
            "generator": ProcessTree(gen_pid),
        }
        if self.db.pg_pid is not None:
            trees["postgres"] = ProcessTree(self.db.pg_pid)
        u: dict[str, Any] = a.usage(b, servers=trees, generator=None)
        cores = u.get("core_busy_pct", {})
        pg = None
        if "postgres_cpu_pct" in u:
            pg = round(u["postgres_cpu_pct"] + u["postgres_children_cpu_pct"], 1)
        return {
            "server_cpu_pct": u.get("server_cpu_pct"),
            "postgres_cpu_pct": pg,
            "generator_cpu_pct": round(u["generator_cpu_pct"] + u["generator_children_cpu_pct"], 1),
            "writer_cpu_pct": u.get("bench_cpu_pct"),
            "server_core_busy_pct": cores.get(f"cpu{self.pin.server_cpu}"),
            "generator_core_busy_pct": cores.get(f"cpu{self.pin.generator_cpu}"),
            "core_busy_pct": cores,
            "foreign_cpu_pct": u.get("foreign_cpu_pct"),
            "foreign_top": u.get("foreign_top"),
        }

    def start_profile(self, name: str, seconds: float) -> Profile | None:
        """Start py-spy on the server for `seconds` when --profile asks for it; finish_profile() keeps the result."""
        if not self.args.profile or self.server is None:
            return None
        return Profile.start(
            self.server.pid,
            seconds,
            self.work / f"{name}.raw",
            rate=self.profile_rate,
            nonblocking=self.profile_nonblocking,
        )

    def finish_profile(self, name: str, profile: Profile | None) -> None:
        if profile is not None:
            self.profiles[name] = profile.finish()

    # -- phases

    def server_down(self, label: str) -> bool:
        """Whether the server is gone; if so, record that the phase `label` was skipped."""
        if self.server is None or not self.server.alive():
            self.errors.append(f"{label}: skipped, the server is not running")
            return True
        return False

    def attempt(self, label: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any] | None:
        """Announce and run one phase; return its figures with their `label`, or None after recording the error."""
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
            return None
        r["label"] = label
        return r

    # -- report

    def finish(self, config: dict[str, Any], targets: dict[str, dict[str, Any]], warnings: list[str]) -> int:
        """Write the JSON report to --json and return the exit status (see bench._report.finish).

        The report holds the environment, `config`, whether every phase was
        exact, the phases, the failed phases, `targets` (none after an
        error), `warnings`, the profiles, the errors and elapsed_s.
        """
        if self.errors:
            targets = {}  # a figure beside a failed phase proves nothing
        report = {
            "environment": {
                **environment(self.node),
                "postgres": self.pg_version,
                "postgres_source": "embedded" if self.db.embedded is not None else "DATABASE_URL",
                "pinning": self.pin.description,
                "clock": CLOCK,
            },
            "config": config,
            "exact": not self.errors and not self.failed,
            "phases": self.phases,
            "failed_phases": self.failed,
            "targets": targets,
            "warnings": warnings,
            "profiles": self.profiles,
            "errors": self.errors,
            "elapsed_s": round(time.monotonic() - self.t0, 1),
        }
        return finish(self.args.json, report, self.errors, targets, self.args.check_targets, report["elapsed_s"])
