"""Connection ends with real sockets and real signals against `realtime-core serve`.

A client that stops reading is a plain TCP socket with a small receive buffer
that joins a busy topic and then never reads: the server must drop it (and
count it) instead of buffering for it, while a reading subscriber of the same
topic still gets every message. SIGTERM must close every client, realtime-js
and Python alike, with 1012 (service restart) and let the process exit 0."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import socket
import time

import pytest
from conftest import MS, make_token
from jsclient import JsDriver
from realtime import AsyncRealtimeClient, RealtimeSubscribeStates
from websockets.exceptions import ConnectionClosedError
from wire import V1, V2, RawClient, eventually, metric

pytestmark = pytest.mark.pg

SERVICE_RESTART = 1012


def masked_text_frame(payload: bytes) -> bytes:
    """One client text frame (FIN, opcode 1, masked as RFC 6455 requires of clients)."""
    mask = os.urandom(4)
    n = len(payload)
    assert n < 65536
    head = bytes([0x81, 0x80 | n]) if n < 126 else bytes([0x81, 0x80 | 126]) + n.to_bytes(2, "big")
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def silent_subscriber(port: int, topic: str, token: str, rcvbuf: int) -> socket.socket:
    """A raw TCP WebSocket client (vsn 1.0.0) joined to `topic` that will read no further.

    SO_RCVBUF is set before connect so that the advertised window stays small."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(5)
    sock.connect(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        (
            f"GET /socket/websocket?apikey={token}&vsn={V1} HTTP/1.1\r\n"
            f"Host: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    received = b""
    while b"\r\n\r\n" not in received:
        received += sock.recv(4096)
    assert received.startswith(b"HTTP/1.1 101"), received
    join = {"topic": f"realtime:{topic}", "event": "phx_join", "payload": {"config": {}}, "ref": "1", "join_ref": "1"}
    sock.sendall(masked_text_frame(json.dumps(join).encode()))
    received = received.partition(b"\r\n\r\n")[2]
    while b'"phx_reply"' not in received:
        received += sock.recv(4096)
    assert b'"status":"ok"' in received, received
    return sock


def drain_until_closed(sock: socket.socket, timeout: float) -> tuple[bool, int]:
    """Read what the kernel kept for `sock` until the server's reset or EOF: (closed, bytes read)."""
    deadline = time.monotonic() + timeout
    total = 0
    sock.settimeout(0.2)
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            continue
        except ConnectionResetError:
            return True, total
        if not chunk:
            return True, total
        total += len(chunk)
    return False, total


@pytest.mark.slow
async def test_a_client_that_stops_reading_is_dropped_and_counted_while_others_get_everything(server_factory, topic):
    # 256 KiB of backlog in the server's transport is the limit. The kernel
    # buffers between the server and the silent client (its receive window, the
    # server's send buffer, which may grow to tcp_wmem's 4 MiB) hold a few MiB
    # more: 10 MiB cannot fit. The reader is sent one message at a time, so it
    # never has a backlog and must get every one.
    srv = server_factory({"REALTIME_MAX_WRITE_BUFFER_BYTES": str(256 * 1024)})
    count, size = 640, 16 * 1024
    token = make_token()
    before = metric(srv.http_url, "realtime_slow_consumers_total")
    slow = silent_subscriber(srv.port, topic, token, rcvbuf=4096)
    try:
        async with (
            await RawClient.open(srv.socket_url(token, V2), V2) as reader,
            await RawClient.open(srv.socket_url(token, V2), V2) as sender,
        ):
            await reader.join(f"realtime:{topic}")
            join_ref = (await sender.join(f"realtime:{topic}")).join_ref
            assert metric(srv.http_url, "realtime_connections_connected") == 3
            for seq in range(count):
                message = {"type": "broadcast", "event": "chunk", "payload": {"seq": seq, "blob": "x" * size}}
                await sender.push(f"realtime:{topic}", "broadcast", message, join_ref=join_ref)
                frame = await reader.expect_event(f"realtime:{topic}", "broadcast")
                assert frame.payload["payload"]["seq"] == seq

            closed, read = await asyncio.to_thread(drain_until_closed, slow, 5_000 * MS)
            assert closed, f"the silent client is still connected after reading {read} bytes"
            assert read < count * size, "the silent client got every message: it was never dropped"
            assert metric(srv.http_url, "realtime_slow_consumers_total") == before + 1
            assert metric(srv.http_url, "realtime_connections_connected") == 2
            # The reader and the sender are still served.
            assert (await reader.heartbeat()).status == "ok"
            assert (await sender.heartbeat()).status == "ok"
    finally:
        slow.close()


@pytest.mark.js
async def test_sigterm_closes_realtime_js_and_python_clients_with_1012_and_exits_0(server_factory, topic):
    srv = server_factory()
    token = make_token()
    python_states: list[tuple[RealtimeSubscribeStates, Exception | None]] = []
    py_client = AsyncRealtimeClient(srv.ws_url, token, auto_reconnect=False)
    await py_client.connect()
    py_channel = py_client.channel(topic)
    subscribed = asyncio.Event()

    def on_state(state: RealtimeSubscribeStates, error: Exception | None) -> None:
        python_states.append((state, error))
        if state == RealtimeSubscribeStates.SUBSCRIBED:
            subscribed.set()

    await py_channel.subscribe(on_state)
    await asyncio.wait_for(subscribed.wait(), 5_000 * MS)
    raw = await RawClient.open(srv.socket_url(token, V2), V2)
    try:
        await raw.join(f"realtime:{topic}")
        async with JsDriver() as js:
            await js.join("js", srv.ws_url, token, topic)
            assert metric(srv.http_url, "realtime_connections_connected") == 3
            mark = js.mark()
            started = time.monotonic()
            srv.proc.send_signal(signal.SIGTERM)

            closed = await raw.closed(5_000 * MS)
            assert closed.rcvd is not None and closed.rcvd.code == SERVICE_RESTART, closed
            js_close = await js.wait_for(
                lambda e: e["ev"] == "socket" and e["client"] == "js" and e["state"] == "close", 5_000 * MS, mark
            )
            assert js_close["code"] == SERVICE_RESTART, js_close

            def python_errors() -> list[Exception | None]:
                return [error for state, error in python_states if state == RealtimeSubscribeStates.CHANNEL_ERROR]

            await eventually(lambda: bool(python_errors()), 5_000 * MS, "the Python client's CHANNEL_ERROR")
            error = python_errors()[0]
            assert isinstance(error, ConnectionClosedError), error
            assert error.rcvd is not None and error.rcvd.code == SERVICE_RESTART, error

            returncode = await asyncio.to_thread(srv.proc.wait, 10)
            elapsed = time.monotonic() - started
            assert returncode == 0, srv.log()
            # Every client answered the close at once: nothing waited for the 2 s close deadline.
            assert elapsed < 2000 * MS, f"the server took {elapsed:.2f}s to exit"
            assert "Traceback" not in srv.log(), srv.log()
    finally:
        await raw.close()
        await py_client.close()
