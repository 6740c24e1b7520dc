"""Raw Phoenix clients and frame helpers shared by the end-to-end tests.

test_protocol_e2e.py, test_rest_broadcast.py and test_python_client.py drive a
`realtime-core serve` process (conftest.py's `server` fixtures). RawClient
speaks vsn 1.0.0 (JSON objects) or 2.0.0 (JSON arrays and binary kinds 3/4) over
a plain `websockets` connection, so the tests see every frame exactly as the
server wrote it. Frame is one decoded text frame in either version; Kind4 is a
decoded binary user broadcast. Every wait is a multiple of conftest.MS."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from conftest import MS
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from console.client import AdminClient

__all__ = [
    "V1",
    "V2",
    "ConnectRefused",
    "CountingConnection",
    "Frame",
    "Kind4",
    "RawClient",
    "connect_refused",
    "eventually",
    "kind3",
    "metric",
    "parse_kind4",
]

V1 = "1.0.0"
V2 = "2.0.0"

# How long a frame that is expected may take.
RECV_TIMEOUT = 3000 * MS


@dataclass(frozen=True)
class Frame:
    """One decoded server text frame, the same shape for both versions.

    `raw` is the decoded JSON as sent: a list for V2, a dict for V1."""

    join_ref: str | None
    ref: str | None
    topic: str
    event: str
    payload: Any
    raw: Any

    @classmethod
    def decode(cls, text: str | bytes) -> Frame:
        raw = json.loads(text)
        if isinstance(raw, list):
            join_ref, ref, topic, event, payload = raw
            return cls(join_ref, ref, topic, event, payload, raw)
        return cls(raw.get("join_ref"), raw["ref"], raw["topic"], raw["event"], raw["payload"], raw)

    @property
    def is_reply(self) -> bool:
        return self.event == "phx_reply"

    @property
    def status(self) -> str | None:
        return self.payload.get("status") if self.is_reply else None

    @property
    def response(self) -> Any:
        return self.payload.get("response") if self.is_reply else None


@dataclass(frozen=True)
class Kind4:
    """A binary user broadcast (docs/protocol.md §2.3 kind 4), read as realtime-js reads it."""

    topic: str
    event: str
    metadata: bytes
    encoding: int
    payload: bytes


def parse_kind4(data: bytes) -> Kind4:
    """Decode kind 4: topic_len, user_event_len, metadata_len, encoding, then the fields."""
    assert data[0] == 4, f"expected binary kind 4, got kind {data[0]}"
    topic_len, event_len, metadata_len, encoding = data[1:5]
    pos = 5
    topic = data[pos : pos + topic_len].decode()
    pos += topic_len
    event = data[pos : pos + event_len].decode()
    pos += event_len
    metadata = data[pos : pos + metadata_len]
    pos += metadata_len
    assert len(topic) == topic_len and len(metadata) == metadata_len, "kind 4 frame truncated"
    return Kind4(topic, event, bytes(metadata), encoding, bytes(data[pos:]))


def kind3(
    topic: str,
    event: str,
    payload: bytes,
    *,
    join_ref: str = "",
    ref: str = "",
    encoding: int = 1,
    metadata: bytes = b"",
) -> bytes:
    """Build a client kind-3 user broadcast push, as realtime-js sends channel.send()."""
    fields = [join_ref.encode(), ref.encode(), topic.encode(), event.encode(), metadata]
    head = bytes([3, *(len(f) for f in fields), encoding])
    return head + b"".join(fields) + payload


class ConnectRefused(Exception):
    """The upgrade was answered with an HTTP error instead of 101."""

    def __init__(self, status: int, body: bytes, headers: Any, elapsed: float) -> None:
        super().__init__(f"HTTP {status}: {body!r}")
        self.status = status
        self.body = body
        self.headers = headers
        self.elapsed = elapsed

    def json(self) -> Any:
        return json.loads(self.body)


async def connect_refused(url: str, headers: dict[str, str] | None = None) -> ConnectRefused:
    """Open `url`, expecting the server to refuse the upgrade; return the HTTP answer."""
    started = time.monotonic()
    try:
        ws = await connect(url, additional_headers=headers, open_timeout=10_000 * MS, ping_interval=None)
    except InvalidStatus as exc:
        response = exc.response
        return ConnectRefused(response.status_code, response.body or b"", response.headers, time.monotonic() - started)
    await ws.close()
    raise AssertionError(f"the server accepted {url}")


class CountingConnection(ClientConnection):
    """A client connection that counts every byte it receives from the socket: the HTTP 101
    answer and the WebSocket frames, headers included (what egress metering must match)."""

    received_bytes = 0

    def data_received(self, data: bytes) -> None:
        self.received_bytes += len(data)
        super().data_received(data)


class RawClient:
    """One WebSocket speaking the Phoenix protocol by hand.

    send()/push() write frames; recv() returns the next decoded frame (Frame for
    text, bytes for binary); expect() skips frames until one matches;
    expect_nothing_before() asserts that nothing (matching) arrives before a marker.
    `received_bytes`: every byte read from the TCP socket so far."""

    def __init__(self, ws: ClientConnection, vsn: str) -> None:
        self.ws = ws
        self.vsn = vsn
        self._refs = itertools.count(1)

    @property
    def received_bytes(self) -> int:
        return self.ws.received_bytes if isinstance(self.ws, CountingConnection) else 0

    @classmethod
    async def open(
        cls, url: str, vsn: str = V2, *, headers: dict[str, str] | None = None, max_size: int | None = None
    ) -> RawClient:
        # No client pings: they would count as input for the idle timeout.
        ws = await connect(
            url,
            additional_headers=headers,
            ping_interval=None,
            max_size=max_size,
            open_timeout=10_000 * MS,
            create_connection=CountingConnection,
        )
        return cls(ws, vsn)

    async def __aenter__(self) -> RawClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.ws.close(), 1000 * MS)

    def next_ref(self) -> str:
        return str(next(self._refs))

    # Sending

    async def send(self, frame: Any) -> None:
        """Send a list/dict as JSON text, bytes as a binary frame, str as is."""
        if isinstance(frame, (bytes, str)):
            await self.ws.send(frame)
        else:
            await self.ws.send(json.dumps(frame))

    def encode(self, join_ref: str | None, ref: str | None, topic: str, event: str, payload: Any) -> Any:
        if self.vsn == V2:
            return [join_ref, ref, topic, event, payload]
        msg = {"topic": topic, "event": event, "payload": payload, "ref": ref}
        if join_ref is not None:
            msg["join_ref"] = join_ref
        return msg

    async def push(
        self, topic: str, event: str, payload: Any, *, ref: str | None = None, join_ref: str | None = None
    ) -> str:
        """Send one message; return its ref (a fresh one unless given)."""
        ref = self.next_ref() if ref is None else ref
        await self.send(self.encode(join_ref, ref, topic, event, payload))
        return ref

    async def heartbeat(self) -> Frame:
        """Send a heartbeat and return its reply."""
        ref = await self.push("phoenix", "heartbeat", {})
        return await self.reply_to(ref, "phoenix")

    async def join(
        self,
        topic: str,
        config: dict[str, Any] | None = None,
        *,
        join_ref: str | None = None,
        expect_ok: bool = True,
        **payload: Any,
    ) -> Frame:
        """phx_join `topic` (ref = join_ref, as the clients do); return the reply."""
        body = {"config": config or {}, **payload}
        join_ref = self.next_ref() if join_ref is None else join_ref
        await self.push(topic, "phx_join", body, ref=join_ref, join_ref=join_ref)
        reply = await self.reply_to(join_ref, topic)
        if expect_ok:
            assert reply.status == "ok", reply.raw
        return reply

    # Receiving

    async def recv(self, timeout: float = RECV_TIMEOUT) -> Frame | bytes:
        data = await asyncio.wait_for(self.ws.recv(), timeout)
        return data if isinstance(data, bytes) else Frame.decode(data)

    async def expect(self, match: Callable[[Any], bool], timeout: float = RECV_TIMEOUT) -> Any:
        """Return the first frame for which `match` is true, skipping the others."""
        deadline = asyncio.get_running_loop().time() + timeout
        seen = []
        while True:
            left = deadline - asyncio.get_running_loop().time()
            try:
                frame = await self.recv(max(left, 0))
            except TimeoutError:
                raise AssertionError(f"no matching frame within {timeout:.2f}s; skipped {seen!r}") from None
            if match(frame):
                return frame
            seen.append(frame)

    async def expect_event(self, topic: str, event: str, timeout: float = RECV_TIMEOUT) -> Frame:
        return await self.expect(lambda f: isinstance(f, Frame) and f.topic == topic and f.event == event, timeout)

    async def reply_to(self, ref: str, topic: str, timeout: float = RECV_TIMEOUT) -> Frame:
        return await self.expect(
            lambda f: isinstance(f, Frame) and f.is_reply and f.ref == ref and f.topic == topic, timeout
        )

    async def expect_binary(self, timeout: float = RECV_TIMEOUT) -> bytes:
        return await self.expect(lambda f: isinstance(f, bytes), timeout)

    async def expect_nothing_before(
        self,
        marker: Callable[[Any], bool],
        unexpected: Callable[[Any], bool] | None = None,
        timeout: float = RECV_TIMEOUT,
    ) -> Any:
        """Read frames until one matches `marker` and return it; fail on a frame before it
        that matches `unexpected` (on any frame when None).

        This is how a test shows that something does NOT arrive: after the action it sends a
        marker through the same ordered path (the same stream, or this socket), which the server
        must write after anything the action caused, however late. No wait for silence."""
        deadline = asyncio.get_running_loop().time() + timeout
        seen = []
        while True:
            left = deadline - asyncio.get_running_loop().time()
            try:
                frame = await self.recv(max(left, 0))
            except TimeoutError:
                raise AssertionError(f"the marker did not arrive within {timeout:.2f}s; got {seen!r}") from None
            if marker(frame):
                return frame
            assert unexpected is not None and not unexpected(frame), f"unexpected frame before the marker: {frame!r}"
            seen.append(frame)

    async def nothing_pending(self, unexpected: Callable[[Any], bool] | None = None) -> None:
        """expect_nothing_before() a heartbeat reply: the marker for what the server writes on this
        socket in answer to the frames sent so far (it handles a socket's frames in order)."""
        ref = await self.push("phoenix", "heartbeat", {})
        await self.expect_nothing_before(
            lambda f: isinstance(f, Frame) and f.is_reply and f.ref == ref and f.topic == "phoenix", unexpected
        )

    async def closed(self, timeout: float = RECV_TIMEOUT) -> ConnectionClosed:
        """Wait until the server closes the connection; return the closing exception."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            left = deadline - asyncio.get_running_loop().time()
            try:
                await asyncio.wait_for(self.ws.recv(), max(left, 0))
            except ConnectionClosed as exc:
                return exc
            except TimeoutError:
                raise AssertionError(f"connection still open after {timeout:.2f}s") from None


def metric(http_url: str, name: str, **labels: str) -> float:
    """The value on GET /metrics of the one sample `name` whose labels include `labels` (read with
    the console's client, the one reader of the server's figures)."""
    with AdminClient(http_url, token="") as client:
        return client.metric(name, **labels)


async def eventually(check: Callable[[], bool], timeout: float = RECV_TIMEOUT, what: str = "condition") -> None:
    """Poll `check` every 10 MS until it is true; fail after `timeout`."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"{what} not reached within {timeout:.2f}s")
        await asyncio.sleep(10 * MS)
