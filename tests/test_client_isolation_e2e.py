"""One client must not be able to hurt the others: end-to-end against `realtime-core serve`.

A raw TCP client (the upgrade written by hand, frames built with websockets'
own serializer) does what no library client would: floods pings without ever
reading, floods messages behind a join that a slow RLS policy holds, sends a
text frame that is not UTF-8. The server's memory is read from
/proc/<pid>/status (VmRSS); a second, well-behaved client checks that the
server still answers. Loopback only; every flood is bounded in bytes and time."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import secrets
import time
from pathlib import Path
from typing import Any

import orjson
import psycopg
import pytest
from conftest import MS, ServerProcess, make_token
from psycopg import sql
from websockets.frames import Close, CloseCode, Frame, Opcode
from websockets.streams import StreamReader
from wire import V2, RawClient, metric

pytestmark = pytest.mark.pg

MIB = 1024 * 1024


def rss(pid: int) -> int:
    """The resident set size of process `pid`, in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


class RssPeak:
    """Samples a process's RSS every 20 ms while it runs; `growth` is the peak over the first sample."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.start = rss(pid)
        self.peak = self.start
        self._task: asyncio.Task[None] | None = None

    async def _sample(self) -> None:
        while True:
            self.peak = max(self.peak, rss(self.pid))
            await asyncio.sleep(0.02)

    async def __aenter__(self) -> RssPeak:
        self._task = asyncio.create_task(self._sample())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self.peak = max(self.peak, rss(self.pid))

    @property
    def growth(self) -> int:
        return self.peak - self.start


def client_frame(opcode: Opcode, data: bytes) -> bytes:
    return Frame(opcode, data).serialize(mask=True)


def text(join_ref: str | None, ref: str | None, topic: str, event: str, payload: Any) -> bytes:
    return client_frame(Opcode.TEXT, orjson.dumps([join_ref, ref, topic, event, payload]))


class RawSocket:
    """A WebSocket client on a bare asyncio stream: it writes what it likes and reads only when told."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self._frames = StreamReader()

    @classmethod
    async def open(cls, server: ServerProcess, token: str) -> RawSocket:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(
            (
                f"GET /socket/websocket?apikey={token}&vsn={V2} HTTP/1.1\r\n"
                f"Host: 127.0.0.1:{server.port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 101"), head
        return cls(reader, writer)

    async def frame(self, timeout: float) -> Frame | None:
        """The next server frame; None at the end of the stream."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            parser = Frame.parse(self._frames.read_exact, mask=False, max_size=None)
            buffered = bytes(self._frames.buffer)
            try:
                next(parser)
            except StopIteration as done:
                return done.value
            # Incomplete: put the bytes back and read more.
            self._frames = StreamReader()
            self._frames.feed_data(buffered)
            left = deadline - asyncio.get_running_loop().time()
            data = await asyncio.wait_for(self.reader.read(65536), max(left, 0))
            if not data:
                return None
            self._frames.feed_data(data)

    def close(self) -> None:
        self.writer.transport.abort()


async def heartbeat_round_trip(client: RawClient) -> float:
    started = time.perf_counter()
    reply = await client.heartbeat()
    assert reply.status == "ok"
    return time.perf_counter() - started


@pytest.mark.slow
async def test_a_ping_flood_that_never_reads_is_cut_off_as_a_slow_consumer(server_factory):
    """Pongs count towards the write buffer: the flooder is dropped, memory stays flat, others are served."""
    server = server_factory()
    token = make_token()
    slow_before = metric(server.http_url, "realtime_slow_consumers_total")
    flooder = await RawSocket.open(server, token)
    ping = client_frame(Opcode.PING, b"p" * 125) * 512  # 64 KiB of the largest pings per write
    budget = 256 * MIB  # far more than the write buffer and both sockets' kernel buffers hold
    sent = 0
    round_trips: list[float] = []
    async with await RawClient.open(server.socket_url(token, V2)) as bystander, RssPeak(server.proc.pid) as memory:

        async def flood() -> None:
            nonlocal sent
            with contextlib.suppress(ConnectionError):
                while sent < budget:
                    flooder.writer.write(ping)
                    await flooder.writer.drain()
                    sent += len(ping)
                    await asyncio.sleep(0)  # drain() does not yield while the kernel takes it all

        task = asyncio.create_task(flood())
        deadline = time.monotonic() + 60
        while not task.done() and time.monotonic() < deadline:
            round_trips.append(await heartbeat_round_trip(bystander))
            await asyncio.sleep(0.05)
        await asyncio.wait_for(task, 10)
    flooder.close()
    assert sent < budget, f"the flooder sent {sent / MIB:.0f} MiB of pings and was never cut off"
    assert metric(server.http_url, "realtime_slow_consumers_total") == slow_before + 1
    assert memory.growth < 32 * MIB, f"server RSS grew by {memory.growth / MIB:.0f} MiB"
    assert round_trips, "the bystander was never answered during the flood"
    assert max(round_trips) < 1000 * MS, f"the bystander waited up to {max(round_trips):.2f}s"


@pytest.mark.slow
async def test_a_flood_behind_a_slow_private_join_waits_in_tcp_and_is_handled_in_order(server_factory):
    """1 GiB sent behind a 3 s RLS check grew the server by 958 MB; now reading stops until the join ends.

    The idle timeout is shorter than the join: a socket the server stopped reading is not idle."""
    server = server_factory({"REALTIME_IDLE_TIMEOUT_MS": "1000"})
    topic = f"slow{secrets.token_hex(4)}"
    with psycopg.connect(server.database_url, autocommit=True) as db:
        db.execute(
            sql.SQL(
                "create policy {} on realtime.messages for select to authenticated"
                " using (realtime.topic() = {} and (select true from pg_sleep(3)))"
            ).format(sql.Identifier(f"pol_{topic}"), sql.Literal(topic))
        )
    token = make_token("authenticated", sub="alice")
    client = await RawSocket.open(server, token)
    count = 16_384
    pad = "x" * 4000
    messages = b"".join(text(None, f"h{i}", "phoenix", "heartbeat", {"pad": pad}) for i in range(count))
    try:
        async with RssPeak(server.proc.pid) as memory:
            client.writer.write(text("1", "1", f"realtime:{topic}", "phx_join", {"config": {"private": True}}))
            started = time.monotonic()

            async def send() -> None:
                for i in range(0, len(messages), 65536):
                    client.writer.write(messages[i : i + 65536])
                    await client.writer.drain()
                    await asyncio.sleep(0)  # let the replies be read meanwhile

            sender = asyncio.create_task(send())
            refs = []
            while len(refs) < count + 1:
                frame = await client.frame(timeout=30)
                assert frame is not None, f"the server closed the connection after {len(refs)} replies"
                assert frame.opcode is Opcode.TEXT, frame
                reply = orjson.loads(frame.data)
                assert reply[3] == "phx_reply" and reply[4]["status"] == "ok", reply
                refs.append(reply[1])
            await asyncio.wait_for(sender, 10)
    finally:
        client.close()
    assert time.monotonic() - started >= 3.0, "the join did not wait for the policy"
    assert refs == ["1"] + [f"h{i}" for i in range(count)], "the join first, then every message in order"
    flooded = len(messages) / MIB
    assert memory.growth < 32 * MIB, f"server RSS grew by {memory.growth / MIB:.0f} MiB for {flooded:.0f} MiB sent"


async def test_a_text_frame_that_is_not_utf8_closes_the_connection_with_1007(server):
    client = await RawSocket.open(server, make_token())
    try:
        client.writer.write(client_frame(Opcode.TEXT, b'[null,"1","phoenix","heartbeat",{"x":"\xff"}]'))
        frame = await client.frame(timeout=3000 * MS)
        assert frame is not None and frame.opcode is Opcode.CLOSE, frame
        assert Close.parse(frame.data).code == CloseCode.INVALID_DATA
        assert await client.frame(timeout=3000 * MS) is None, "the server closes the TCP connection"
    finally:
        client.close()
