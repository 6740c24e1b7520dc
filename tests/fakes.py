"""The harness shared by the unit tests of realtime_core's socket and channels.

test_socket.py and test_channel.py drive a RealtimeSocket of a real App (built
without start(): no database, no listener) through FakeConnection, which
records the frames the socket sends and the close it asks for. Frames are read
back with websockets' own parser, so what a test decodes is what a client
would. Joins run as tasks: call settle() after a join before reading replies.
tests/net/fakes.py re-exports the frame parsers for the net/ tests.

Each test module keeps its own reply builders and join helpers; only what both
use the same way lives here. pytest does not rewrite the asserts of this module,
so each one carries its own message."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
import pytest
from websockets.frames import CloseCode, Frame, Opcode
from websockets.streams import StreamReader

from realtime_core.app import App
from realtime_core.config import Limits, Settings
from realtime_core.jwt import KeySet, sign
from realtime_core.protocol import V1, V2, Codec
from realtime_core.socket import RealtimeSocket
from realtime_core.tenant_services import TenantDatabase, TenantServices
from realtime_core.tenants import Tenant

__all__ = [
    "SECRET",
    "TENANT",
    "TOPIC",
    "Client",
    "FakeConnection",
    "close_sockets",
    "decode",
    "give_services",
    "make_app",
    "make_tenant",
    "make_token",
    "phx_close",
    "server_frame",
    "server_frames",
    "settle",
]

SECRET = "unit-test-secret-" + "x" * 32
TENANT = "realtime-dev"
TOPIC = "realtime:room"


def make_token(exp_in: float = 3600, secret: str = SECRET, **claims: Any) -> str:
    """An anon token for the test tenant that expires `exp_in` seconds from now."""
    return sign({"role": "anon", "exp": int(time.time() + exp_in), **claims}, secret)


# -- frames --


def server_frames(data: bytes) -> list[Frame]:
    """Parse every server frame in `data` with websockets' own parser; fail on a partial frame."""
    reader = StreamReader()
    reader.feed_data(data)
    reader.feed_eof()
    frames = []
    while reader.buffer:
        parser = Frame.parse(reader.read_exact, mask=False, max_size=None)  # server frames are unmasked
        with pytest.raises(StopIteration) as stop:
            next(parser)  # the whole frame is buffered, so the parser finishes at once
        frames.append(stop.value.value)
    return frames


def server_frame(data: bytes) -> Frame:
    """Parse the one server frame `data` holds; fail on anything before or after it."""
    frames = server_frames(data)
    assert len(frames) == 1, f"one frame expected, got {len(frames)}"
    return frames[0]


def decode(frame: bytes) -> Any:
    """The JSON value of one server text frame (a V2 array or a V1 object)."""
    parsed = server_frame(frame)
    assert parsed.opcode is Opcode.TEXT, f"a text frame expected, got {parsed.opcode.name}"
    return orjson.loads(parsed.data)


# -- the app and its sockets --


class FakeConnection:
    """Records what the socket writes; stands for net/websocket.WebSocketConnection."""

    peer = "127.0.0.1:50000"
    dropped_slow = False
    closing = False

    def __init__(self) -> None:
        self.frames: list[bytes] = []
        self.closed_with: tuple[int, str] | None = None
        self.reading_paused = False
        self.pauses = 0  # pause_reading() calls that stopped reading
        self.bytes_out = 0
        self.messages_out = 0

    def send(self, frame: bytes) -> None:
        self.frames.append(frame)
        self.bytes_out += len(frame)
        self.messages_out += 1

    def pause_reading(self) -> None:
        if not self.reading_paused:
            self.pauses += 1
        self.reading_paused = True

    def resume_reading(self) -> None:
        self.reading_paused = False

    def close(self, code: CloseCode = CloseCode.NORMAL_CLOSURE, reason: str = "") -> None:
        self.closed_with = (code, reason)


class Client:
    """One socket of the app, written to as a client would, read back as decoded messages."""

    def __init__(self, app: App, codec: Codec = V2, token: str | None = None, tenant_id: str = TENANT) -> None:
        self.conn = FakeConnection()
        tenant = app.tenants.get(tenant_id)
        assert tenant is not None, f"the app serves no tenant {tenant_id!r}"
        self.token = token or make_token()
        self.socket = RealtimeSocket(app, tenant, codec, self.token, {"role": "anon"}, {}, "error")
        self.socket.attach(self.conn)  # type: ignore[arg-type]

    def push(self, join_ref: str | None, ref: str | None, topic: str, event: str, payload: Any) -> None:
        if self.socket.codec is V1:
            msg = {"join_ref": join_ref, "ref": ref, "topic": topic, "event": event, "payload": payload}
            self.socket.on_text(orjson.dumps(msg))
        else:
            self.socket.on_text(orjson.dumps([join_ref, ref, topic, event, payload]))

    def join(self, topic: str = TOPIC, join_ref: str = "1", ref: str | None = None, **payload: Any) -> None:
        payload.setdefault("config", {})
        self.push(join_ref, ref or join_ref, topic, "phx_join", payload)

    def received(self) -> list[Any]:
        """Every message sent since the last call, decoded, oldest first."""
        frames, self.conn.frames = self.conn.frames, []
        return [decode(frame) for frame in frames]

    async def next_received(self, timeout: float) -> list[Any]:
        """received(), once the socket has sent something; fails after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while not self.conn.frames:
            assert time.monotonic() < deadline, f"nothing sent within {timeout:.2f}s"
            await asyncio.sleep(0.001)
        return self.received()


async def settle() -> None:
    """Let tasks started by the socket (joins) run to their end."""
    for _ in range(5):
        await asyncio.sleep(0)


def phx_close(join_ref: str, topic: str = TOPIC) -> list[Any]:
    return [join_ref, join_ref, topic, "phx_close", {}]


def make_tenant(**limits: int) -> Tenant:
    return Tenant(id="1", external_id=TENANT, name=TENANT, limits=Limits(**limits), keys=KeySet(secret=SECRET))


def make_app() -> App:
    """An App serving the test tenant, never start()ed; error replies are not delayed."""
    app = App(Settings(channel_error_backoff_ms=0))
    app.tenants.put(make_tenant())
    return app


def give_services(app: App, *, authorizer: Any = None, cdc: Any = None) -> TenantServices:
    """Register never-started database services for the test tenant that hold `authorizer`
    and `cdc` (stand-ins or real objects): what the channels look up."""
    tenant = app.tenants.get(TENANT)
    assert tenant is not None, "make_app() serves the test tenant"
    services = TenantServices(app, tenant, TenantDatabase("dbname=unused", "unused"), is_default=True)
    services.authorizer, services.cdc = authorizer, cdc
    app.services[TENANT] = services
    return services


def close_sockets(app: App) -> None:
    """Close every socket the app still holds, which cancels its channels' token timers."""
    for socket in list(app.sockets):
        socket.on_close()
