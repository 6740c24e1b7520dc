"""The attacks benchmark: what hostile clients cost the server, and what a well-behaved client sees meanwhile.

Run as ``python -m bench.attacks`` or ``realtime-core bench attacks``. It
starts a PostgreSQL (the embedded one, or a database of its own inside
DATABASE_URL), then ``realtime-core serve`` on loopback pinned to the first
core, and creates a read policy on realtime.messages that sleeps 3 s for
the topics ``slow:*``::

    create policy ... for select to authenticated
      using (realtime.topic() like 'slow:%' and (select true from pg_sleep(3)))

Then it runs each attack in turn, every one bounded in bytes and seconds,
from this process (pinned to the second core):

- header: one request whose header value never ends (up to --header-mb);
- url: one request line whose URL never ends (up to --url-mb);
- trickle: --tricklers connections each sending one byte per second of a
  request head, for --trickle-seconds;
- pings: a WebSocket client that sends 125-byte pings (up to --ping-mb) and
  never reads, so every pong stays queued for it;
- slow-join: a WebSocket client that joins a private ``slow:`` topic (the
  read check takes 3 s) and floods broadcasts behind the pending join, a new
  join every --flood-batch messages, so that the socket's inbox keeps growing;
- slow-consumer: a client joins the topic ``busy`` and stops reading while
  another sends it --busy-rate 1 KB broadcasts per second.

During each attack two prober threads measure a second, well-behaved
client: ``GET /api/ping`` on a new connection, and a Phoenix heartbeat
over one WebSocket, each every --probe-interval seconds with a 5 s timeout
(a timeout counts as a failure and as 5000 ms). The server's VmRSS
(/proc/<pid>/status) is sampled every 50 ms: the peak growth over the value
before the attack, and what is left 1 s after it. The summary prints, per
attack, what happened to the attacker (HTTP status, close code, reset,
still connected), the RSS figures and the probers' p50 and worst latency;
the JSON report goes to bench/results/attacks.json.

Everything runs on 127.0.0.1. The whole run takes about 2 minutes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import socket
import struct
import sys
import threading
import time
import urllib.request
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
import psycopg
from websockets.sync.client import ClientConnection
from websockets.sync.client import connect as ws_connect

from bench._harness import DatabaseBench, add_server_options
from bench._proc import rss_kb
from bench._report import fmt, percentile, run_main, target
from bench._servers import BenchError, token

__all__ = ["main"]

_BENCH_DIR = Path(__file__).resolve().parent

SERVER_ENV = {
    # Postgres Changes would decode WAL for nothing: no table is published.
    "REALTIME_POSTGRES_CHANGES": "false",
    "LOG_LEVEL": "warning",
    "PYTHONUNBUFFERED": "1",
}
SLOW_POLICY = (
    "create policy bench_slow_read on realtime.messages for select to authenticated"
    " using (realtime.topic() like 'slow:%' and (select true from pg_sleep(3)))"
)
PROBE_TIMEOUT_S = 5.0
RSS_INTERVAL_S = 0.05
MB = 1 << 20
NOT_READING_RCVBUF = 64 * 1024  # the kernel receive buffer of the clients that stop reading

# Figures an attack must stay within to count as withstood (printed, and --check-targets).
TARGET_WORST_MS = 1000.0  # the well-behaved client's worst ping and heartbeat
TARGET_RSS_MB = 64.0  # the server's peak RSS growth


# ------------------------------------------------------------------ options


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="realtime-core bench attacks", description=__doc__.split("\n\n")[0])
    add_server_options(p, _BENCH_DIR / "results" / "attacks.json")
    p.add_argument("--attacks", default=",".join(ATTACKS), help=f"comma-separated, among {', '.join(ATTACKS)}")
    p.add_argument("--seconds", type=float, default=15.0, help="longest time of each attack")
    p.add_argument("--header-mb", type=float, default=64.0, help="header: bytes of the header value")
    p.add_argument("--url-mb", type=float, default=64.0, help="url: bytes of the URL")
    p.add_argument("--tricklers", type=int, default=200, help="trickle: connections")
    p.add_argument("--trickle-seconds", type=float, default=15.0, help="trickle: how long they trickle")
    p.add_argument("--ping-mb", type=float, default=300.0, help="pings: bytes of pings")
    p.add_argument("--flood-mb", type=float, default=200.0, help="slow-join: bytes of broadcasts")
    p.add_argument("--flood-batch", type=int, default=2000, help="slow-join: broadcasts between two joins")
    p.add_argument("--busy-rate", type=float, default=2000.0, help="slow-consumer: 1 KB broadcasts per second")
    p.add_argument("--probe-interval", type=float, default=0.1, help="seconds between two probes of a prober")
    p.add_argument("--check-targets", action="store_true", help="exit with status 3 when an attack misses a target")
    args = p.parse_args(argv)
    args.attacks = [a.strip() for a in args.attacks.split(",") if a.strip()]
    unknown = set(args.attacks) - set(ATTACKS)
    if unknown:
        p.error(f"unknown attacks {sorted(unknown)}: choose among {', '.join(ATTACKS)}")
    if min(args.seconds, args.tricklers, args.flood_batch, args.probe_interval, args.busy_rate) <= 0:
        p.error("--seconds, --tricklers, --flood-batch, --busy-rate and --probe-interval must be positive")
    return args


# ------------------------------------------------------------ wire helpers


def ws_frame(opcode: int, payload: bytes) -> bytes:
    """A client frame: FIN, masked with the all-zero key (RFC 6455 §5.3 asks for a mask, not a random one)."""
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
    elif n < 1 << 16:
        head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
    return head + b"\0\0\0\0" + payload


def text(message: dict[str, Any]) -> bytes:
    return ws_frame(0x1, orjson.dumps(message))


Stream = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def ws_open(port: int, apikey: str, rcvbuf: int | None = None) -> Stream:
    """A raw vsn 1.0.0 WebSocket: the handshake is checked, then the caller reads (or not) as it likes.

    `rcvbuf` fixes the kernel's receive buffer: loopback otherwise grows it
    to tcp_rmem's maximum (often 32 MB), which would hide a client that does
    not read behind kernel memory instead of the server's."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    # asyncio's StreamReader reads ahead up to twice its limit: keep that small
    # (frames here are a few KB), or a client that "never reads" would.
    reader, writer = await asyncio.open_connection(sock=sock, limit=256 * 1024)
    writer.write(
        f"GET /socket/websocket?apikey={apikey}&vsn=1.0.0 HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n".encode()
    )
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), PROBE_TIMEOUT_S)
    if not head.startswith(b"HTTP/1.1 101"):
        raise BenchError(f"WebSocket upgrade refused: {head[:200]!r}")
    return reader, writer


class FrameReader:
    """Server frames read from a stream: counts them and notes a close frame's code."""

    def __init__(self, reader: asyncio.StreamReader) -> None:
        self.reader = reader
        self.frames = 0
        self.bytes = 0
        self.close_code: int | None = None
        self.texts: list[bytes] = []  # the first few text frames, for replies
        self.ended: str | None = None  # "eof" or the exception that ended the stream

    async def run(self, keep_texts: int = 0) -> None:
        r = self.reader
        try:
            while True:
                b0, b1 = await r.readexactly(2)
                n = b1 & 0x7F
                if n == 126:
                    (n,) = struct.unpack("!H", await r.readexactly(2))
                elif n == 127:
                    (n,) = struct.unpack("!Q", await r.readexactly(8))
                payload = await r.readexactly(n)
                self.frames += 1
                self.bytes += n
                opcode = b0 & 0x0F
                if opcode == 0x8 and n >= 2:
                    self.close_code = struct.unpack("!H", payload[:2])[0]
                elif opcode == 0x1 and len(self.texts) < keep_texts:
                    self.texts.append(payload)
        except asyncio.IncompleteReadError:
            self.ended = "eof"
        except OSError as exc:
            self.ended = type(exc).__name__

    def describe(self) -> str:
        if self.ended is None:
            return "still connected"
        code = f", close code {self.close_code}" if self.close_code is not None else ""
        return f"disconnected ({self.ended}{code})"


async def after_the_fact(reader: asyncio.StreamReader, seconds: float = 3.0) -> FrameReader:
    """Read what a client that stopped reading was left with: did the server end the connection?

    Reads for at most `seconds`; a connection whose backlog takes longer is still connected."""
    frames = FrameReader(reader)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(frames.run(), seconds)
    return frames


def http_status(data: bytes) -> str:
    """ "HTTP 431" from a response head, or what the bytes were."""
    if data.startswith(b"HTTP/1.1 ") and len(data) >= 12:
        return "HTTP " + data[9:12].decode("latin-1")
    return "closed without an answer" if not data else f"answered {data[:40]!r}"


# ------------------------------------------------------------------ probers


class Prober(threading.Thread):
    """A well-behaved client probing the server every `interval` s: `ping` (HTTP) or `heartbeat` (WebSocket)."""

    def __init__(self, kind: str, port: int, apikey: str, interval: float) -> None:
        super().__init__(name=f"prober-{kind}", daemon=True)
        self.kind = kind
        self.port = port
        self.apikey = apikey
        self.interval = interval
        self.samples: list[float] = []
        self.failures = 0
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._ws: ClientConnection | None = None
        self._ref = 0

    def take(self) -> tuple[list[float], int]:
        """The samples (ms) and failures since the last take()."""
        with self._lock:
            samples, failures = self.samples, self.failures
            self.samples, self.failures = [], 0
        return samples, failures

    def stop(self) -> None:
        self._stopping.set()
        self.join(PROBE_TIMEOUT_S * 2)
        if self._ws is not None:
            with contextlib.suppress(Exception):
                self._ws.close()

    def run(self) -> None:
        probe = self._ping if self.kind == "ping" else self._heartbeat
        while not self._stopping.is_set():
            t0 = time.monotonic()
            try:
                probe()
                ms = (time.monotonic() - t0) * 1000
                failed = False
            except Exception:
                ms = max((time.monotonic() - t0) * 1000, PROBE_TIMEOUT_S * 1000)
                failed = True
                self._drop_ws()
            with self._lock:
                self.samples.append(ms)
                self.failures += failed
            self._stopping.wait(max(0.0, self.interval - (time.monotonic() - t0)))

    def _ping(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=PROBE_TIMEOUT_S)
        try:
            conn.request("GET", "/api/ping")
            response = conn.getresponse()
            response.read()
            if response.status != 200:
                raise BenchError(f"/api/ping answered {response.status}")
        finally:
            conn.close()

    def _heartbeat(self) -> None:
        if self._ws is None:
            url = f"ws://127.0.0.1:{self.port}/socket/websocket?apikey={self.apikey}&vsn=1.0.0"
            self._ws = ws_connect(url, open_timeout=PROBE_TIMEOUT_S, max_size=None)
        self._ref += 1
        ref = str(self._ref)
        self._ws.send(orjson.dumps({"topic": "phoenix", "event": "heartbeat", "payload": {}, "ref": ref}).decode())
        deadline = time.monotonic() + PROBE_TIMEOUT_S
        while True:
            reply = orjson.loads(self._ws.recv(timeout=max(0.001, deadline - time.monotonic())))
            if reply.get("ref") == ref:
                return

    def _drop_ws(self) -> None:
        if self._ws is not None:
            with contextlib.suppress(Exception):
                self._ws.close()
            self._ws = None


# ------------------------------------------------------------------ the bench


class Bench(DatabaseBench):
    """realtime-core serve on a database of its own, the slow policy, the attacks and the probers."""

    def __init__(self, *a: Any) -> None:
        super().__init__(*a)
        self.anon = token(self.secret, {"role": "anon"})
        self.user = token(self.secret, {"role": "authenticated", "sub": "bench-attacker"})
        self.probers: list[Prober] = []

    def start(self) -> None:
        self.start_server(dict(SERVER_ENV))
        with psycopg.connect(self.db.dsn, autocommit=True) as conn:
            conn.execute(SLOW_POLICY)
        self.pin_writers()
        for kind in ("ping", "heartbeat"):
            prober = Prober(kind, self.port, self.anon, self.args.probe_interval)
            prober.start()
            self.probers.append(prober)

    def stop(self) -> None:
        for prober in self.probers:
            prober.stop()
        super().stop()

    def run(self) -> None:
        self.phases["quiet"] = self._measure("quiet", lambda: self._idle(3.0))
        for name in self.args.attacks:
            if self.server_down(name):
                continue
            attack = getattr(self, "attack_" + name.replace("-", "_"))
            result = self.attempt(name, lambda attack=attack, name=name: self._measure(name, attack))
            if result is not None:
                self.phases[name] = result

    def _measure(self, name: str, attack: Callable[[], Awaitable[dict[str, Any]]]) -> dict[str, Any]:
        assert self.server is not None
        pid = self.server.pid
        for prober in self.probers:
            prober.take()  # forget what came before
        before = rss_kb(pid)
        peak = [before]
        t0 = time.monotonic()

        async def sample_rss() -> None:
            while True:
                peak[0] = max(peak[0], rss_kb(pid))
                await asyncio.sleep(RSS_INTERVAL_S)

        async def both() -> dict[str, Any]:
            sampler = asyncio.create_task(sample_rss())
            try:
                return await attack()
            finally:
                sampler.cancel()

        result = asyncio.run(both())
        seconds = time.monotonic() - t0
        probes = {prober.kind: prober.take() for prober in self.probers}
        time.sleep(1.0)
        after = rss_kb(pid)
        alive = self.server.alive()
        out: dict[str, Any] = {
            **result,
            "seconds": round(seconds, 1),
            "server_alive": alive,
            "rss_before_mb": round(before / 1024, 1),
            "rss_peak_growth_mb": round((peak[0] - before) / 1024, 1),
            "rss_after_growth_mb": round((after - before) / 1024, 1) if alive else None,
        }
        for kind, (samples, failures) in probes.items():
            out[f"{kind}_p50_ms"] = _round(percentile(samples, 0.5))
            out[f"{kind}_worst_ms"] = _round(max(samples) if samples else None)
            out[f"{kind}_probes"] = len(samples)
            out[f"{kind}_failures"] = failures
        print(f"  {name}: {out['attacker']}", flush=True)
        return out

    async def _idle(self, seconds: float) -> dict[str, Any]:
        await asyncio.sleep(seconds)
        return {"attacker": "none (reference figures)", "sent_mb": 0}

    async def _send(
        self,
        writer: asyncio.StreamWriter,
        blob: bytes,
        limit: int,
        *,
        out_of_time: str,
        until: Callable[[], bool] = lambda: False,
    ) -> tuple[int, str]:
        """Write `blob` again and again until `limit` bytes are sent or `until()` holds, within --seconds.

        Returns the bytes sent and why the sending stopped short ("" when it did not):
        `out_of_time` when the bound passed between two writes, else a drain that did
        not finish by then or the OSError that ended the connection.
        """
        deadline = time.monotonic() + self.args.seconds
        sent = 0
        try:
            while sent < limit and not until():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return sent, out_of_time
                writer.write(blob)
                await asyncio.wait_for(writer.drain(), remaining)
                sent += len(blob)
        except TimeoutError:
            return sent, f"the server stopped reading; {self.args.seconds:g} s bound reached"
        except OSError as exc:
            return sent, type(exc).__name__
        return sent, ""

    # -- a. request heads that never end

    async def _endless(self, prefix: bytes, limit_mb: float) -> dict[str, Any]:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        answer = asyncio.create_task(reader.read(4096))
        writer.write(prefix)
        sent, how = await self._send(
            writer,
            b"a" * (256 * 1024),
            int(limit_mb * MB),
            out_of_time=f"the server stopped reading; {self.args.seconds:g} s bound reached",
            until=answer.done,
        )
        if not how and not answer.done():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(answer), 2.0)
        if answer.done() and answer.exception() is None:
            how = http_status(answer.result()) + (f" ({how})" if how else "")
        elif answer.done():
            how = how or type(answer.exception()).__name__
        elif not how:
            how = f"took all {sent / MB:.0f} MB, no answer"
        answer.cancel()
        writer.close()
        return {"attacker": f"{how} after {sent / MB:.1f} MB", "sent_mb": round(sent / MB, 1)}

    async def attack_header(self) -> dict[str, Any]:
        return await self._endless(b"GET /api/ping HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Fill: ", self.args.header_mb)

    async def attack_url(self) -> dict[str, Any]:
        return await self._endless(b"GET /api/ping?fill=", self.args.url_mb)

    # -- b. many clients trickling one byte per second

    async def attack_trickle(self) -> dict[str, Any]:
        head = b"GET /api/ping HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Trickle: " + b"a" * 1000
        conns = [await asyncio.open_connection("127.0.0.1", self.port) for _ in range(self.args.tricklers)]
        answers = [asyncio.create_task(r.read(4096)) for r, _w in conns]
        broken = 0
        t0 = time.monotonic()
        i = 0
        while time.monotonic() - t0 < self.args.trickle_seconds and i < len(head):
            for (_r, w), answer in zip(conns, answers, strict=True):
                if not answer.done() and not w.is_closing():
                    try:
                        w.write(head[i : i + 1])
                    except OSError:
                        broken += 1
            i += 1
            await asyncio.sleep(1.0)
        await asyncio.sleep(0.2)
        open_ = sum(not a.done() for a in answers)
        statuses: dict[str, int] = {}
        for a in answers:
            if a.done():
                key = type(a.exception()).__name__ if a.exception() else http_status(a.result())
                statuses[key] = statuses.get(key, 0) + 1
            a.cancel()
        for _r, w in conns:
            w.close()
        ended = ", ".join(f"{n} {k}" for k, n in sorted(statuses.items()))
        return {
            "attacker": f"{open_}/{len(conns)} still connected after {i} bytes each" + (f"; {ended}" if ended else ""),
            "sent_mb": round(i * len(conns) / MB, 3),
            "still_connected": open_,
        }

    # -- c. pings, never reading the pongs

    async def attack_pings(self) -> dict[str, Any]:
        reader, writer = await ws_open(self.port, self.anon, rcvbuf=NOT_READING_RCVBUF)
        blob = ws_frame(0x9, b"p" * 125) * 8000  # ~1 MB of pings
        sent, how = await self._send(
            writer, blob, int(self.args.ping_mb * MB), out_of_time=f"{self.args.seconds:g} s bound reached"
        )
        frames = await after_the_fact(reader)
        writer.close()
        return {
            "attacker": f"sent {sent / MB:.0f} MB of pings ({how or 'all'}); {frames.describe()}",
            "sent_mb": round(sent / MB, 1),
            "disconnected": frames.ended is not None,
        }

    # -- d. a flood behind a join whose read check takes 3 s

    async def attack_slow_join(self) -> dict[str, Any]:
        reader, writer = await ws_open(self.port, self.user)
        frames = FrameReader(reader)
        drain = asyncio.create_task(frames.run())  # this attacker reads: only its inbox grows
        topic = "realtime:slow:1"
        join = text({"topic": topic, "event": "phx_join", "payload": {"config": {"private": True}}, "ref": "j"})
        message = {"type": "broadcast", "event": "flood", "payload": {"fill": "f" * 900}}
        batch = text({"topic": topic, "event": "broadcast", "payload": message, "ref": None}) * self.args.flood_batch
        sent, how = await self._send(
            writer,
            join + batch,
            int(self.args.flood_mb * MB),
            out_of_time=f"{self.args.seconds:g} s bound reached",
            until=drain.done,
        )
        joins = sent // len(join + batch)  # one join a write
        await asyncio.sleep(0.5)
        drain.cancel()
        writer.close()
        return {
            "attacker": f"sent {sent / MB:.0f} MB behind {joins} pending joins ({how or 'all'}); {frames.describe()}",
            "sent_mb": round(sent / MB, 1),
            "joins_sent": joins,
            "disconnected": frames.ended is not None,
        }

    # -- e. a subscriber that stops reading a busy topic

    async def attack_slow_consumer(self) -> dict[str, Any]:
        slow_before = self._slow_consumers()
        topic = "realtime:busy"
        join = {"topic": topic, "event": "phx_join", "payload": {"config": {"broadcast": {"self": False}}}, "ref": "j"}
        s_reader, s_writer = await ws_open(self.port, self.anon, rcvbuf=NOT_READING_RCVBUF)
        s_writer.write(text(join))
        await s_writer.drain()
        await asyncio.sleep(0.2)  # the join is answered; from now on the subscriber reads nothing
        p_reader, p_writer = await ws_open(self.port, self.anon)
        p_frames = FrameReader(p_reader)
        p_drain = asyncio.create_task(p_frames.run())
        p_writer.write(text(join))
        message = {"type": "broadcast", "event": "busy", "payload": {"fill": "b" * 1000}}
        # Paced, so that the probers measure the slow consumer rather than the publisher's load.
        tick = 0.05
        per_tick = max(1, round(self.args.busy_rate * tick))
        blob = text({"topic": topic, "event": "broadcast", "payload": message, "ref": None}) * per_tick
        t0 = time.monotonic()
        deadline = t0 + self.args.seconds
        sent = ticks = 0
        with contextlib.suppress(TimeoutError, OSError):
            while time.monotonic() < deadline and not p_drain.done():
                p_writer.write(blob)
                await asyncio.wait_for(p_writer.drain(), max(0.001, deadline - time.monotonic()))
                sent += len(blob)
                ticks += 1
                await asyncio.sleep(max(0.0, t0 + ticks * tick - time.monotonic()))
        p_drain.cancel()
        p_writer.close()
        frames = await after_the_fact(s_reader)
        s_writer.close()
        closed = self._slow_consumers() - slow_before
        return {
            "attacker": f"subscriber {frames.describe()}; slow consumers closed: {closed}; "
            f"publisher sent {sent / MB:.0f} MB",
            "sent_mb": round(sent / MB, 1),
            "disconnected": frames.ended is not None,
            "slow_consumers_closed": closed,
        }

    def _slow_consumers(self) -> int:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=PROBE_TIMEOUT_S) as r:
                lines = r.read().decode().splitlines()
        except OSError:
            return 0
        return int(sum(float(x.rsplit(" ", 1)[1]) for x in lines if x.startswith("realtime_slow_consumers_total")))


ATTACKS = ("header", "url", "trickle", "pings", "slow-join", "slow-consumer")


def _round(v: float | None) -> float | None:
    return None if v is None else round(v, 1)


# ------------------------------------------------------------------ report


def targets(phases: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for name, r in phases.items():
        if name == "quiet":
            continue
        worst = max((r.get("ping_worst_ms") or 0.0), (r.get("heartbeat_worst_ms") or 0.0))
        failures = r.get("ping_failures", 0) + r.get("heartbeat_failures", 0)
        out[f"{name}: probes worst <= {TARGET_WORST_MS:.0f} ms, none failed"] = target(
            TARGET_WORST_MS, worst, worst <= TARGET_WORST_MS and failures == 0
        )
        growth = r["rss_peak_growth_mb"]
        out[f"{name}: server alive, RSS growth <= {TARGET_RSS_MB:.0f} MB"] = target(
            TARGET_RSS_MB, growth, r["server_alive"] and growth <= TARGET_RSS_MB
        )
    return out


def print_summary(phases: dict[str, dict[str, Any]], tgt: dict[str, dict[str, Any]]) -> None:
    print()
    print(
        f"{'attack':<14} {'RSS peak':>9} {'RSS after':>9} {'ping p50/worst ms':>18} {'hb p50/worst ms':>16} "
        f"{'fail':>5}  attacker"
    )
    for name, r in phases.items():
        failures = r.get("ping_failures", 0) + r.get("heartbeat_failures", 0)
        print(
            f"{name:<14} {fmt(r.get('rss_peak_growth_mb'), '+.0f'):>6} MB "
            f"{fmt(r.get('rss_after_growth_mb'), '+.0f'):>6} MB "
            f"{fmt(r.get('ping_p50_ms'), '.1f'):>8}/{fmt(r.get('ping_worst_ms'), '.0f'):<9} "
            f"{fmt(r.get('heartbeat_p50_ms'), '.1f'):>7}/{fmt(r.get('heartbeat_worst_ms'), '.0f'):<8} "
            f"{failures:>5}  {r['attacker']}" + ("" if r.get("server_alive", True) else "  [SERVER DIED]")
        )
    print(
        "(RSS: the server's VmRSS growth over its value before the attack, at the peak and 1 s after. "
        f"ping: GET /api/ping on a new connection; hb: a heartbeat over one WebSocket; fail: probes over "
        f"{PROBE_TIMEOUT_S:g} s or refused.)"
    )
    missed = [k for k, t in tgt.items() if not t["met"]]
    print(f"targets met: {len(tgt) - len(missed)}/{len(tgt)}" + "".join(f"\n  missed: {k}" for k in missed))


# --------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    """Run the attacks bench with command-line arguments `argv`; return the exit status."""
    return run_main(_run, _parse_args(argv))


def _run(args: argparse.Namespace) -> int:
    # Every client here is Python: no Node.
    bench = Bench.measure(
        args, node_users=None, banner=f"attacks bench ({', '.join(args.attacks)})", folder_prefix="rt-bench-attacks-"
    )
    tgt = targets(bench.phases)
    print_summary(bench.phases, tgt)
    config = {
        "attacks": args.attacks,
        "seconds": args.seconds,
        "header_mb": args.header_mb,
        "url_mb": args.url_mb,
        "tricklers": args.tricklers,
        "trickle_seconds": args.trickle_seconds,
        "ping_mb": args.ping_mb,
        "flood_mb": args.flood_mb,
        "flood_batch": args.flood_batch,
        "busy_rate": args.busy_rate,
        "probe_interval_s": args.probe_interval,
        "probe_timeout_s": PROBE_TIMEOUT_S,
        "slow_policy": SLOW_POLICY,
        "server_env": SERVER_ENV,
    }
    return bench.finish(config, tgt, [])


if __name__ == "__main__":
    sys.exit(main())
