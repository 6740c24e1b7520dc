"""The bench's Node scripts (bench/js): finding node, and driving a script over JSON lines.

Every benchmark calls ensure_node() before it starts anything. bench/fanout.py
then runs its one-shot scripts (loadgen.js, idle.js) with subprocess itself;
bench/postgres_changes.py and bench/private.py drive theirs as NodeProcess
objects. Such a script (its end is serveCommands() in js/client.js) prints
JSON lines on stdout: progress lines count deliveries, and every other line
answers a command that NodeProcess wrote on its stdin."""

from __future__ import annotations

import collections
import contextlib
import json
import queue
import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

from bench._servers import BenchError, Pinning

__all__ = ["JS_DIR", "NodeProcess", "ensure_node"]

JS_DIR = Path(__file__).resolve().parent / "js"

RATE_WINDOW_S = 0.5  # rate(): deliveries per second over about this long


def ensure_node(users: str) -> str:
    """Return the node executable, running `npm ci` in bench/js if node_modules is missing.

    `users` says who needs Node, in the error raised when it is not on PATH
    ("the subscribers").
    """
    node = shutil.which("node")
    if node is None:
        raise BenchError(f"node is not on PATH: {users} need Node >= 18")
    if not (JS_DIR / "node_modules" / "ws").is_dir():
        npm = shutil.which("npm")
        if npm is None:
            raise BenchError(f"{JS_DIR}/node_modules is missing and npm is not on PATH")
        print(f"installing the bench's Node dependencies (npm ci in {JS_DIR}) ...", flush=True)
        done = subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=JS_DIR, capture_output=True, text=True)
        if done.returncode != 0:
            raise BenchError(f"npm ci failed in {JS_DIR}:\n{done.stderr[-2000:]}")
    return node


class NodeProcess:
    """One script of bench/js on the generator's core, talking JSON lines.

    A reader thread keeps `delivered` and rate() current from the progress
    lines and queues every other line for reply(). Call wait_ready() when
    the script announces itself with a ready line, command() or mark() to
    drive it, and close() at the end, whatever happened.
    """

    def __init__(self, node: str, pin: Pinning, script: str, args: list[str], work: Path, tag: str) -> None:
        cmd = [*pin.generator, node, str(JS_DIR / script), *args]
        self.name = script
        self.delivered = 0
        self.ready: dict[str, Any] = {}  # the ready line, once wait_ready() returned
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
                    while len(self._history) > 2 and now - self._history[0][0] > RATE_WINDOW_S:
                        self._history.popleft()
            else:
                if msg.get("event") == "ready":
                    msg["_py_monotonic_ns"] = time.monotonic_ns()  # for wait_ready()'s clock check
                self._replies.put(msg)
        self._replies.put({"event": "error", "error": f"{self.name} exited with status {self.proc.wait()}"})

    def rate(self, stale_after: float | None = None) -> float:
        """Deliveries per second over the last ~0.5 s.

        With `stale_after`, 0 when no progress line came for that many
        seconds (the script prints them only while deliveries move);
        without, the last rate measured.
        """
        with self._lock:
            if len(self._history) < 2:
                return 0.0
            (t0, d0), (t1, d1) = self._history[0], self._history[-1]
        if stale_after is not None and time.monotonic() - t1 > stale_after:
            return 0.0
        return (d1 - d0) / (t1 - t0) if t1 > t0 else 0.0

    def reply(self, timeout: float, what: str, event: str) -> dict[str, Any]:
        """Return the next line that is not progress; raise BenchError unless its event is `event`."""
        try:
            msg = self._replies.get(timeout=timeout)
        except queue.Empty:
            raise BenchError(f"{self.name}: no {what} within {timeout:.0f} s{self._stderr()}") from None
        if msg.get("event") == "error":
            raise BenchError(f"{self.name}: {msg.get('error')}{self._stderr()}")
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
        """Send one command line; return its answer, whose event must be `event`."""
        self.send(line)
        return self.reply(timeout, f"a reply to {line.split(' ', 1)[0]}", event)

    def mark(self, name: str) -> dict[str, Any]:
        """Return the script's mark line: deliveries so far, its CPU since the previous mark."""
        return self.command(f"mark {name}", 30, "mark")

    def wait_ready(self, timeout: float) -> dict[str, Any]:
        """Wait for the ready line and check the clocks; close the process if either fails.

        The ready line carries Node's CLOCK_MONOTONIC (process.hrtime) when
        it was written, and the reader noted ours when it read it: the
        difference is a pipe delay, positive and small, if both processes
        read the same clock, which latency figures rely on. It is kept as
        `clock_check_ms`.
        """
        try:
            msg = self.reply(timeout, "the ready line", "ready")
            skew_ms = (msg["_py_monotonic_ns"] - int(msg["hrtime_ns"])) / 1e6
            if not -1.0 < skew_ms < 1000.0:
                raise BenchError(
                    f"Node's process.hrtime and Python's time.monotonic_ns differ by {skew_ms:.1f} ms: "
                    "they are not the same clock here, latency cannot be measured"
                )
        except BaseException:
            self.close()
            raise
        msg["clock_check_ms"] = round(skew_ms, 3)
        self.ready = msg
        return msg

    def close(self) -> None:
        """Ask the script to quit; kill it after 10 s."""
        if self.proc.poll() is None:
            with contextlib.suppress(OSError):
                self.send("quit")
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._err.close()
