"""Tests for realtime_core.net.server: HTTP/1.1 on HttpProtocol and the WebSocket upgrade (docs/protocol.md §1.1, §1.4).

In uvicorn's style: raw requests are module constants, fed to
HttpProtocol.data_received() over a MockTransport (tests/net/fakes.py) that
records what is written, closed, paused and handed over with set_protocol().
Handlers and the upgrade run as tasks, so tests let the loop turn with
settle()."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gc
import hashlib
import weakref
from typing import Any

import httptools
import orjson
import pytest
from conftest import MS
from websockets.frames import Close, CloseCode, Opcode

from realtime_core.errors import ConnectError
from realtime_core.net import server as server_module
from realtime_core.net.frames import text_frame
from realtime_core.net.http import HttpLimits, Request, Response, Router, json_response
from realtime_core.net.server import MAX_PIPELINED, HttpProtocol, Server
from realtime_core.net.websocket import WebSocketConnection

from .fakes import MockTransport, client_frame, server_frames

MAX_BODY = 64
LIMITS = HttpLimits(
    max_url_bytes=512, max_header_bytes=256, max_headers=20, max_headers_bytes=2048, max_body_bytes=MAX_BODY
)
SWEEP = 0.12 * max(1.0, MS * 1000)  # a little over two sweeps at the fastest interval, 50 ms

# -- raw requests --

GET_HEALTHCHECK = b"GET /healthcheck HTTP/1.1\r\nHost: example.org\r\n\r\n"

GET_HEALTHCHECK_CLOSE = b"GET /healthcheck HTTP/1.1\r\nHost: example.org\r\nConnection: close\r\n\r\n"

GET_HEALTHCHECK_HTTP10 = b"GET /healthcheck HTTP/1.0\r\nHost: example.org\r\n\r\n"

GET_SLOW = b"GET /slow HTTP/1.1\r\nHost: example.org\r\n\r\n"

GET_BROKEN = b"GET /broken HTTP/1.1\r\nHost: example.org\r\n\r\n"

GET_NOT_FOUND = b"GET /nowhere HTTP/1.1\r\nHost: example.org\r\n\r\n"

POST_HEALTHCHECK = b"POST /healthcheck HTTP/1.1\r\nHost: example.org\r\nContent-Length: 0\r\n\r\n"

GET_PARAMS = b"GET /items/42/tags/blue?x=1 HTTP/1.1\r\nHost: example.org\r\nX-Thing: a\r\n\r\n"

MALFORMED = b"NOT AN HTTP REQUEST\r\n\r\n"


def post_echo(body: bytes) -> bytes:
    return b"POST /echo HTTP/1.1\r\nHost: example.org\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)


WS_KEY = "dGhlIHNhbXBsZSBub25jZQ=="  # RFC 6455 §1.3's sample nonce
WS_ACCEPT = base64.b64encode(hashlib.sha1((WS_KEY + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest()).decode()


def upgrade(
    path: str = "/socket/websocket?apikey=key&vsn=2.0.0", method: str = "GET", key: str | None = WS_KEY
) -> bytes:
    lines = [
        f"{method} {path} HTTP/1.1",
        "Host: realtime-dev.example.org:4000",
        "Upgrade: websocket",
        "Connection: Upgrade",
        "Sec-WebSocket-Version: 13",
        "X-Client-Info: test",
    ]
    if key is not None:
        lines.append(f"Sec-WebSocket-Key: {key}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


UPGRADE = upgrade()


# -- fakes --


class RecordingSession:
    """A Session (socket.py's role) that records what the connection delivers; the text
    b"pause" makes it stop the connection's reading, as socket.py does when it holds too much."""

    def __init__(self) -> None:
        self.texts: list[bytes] = []
        self.binaries: list[bytes] = []
        self.closes = 0
        self.conn: WebSocketConnection | None = None

    def attach(self, conn: WebSocketConnection) -> None:
        self.conn = conn

    def on_text(self, data: bytes) -> None:
        self.texts.append(data)
        if data == b"pause" and self.conn is not None:
            self.conn.pause_reading()

    def on_binary(self, data: bytes) -> None:
        self.binaries.append(data)

    def on_close(self) -> None:
        self.closes += 1

    def on_sent(self, nbytes: int) -> None:
        """Nothing: these tests read what the transport was given."""


class FakeApp:
    """What Server needs of app.App: routes, socket paths, open_socket() and the error delay."""

    socket_paths = frozenset({"/socket/websocket", "/realtime/v1/websocket"})

    def __init__(self) -> None:
        self.http = Router()
        self.http.add("GET", "/healthcheck", self.healthcheck)
        self.http.add("GET", "/slow", self.slow)
        self.http.add("GET", "/broken", self.broken)
        self.http.add("POST", "/echo", self.echo)
        self.http.add("GET", "/items/:id/tags/:tag", self.params)
        self.requests: list[Request] = []
        self.opened: list[Request] = []
        self.sessions: list[RecordingSession] = []
        self.connect_error: ConnectError | None = None
        self.error_delay = 0.0
        self.open_gate: asyncio.Event | None = None

    async def healthcheck(self, request: Request) -> Response:
        self.requests.append(request)
        return Response(200, b"ok", content_type="text/plain; charset=utf-8")

    async def slow(self, request: Request) -> Response:
        for _ in range(3):
            await asyncio.sleep(0)
        return Response(200, b"slow")

    async def broken(self, request: Request) -> Response:
        raise RuntimeError("handler bug")

    async def echo(self, request: Request) -> Response:
        self.requests.append(request)
        return Response(200, request.body)

    async def params(self, request: Request) -> Response:
        self.requests.append(request)
        return json_response(200, request.params)

    async def open_socket(self, request: Request) -> tuple[RecordingSession, Any]:
        self.opened.append(request)
        if self.open_gate is not None:
            await self.open_gate.wait()
        if self.connect_error is not None:
            raise self.connect_error
        session = RecordingSession()
        self.sessions.append(session)
        return session, session.attach

    def connect_error_delay(self, error: ConnectError) -> float:
        return self.error_delay


# -- helpers --


class Responses:
    """httptools callbacks collecting complete responses."""

    def __init__(self) -> None:
        self.items: list[dict[str, Any]] = []
        self._current: dict[str, Any] = {}
        self.parser = httptools.HttpResponseParser(self)

    def on_message_begin(self) -> None:
        self._current = {"headers": {}, "body": b""}

    def on_header(self, name: bytes, value: bytes) -> None:
        self._current["headers"][name.decode().lower()] = value.decode()

    def on_headers_complete(self) -> None:
        self._current["status"] = self.parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        self._current["body"] += body

    def on_message_complete(self) -> None:
        self.items.append(self._current)


def responses(data: bytes) -> list[dict[str, Any]]:
    """Every complete HTTP response in `data`, as {"status", "headers", "body"}."""
    collected = Responses()
    collected.parser.feed_data(data)
    return collected.items


def handshake_response(data: bytes) -> tuple[list[str], bytes]:
    """Split a 101 answer into its head lines and what follows it (WebSocket frames)."""
    head, sep, rest = data.partition(b"\r\n\r\n")
    assert sep, f"incomplete response head: {data!r}"
    return head.decode("latin-1").split("\r\n"), rest


async def settle(turns: int = 10) -> None:
    for _ in range(turns):
        await asyncio.sleep(0)


def assert_response(data: bytes, status: int, body: bytes | None = None) -> dict[str, Any]:
    """`data` holds exactly one response with `status` (and `body`)."""
    [response] = responses(data)
    assert response["status"] == status, response
    if body is not None:
        assert response["body"] == body
    return response


def assert_refused(transport: MockTransport) -> None:
    """The server answered and stopped: EOF written, the transport closed after LINGER_TIMEOUT."""
    assert transport.eof_written
    assert not transport.closed, "closed at once: unread input would reset the connection"


def assert_json_error(data: bytes, status: int, error: str) -> None:
    response = assert_response(data, status)
    assert response["headers"]["content-type"].startswith("application/json")
    assert orjson.loads(response["body"]) == {"error": error}


# -- fixtures --


@pytest.fixture
async def app():
    return FakeApp()


def make_server(
    app: Any, limits: HttpLimits = LIMITS, *, idle_timeout: float = 60.0, max_frame_bytes: int = 1 << 20
) -> Server:
    return Server(
        app,
        max_frame_bytes=max_frame_bytes,
        limits=limits,
        idle_timeout=idle_timeout,
        max_write_buffer=1 << 20,
        flush_chunk=16,
    )


def connect(server: Server, transport: MockTransport) -> HttpProtocol:
    """A connection of `server` over `transport`, made."""
    protocol = HttpProtocol(server)
    protocol.connection_made(transport)  # type: ignore[arg-type]
    return protocol


@pytest.fixture
async def server(app):
    return make_server(app, max_frame_bytes=1_000_000)


@pytest.fixture
async def transport():
    return MockTransport()


@pytest.fixture
async def protocol(server, transport):
    return connect(server, transport)


@pytest.fixture
async def default_limits_protocol(app, transport):
    """A connection of a server with the default HttpLimits."""
    return connect(make_server(app, HttpLimits()), transport)


# -- tests --


class TestConnection:
    async def test_connection_made_registers_and_records_the_peer(self, server, protocol):
        assert protocol in server.http_connections
        assert protocol.peer == "127.0.0.1:54321"

    async def test_connection_lost_unregisters(self, server, protocol):
        protocol.connection_lost(None)
        assert protocol not in server.http_connections


class TestRequests:
    async def test_healthcheck(self, protocol, transport):
        protocol.data_received(GET_HEALTHCHECK)
        await settle()
        response = assert_response(transport.buffer, 200, b"ok")
        assert response["headers"]["content-length"] == "2"
        assert response["headers"]["content-type"] == "text/plain; charset=utf-8"
        assert not transport.closed, "HTTP/1.1 keeps the connection alive"

    async def test_head_answers_like_get_without_the_body(self, protocol, transport):
        """RFC 9110 §9.3.2; on a kept-alive connection a body would garble the next response."""
        protocol.data_received(GET_HEALTHCHECK.replace(b"GET ", b"HEAD ", 1) + GET_HEALTHCHECK)
        await settle()
        head, _, rest = transport.buffer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 ")
        assert b"content-length: 2" in head
        assert rest.startswith(b"HTTP/1.1 200 "), "the HEAD response carried no body"
        assert_response(rest, 200, b"ok")

    async def test_a_request_split_across_reads(self, protocol, transport):
        for i in range(0, len(GET_HEALTHCHECK), 7):
            protocol.data_received(GET_HEALTHCHECK[i : i + 7])
        await settle()
        assert_response(transport.buffer, 200, b"ok")

    async def test_the_request_reaches_the_handler_parsed(self, app, protocol, transport):
        protocol.data_received(GET_PARAMS)
        await settle()
        assert orjson.loads(assert_response(transport.buffer, 200)["body"]) == {"id": "42", "tag": "blue"}
        [request] = app.requests
        assert (request.method, request.path, request.query_string) == ("GET", "/items/42/tags/blue", "x=1")
        assert request.headers["x-thing"] == "a", "header names are lower case"
        assert request.client == "127.0.0.1:54321"

    async def test_a_body_reaches_the_handler(self, protocol, transport):
        protocol.data_received(post_echo(b"hello"))
        await settle()
        assert_response(transport.buffer, 200, b"hello")

    async def test_keep_alive_serves_pipelined_requests_in_order(self, protocol, transport):
        protocol.data_received(GET_SLOW + GET_HEALTHCHECK + GET_SLOW)
        await settle(30)
        assert [r["body"] for r in responses(transport.buffer)] == [b"slow", b"ok", b"slow"]
        assert not transport.closed

    async def test_keep_alive_serves_requests_one_after_another(self, protocol, transport):
        protocol.data_received(GET_HEALTHCHECK)
        await settle()
        protocol.data_received(post_echo(b"second"))
        await settle()
        assert [r["body"] for r in responses(transport.buffer)] == [b"ok", b"second"]

    async def test_connection_close_closes_after_the_response(self, protocol, transport):
        protocol.data_received(GET_HEALTHCHECK_CLOSE)
        await settle()
        response = assert_response(transport.buffer, 200, b"ok")
        assert response["headers"]["connection"] == "close"
        assert transport.closed

    async def test_bytes_after_a_closing_request_do_not_cost_it_its_response(self, app, protocol, transport):
        """RFC 9112 §9.6: the server answers the request carrying "close", then closes,
        and processes nothing after it (llhttp reports those bytes as an error)."""
        protocol.data_received(GET_HEALTHCHECK_CLOSE + GET_HEALTHCHECK)
        await settle()
        response = assert_response(transport.buffer, 200, b"ok")
        assert response["headers"]["connection"] == "close"
        assert transport.closed
        assert len(app.requests) == 1

    async def test_bytes_arriving_later_after_a_closing_request_are_ignored(self, app, protocol, transport):
        protocol.data_received(GET_SLOW.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n"))
        protocol.data_received(GET_HEALTHCHECK)
        await settle()
        assert_response(transport.buffer, 200, b"slow")
        assert transport.closed
        assert app.requests == []

    async def test_http_1_0_closes_after_the_response(self, protocol, transport):
        protocol.data_received(GET_HEALTHCHECK_HTTP10)
        await settle()
        assert_response(transport.buffer, 200, b"ok")
        assert transport.closed

    async def test_a_connection_lost_before_the_response_is_written_gets_nothing(self, protocol, transport):
        protocol.data_received(GET_SLOW)
        protocol.connection_lost(None)
        await settle()
        assert transport.buffer == b""


class TestErrors:
    async def test_a_malformed_request_is_answered_400_and_closed(self, protocol, transport):
        protocol.data_received(MALFORMED)
        await settle()
        response = assert_response(transport.buffer, 400)
        assert orjson.loads(response["body"])["error"].startswith("Malformed HTTP request")
        assert response["headers"]["connection"] == "close"
        assert_refused(transport)

    async def test_a_body_over_the_maximum_is_answered_413_and_closed(self, app, protocol, transport):
        protocol.data_received(post_echo(b"x" * (MAX_BODY + 1)))
        await settle()
        assert_json_error(transport.buffer, 413, "Request body too large")
        assert_refused(transport)
        assert app.requests == [], "the handler never runs"

    async def test_a_body_over_the_maximum_in_pieces_is_answered_413(self, protocol, transport):
        request = post_echo(b"x" * (MAX_BODY * 2))
        protocol.data_received(request[:60])
        protocol.data_received(request[60:120])
        protocol.data_received(request[120:])
        await settle()
        assert_json_error(transport.buffer, 413, "Request body too large")

    async def test_a_body_at_the_maximum_is_served(self, protocol, transport):
        protocol.data_received(post_echo(b"x" * MAX_BODY))
        await settle()
        assert_response(transport.buffer, 200, b"x" * MAX_BODY)

    async def test_an_unknown_path_is_404(self, protocol, transport):
        protocol.data_received(GET_NOT_FOUND)
        await settle()
        assert_json_error(transport.buffer, 404, "Not found")
        assert not transport.closed

    async def test_a_wrong_method_is_405(self, protocol, transport):
        protocol.data_received(POST_HEALTHCHECK)
        await settle()
        assert_json_error(transport.buffer, 405, "Method not allowed")

    async def test_a_handler_exception_is_500_and_logged(self, protocol, transport, caplog):
        protocol.data_received(GET_BROKEN + GET_HEALTHCHECK)
        await settle()
        first, second = responses(transport.buffer)
        assert (first["status"], orjson.loads(first["body"])) == (500, {"error": "Internal server error"})
        assert second["status"] == 200, "the connection keeps serving"
        assert "handler bug" in caplog.text


class TestUpgrade:
    """docs/protocol.md §1.1 and §1.4: a GET upgrade on a socket path; open_socket() decides."""

    async def test_a_valid_upgrade_answers_101_and_hands_over_the_transport(self, app, server, protocol, transport):
        protocol.data_received(UPGRADE)
        await settle()
        lines, rest = handshake_response(transport.buffer)
        assert lines[0] == "HTTP/1.1 101 Switching Protocols"
        headers = {k.lower(): v for k, v in (line.split(": ", 1) for line in lines[1:])}
        assert headers["upgrade"].lower() == "websocket"
        assert headers["sec-websocket-accept"] == WS_ACCEPT
        assert rest == b""
        conn = transport.protocol
        assert isinstance(conn, WebSocketConnection)
        assert conn in server.websockets
        assert protocol not in server.http_connections
        assert not transport.read_paused, "reading resumes once the WebSocket is attached"

    async def test_open_socket_gets_the_request(self, app, protocol):
        protocol.data_received(UPGRADE)
        await settle()
        [request] = app.opened
        assert request.path == "/socket/websocket"
        assert request.query == {"apikey": "key", "vsn": "2.0.0"}
        assert request.headers["host"] == "realtime-dev.example.org:4000"
        assert request.headers["x-client-info"] == "test"

    async def test_the_session_is_attached_and_receives_frames(self, app, protocol, transport):
        protocol.data_received(UPGRADE)
        await settle()
        [session] = app.sessions
        assert session.conn is transport.protocol
        transport.protocol.data_received(client_frame(Opcode.TEXT, b'["1","1","phoenix","heartbeat",{}]'))
        assert session.texts == [b'["1","1","phoenix","heartbeat",{}]']

    async def test_frames_flow_back_through_the_connection(self, app, protocol, transport):
        protocol.data_received(UPGRADE)
        await settle()
        assert handshake_response(transport.buffer)[1] == b""
        app.sessions[0].conn.send(text_frame(b"hello"))
        await settle()
        _, after = handshake_response(transport.buffer)
        [frame] = server_frames(after)
        assert (frame.opcode, frame.data) == (Opcode.TEXT, b"hello")

    async def test_a_frame_in_the_same_read_as_the_upgrade_is_delivered(self, app, protocol, transport):
        protocol.data_received(UPGRADE + client_frame(Opcode.TEXT, b"early"))
        await settle()
        assert app.sessions[0].texts == [b"early"]

    async def test_a_pause_by_the_bytes_of_the_upgrade_read_is_kept(self, app, protocol, transport):
        protocol.data_received(UPGRADE + client_frame(Opcode.TEXT, b"pause") + client_frame(Opcode.TEXT, b"later"))
        await settle()
        assert app.sessions[0].texts == [b"pause"]
        assert transport.read_paused, "the upgrade does not resume what the session paused"
        app.sessions[0].conn.resume_reading()
        await settle()
        assert app.sessions[0].texts == [b"pause", b"later"]
        assert not transport.read_paused

    async def test_the_supabase_js_path_is_a_socket_path(self, app, protocol, transport):
        protocol.data_received(upgrade("/realtime/v1/websocket?apikey=key"))
        await settle()
        assert handshake_response(transport.buffer)[0][0] == "HTTP/1.1 101 Switching Protocols"

    async def test_a_connect_error_is_answered_after_the_delay(self, app, protocol, transport):
        app.connect_error = ConnectError(401, "API key is missing")
        app.error_delay = 30 * MS
        protocol.data_received(UPGRADE)
        await settle()
        assert transport.buffer == b"", "nothing before CONNECT_ERROR_BACKOFF_MS"
        assert not transport.closed
        await asyncio.sleep(60 * MS)
        assert_json_error(transport.buffer, 401, "API key is missing")
        assert transport.closed
        assert transport.protocol is None, "the transport was never handed over"

    @pytest.mark.parametrize(
        ("status", "text"),
        [(404, "Tenant not found"), (429, "Too many connected users"), (500, "Error connecting to Realtime")],
    )
    async def test_connect_error_statuses(self, app, protocol, transport, status, text):
        app.connect_error = ConnectError(status, text)
        protocol.data_received(UPGRADE)
        await settle()
        assert_json_error(transport.buffer, status, text)

    async def test_a_connect_error_without_text_has_an_empty_body(self, app, protocol, transport):
        """docs/protocol.md §1.2: an unsupported vsn is 403 with an empty body."""
        app.connect_error = ConnectError(403, "")
        protocol.data_received(UPGRADE)
        await settle()
        response = assert_response(transport.buffer, 403, b"")
        assert response["headers"]["content-length"] == "0"
        assert transport.closed

    async def test_an_invalid_handshake_is_400_without_open_socket(self, app, protocol, transport):
        protocol.data_received(upgrade(key=None))
        await settle()
        assert transport.buffer.startswith(b"HTTP/1.1 400 ")
        assert app.opened == []
        assert transport.closed
        assert transport.protocol is None

    async def test_an_upgrade_on_another_path_is_404(self, app, protocol, transport):
        protocol.data_received(upgrade("/healthcheck"))
        await settle()
        assert_json_error(transport.buffer, 404, "Not found")
        assert app.opened == []
        assert transport.closed

    async def test_an_upgrade_with_another_method_is_404(self, app, protocol, transport):
        protocol.data_received(upgrade(method="POST"))
        await settle()
        assert_json_error(transport.buffer, 404, "Not found")
        assert app.opened == []

    async def test_reading_pauses_while_open_socket_runs(self, app, protocol, transport):
        app.open_gate = asyncio.Event()
        protocol.data_received(UPGRADE)
        await settle()
        assert transport.read_paused
        app.open_gate.set()
        await settle()
        assert not transport.read_paused

    async def test_a_client_gone_during_open_socket_closes_the_session(self, app, server, protocol, transport):
        app.open_gate = asyncio.Event()
        protocol.data_received(UPGRADE)
        await settle()
        protocol.connection_lost(None)
        app.open_gate.set()
        await settle()
        [session] = app.sessions
        assert session.closes == 1
        assert session.conn is None, "never attached"
        assert transport.buffer == b""
        assert server.websockets == set()

    async def test_losing_the_websocket_forgets_it(self, app, server, protocol, transport):
        protocol.data_received(UPGRADE)
        await settle()
        conn = transport.protocol
        conn.connection_lost(None)
        assert conn not in server.websockets
        assert app.sessions[0].closes == 1


class TestPipelining:
    async def test_reading_pauses_while_too_many_requests_wait(self, protocol, transport):
        protocol.data_received(GET_SLOW * (MAX_PIPELINED + 1))
        assert transport.read_paused
        await settle(10 * (MAX_PIPELINED + 1))
        assert len(responses(transport.buffer)) == MAX_PIPELINED + 1
        assert not transport.read_paused

    async def test_a_few_waiting_requests_do_not_pause_reading(self, protocol, transport):
        protocol.data_received(GET_SLOW * 3)
        assert not transport.read_paused


class TestSweeper:
    """docs/protocol.md §1.5: a WebSocket silent for the idle timeout is closed; so are stale HTTP connections."""

    @pytest.fixture
    async def sweeping(self, app):
        server = make_server(app, idle_timeout=0.2)
        task = asyncio.get_running_loop().create_task(server._sweep_forever())
        yield server
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def open_websocket(self, server: Server) -> tuple[WebSocketConnection, MockTransport]:
        transport = MockTransport()
        connect(server, transport).data_received(UPGRADE)
        await settle()
        transport.writes.clear()  # drop the handshake response
        return transport.protocol, transport

    async def test_an_idle_websocket_is_closed_with_1000(self, sweeping):
        conn, transport = await self.open_websocket(sweeping)
        conn.last_seen -= 100
        await asyncio.sleep(SWEEP)
        [frame] = server_frames(transport.buffer)
        assert frame.opcode is Opcode.CLOSE
        assert Close.parse(frame.data) == Close(CloseCode.NORMAL_CLOSURE, "idle timeout")
        assert sweeping.idle_closed == 1

    async def test_a_websocket_that_never_answers_the_close_is_aborted(self, sweeping, monkeypatch):
        monkeypatch.setattr(server_module, "CLOSE_TIMEOUT", 0.0)
        conn, transport = await self.open_websocket(sweeping)
        conn.close(CloseCode.GOING_AWAY, "bye")
        await asyncio.sleep(SWEEP * 2)
        assert transport.aborted

    async def test_an_active_websocket_is_left_open(self, sweeping):
        conn, transport = await self.open_websocket(sweeping)
        for _ in range(4):
            conn.data_received(client_frame(Opcode.PING, b"x"))
            await asyncio.sleep(SWEEP / 4)
        assert all(f.opcode is Opcode.PONG for f in server_frames(transport.buffer))
        assert sweeping.idle_closed == 0

    async def test_a_websocket_the_server_stopped_reading_is_not_idle(self, sweeping):
        conn, transport = await self.open_websocket(sweeping)
        conn.pause_reading()
        conn.last_seen -= 100
        await asyncio.sleep(SWEEP)
        assert transport.writes == [], "its silence is ours"
        conn.resume_reading()
        await asyncio.sleep(SWEEP)
        assert transport.writes == [], "the idle time starts again when reading resumes"
        assert sweeping.idle_closed == 0

    async def test_an_idle_http_connection_is_closed(self, sweeping, monkeypatch):
        monkeypatch.setattr(server_module, "HTTP_IDLE_TIMEOUT", 0.0)
        transport = MockTransport()
        protocol = HttpProtocol(sweeping)
        protocol.connection_made(transport)  # type: ignore[arg-type]
        protocol.last_seen -= 1
        await asyncio.sleep(SWEEP)
        assert transport.closed


def get_with(path: str = "/healthcheck", headers: list[tuple[str, str]] | None = None) -> bytes:
    lines = [f"GET {path} HTTP/1.1", "Host: example.org"]
    lines += [f"{name}: {value}" for name, value in headers or []]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


class FeedCounter:
    """Stands in for the protocol's httptools parser, recording what each feed_data() call gets."""

    def __init__(self, parser: httptools.HttpRequestParser) -> None:
        self.parser = parser
        self.fed: list[bytes] = []

    def feed_data(self, data: bytes) -> None:
        self.fed.append(bytes(data))
        self.parser.feed_data(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.parser, name)


class TestRequestLimits:
    """HttpLimits: answered like Cowboy does (414 URL, 431 headers), then closed; the handler never runs."""

    async def test_a_url_at_the_limit_is_served(self, app, protocol, transport):
        path = "/healthcheck?" + "q" * (LIMITS.max_url_bytes - len("/healthcheck?"))
        protocol.data_received(get_with(path))
        await settle()
        assert_response(transport.buffer, 200, b"ok")
        assert app.requests[0].query_string == "q" * (LIMITS.max_url_bytes - len("/healthcheck?"))

    async def test_a_url_over_the_limit_is_414(self, app, protocol, transport):
        protocol.data_received(get_with("/healthcheck?" + "q" * LIMITS.max_url_bytes))
        await settle()
        assert_json_error(transport.buffer, 414, "Request URL too long")
        assert_refused(transport)
        assert app.requests == []

    async def test_a_never_ending_url_is_414_once_past_the_limit(self, protocol, transport):
        protocol.data_received(b"GET /healthcheck?")
        for _ in range(LIMITS.max_url_bytes - len("/healthcheck?")):
            protocol.data_received(b"q")
        assert transport.buffer == b"", "at the limit: nothing yet"
        protocol.data_received(b"q")
        assert_json_error(transport.buffer, 414, "Request URL too long")
        assert_refused(transport)

    async def test_a_url_in_many_reads_reaches_the_handler_whole(self, app, protocol, transport):
        request = get_with("/healthcheck?" + "abcdefgh" * 40)
        for i in range(len(request)):
            protocol.data_received(request[i : i + 1])
        await settle()
        assert_response(transport.buffer, 200, b"ok")
        assert app.requests[0].query_string == "abcdefgh" * 40

    async def test_an_upgrade_with_a_url_over_the_limit_is_414_not_a_reset(self, app, protocol, transport):
        protocol.data_received(upgrade("/socket/websocket?apikey=" + "k" * LIMITS.max_url_bytes))
        await settle()
        assert_json_error(transport.buffer, 414, "Request URL too long")
        assert_refused(transport)
        assert transport.protocol is None, "never handed over"
        assert app.opened == []

    async def test_an_upgrade_with_a_url_over_the_url_parsers_maximum_is_414(self, default_limits_protocol, transport):
        """httptools.parse_url refuses more than 65535 bytes: that used to escape data_received
        (asyncio's "Fatal error on transport", a reset for the client) instead of an answer."""
        default_limits_protocol.data_received(upgrade("/socket/websocket?apikey=" + "k" * 70_000))
        await settle()
        assert_json_error(transport.buffer, 414, "Request URL too long")
        assert_refused(transport)

    async def test_an_upgrade_with_a_url_the_url_parser_refuses_is_400(self, app, protocol, transport):
        """llhttp accepts `http://[::1` as a request target; httptools.parse_url does not."""
        protocol.data_received(upgrade("http://[::1"))
        await settle()
        response = assert_response(transport.buffer, 400)
        assert orjson.loads(response["body"])["error"].startswith("Malformed HTTP request")
        assert_refused(transport)
        assert app.opened == []

    async def test_the_default_url_limit_takes_a_large_apikey(self, app, default_limits_protocol, transport):
        """The WebSocket URL carries the apikey JWT: a 6 KB one (many custom claims) passes."""
        default_limits_protocol.data_received(upgrade("/socket/websocket?vsn=2.0.0&apikey=" + "k" * 6000))
        await settle()
        assert handshake_response(transport.buffer)[0][0] == "HTTP/1.1 101 Switching Protocols"
        assert app.opened[0].query["apikey"] == "k" * 6000

    async def test_a_header_at_the_limit_is_served(self, app, protocol, transport):
        protocol.data_received(get_with(headers=[("X-Big", "v" * LIMITS.max_header_bytes)]))
        await settle()
        assert_response(transport.buffer, 200, b"ok")
        assert app.requests[0].headers["x-big"] == "v" * LIMITS.max_header_bytes

    async def test_a_header_value_over_the_limit_is_431(self, app, protocol, transport):
        protocol.data_received(get_with(headers=[("X-Big", "v" * (LIMITS.max_header_bytes + 1))]))
        await settle()
        assert_json_error(transport.buffer, 431, "Request header too large")
        assert_refused(transport)
        assert app.requests == []

    async def test_a_header_name_over_the_limit_is_431(self, app, protocol, transport):
        protocol.data_received(get_with(headers=[("X" * (LIMITS.max_header_bytes + 1), "v")]))
        await settle()
        assert_json_error(transport.buffer, 431, "Request header too large")
        assert app.requests == []

    async def test_the_maximum_number_of_headers_is_served(self, app, protocol, transport):
        extra = [(f"X-H{i}", "v") for i in range(LIMITS.max_headers - 1)]  # and Host
        protocol.data_received(get_with(headers=extra))
        await settle()
        assert_response(transport.buffer, 200, b"ok")

    async def test_one_header_more_than_the_maximum_is_431(self, app, protocol, transport):
        extra = [(f"X-H{i}", "v") for i in range(LIMITS.max_headers)]
        protocol.data_received(get_with(headers=extra))
        await settle()
        assert_json_error(transport.buffer, 431, "Too many request headers")
        assert_refused(transport)
        assert app.requests == []

    async def test_headers_over_the_block_limit_together_are_431(self, app, protocol, transport):
        """Each header and their number within limits, their sum not."""
        value = "v" * (LIMITS.max_header_bytes - 10)
        count = LIMITS.max_headers_bytes // len(value) + 1
        assert count < LIMITS.max_headers
        protocol.data_received(get_with(headers=[(f"X-H{i}", value) for i in range(count)]))
        await settle()
        assert_json_error(transport.buffer, 431, "Request headers too large")
        assert_refused(transport)
        assert app.requests == []

    async def test_a_never_ending_header_is_431_at_the_block_limit(self, protocol, transport):
        """What is held of it never exceeds the block limit by more than one read."""
        protocol.data_received(b"GET /healthcheck HTTP/1.1\r\nHost: example.org\r\nX-Endless: ")
        sent = 0
        while not transport.eof_written:
            protocol.data_received(b"v" * 100)
            sent += 100
            assert sent <= LIMITS.max_headers_bytes + 100, "still reading past the limit"
        assert sent > LIMITS.max_headers_bytes - 100
        assert_json_error(transport.buffer, 431, "Request headers too large")

    async def test_a_head_over_the_block_limit_in_one_read_is_431(self, protocol, transport):
        protocol.data_received(b"GET /healthcheck HTTP/1.1\r\nX-Endless: " + b"v" * (LIMITS.max_headers_bytes + 1))
        assert_json_error(transport.buffer, 431, "Request headers too large")
        assert_refused(transport)

    async def test_a_trickled_head_is_given_to_the_parser_once(self, app, protocol, transport):
        """httptools joins the pieces of a header value with `+=` on every read, a quadratic
        cost: a head arriving a byte at a time is held until its blank line, then fed once."""
        counter = FeedCounter(protocol.parser)
        protocol.parser = counter  # type: ignore[assignment]
        request = get_with(headers=[("X-Slow", "s" * 200), ("X-Also", "a" * 200)])
        for i in range(len(request)):
            protocol.data_received(request[i : i + 1])
        await settle()
        assert_response(transport.buffer, 200, b"ok")
        assert app.requests[0].headers["x-slow"] == "s" * 200
        assert app.requests[0].headers["x-also"] == "a" * 200
        line_end = request.index(b"\n") + 1
        assert b"".join(counter.fed) == request
        assert counter.fed[-1] == request[line_end:], "everything after the request line in one feed"

    @pytest.mark.parametrize("cut", [-4, -3, -2, -1])
    async def test_a_blank_line_split_across_reads_ends_the_head(self, protocol, transport, cut):
        request = get_with(headers=[("X-Thing", "a")])
        line_end = request.index(b"\n") + 1
        protocol.data_received(request[: line_end + 5])
        protocol.data_received(request[line_end + 5 : cut])
        protocol.data_received(request[cut:])
        await settle()
        assert_response(transport.buffer, 200, b"ok")

    async def test_a_request_with_no_headers_split_after_its_line_is_served(self, protocol, transport):
        protocol.data_received(b"GET /healthcheck HTTP/1.1\r")
        protocol.data_received(b"\n")
        protocol.data_received(b"\r")
        protocol.data_received(b"\n")
        await settle()
        assert_response(transport.buffer, 200, b"ok")

    async def test_a_pipelined_head_cut_by_the_read_is_served_after_the_first(self, protocol, transport):
        second = post_echo(b"second")
        protocol.data_received(GET_HEALTHCHECK + second[:30])
        protocol.data_received(second[30:40])
        protocol.data_received(second[40:])
        await settle()
        assert [r["body"] for r in responses(transport.buffer)] == [b"ok", b"second"]

    async def test_an_upgrade_head_in_pieces_with_a_frame_after_it(self, app, protocol, transport):
        for i in range(0, len(UPGRADE) - 2, 5):
            protocol.data_received(UPGRADE[i : min(i + 5, len(UPGRADE) - 2)])
        protocol.data_received(UPGRADE[-2:] + client_frame(Opcode.TEXT, b"early"))
        await settle()
        assert handshake_response(transport.buffer)[0][0] == "HTTP/1.1 101 Switching Protocols"
        assert app.sessions[0].texts == [b"early"]

    async def test_a_declared_body_over_the_maximum_is_413_at_its_first_bytes(self, app, protocol, transport):
        """Content-Length says it all: no need to buffer MAX_BODY bytes of it first."""
        protocol.data_received(
            b"POST /echo HTTP/1.1\r\nHost: example.org\r\nContent-Length: %d\r\n\r\nxx" % (MAX_BODY + 1)
        )
        await settle()
        assert_json_error(transport.buffer, 413, "Request body too large")
        assert_refused(transport)
        assert app.requests == []

    async def test_a_chunked_body_over_the_maximum_is_413(self, app, protocol, transport):
        chunk = b"x" * 40
        protocol.data_received(
            b"POST /echo HTTP/1.1\r\nHost: example.org\r\nTransfer-Encoding: chunked\r\n\r\n"
            + b"%x\r\n%s\r\n" % (len(chunk), chunk) * 2
        )
        await settle()
        assert_json_error(transport.buffer, 413, "Request body too large")
        assert app.requests == []


class TestHeadDeadline:
    """HttpLimits.head_timeout: a request head must be complete this long after its first byte,
    however the bytes trickle (every byte restarts the idle timer); 408, then closed (Cowboy's request_timeout)."""

    HEAD_TIMEOUT = 0.3

    @pytest.fixture
    async def timed(self, app):
        limits = HttpLimits(head_timeout_ms=round(self.HEAD_TIMEOUT * 1000), max_body_bytes=MAX_BODY)
        server = make_server(app, limits)
        task = asyncio.get_running_loop().create_task(server._sweep_forever())
        yield server
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    def connect(self, server: Server) -> tuple[HttpProtocol, MockTransport]:
        transport = MockTransport()
        return connect(server, transport), transport

    async def trickle(self, protocol: HttpProtocol, transport: MockTransport, data: bytes) -> float:
        """Send `data` a byte every 20 ms until the server closes; return how long that took."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        for byte in data:
            if transport.eof_written:
                break
            protocol.data_received(bytes([byte]))
            await asyncio.sleep(0.02)
        return loop.time() - started

    async def test_a_trickled_header_is_408_at_the_deadline(self, timed, app):
        protocol, transport = self.connect(timed)
        elapsed = await self.trickle(protocol, transport, b"GET /healthcheck HTTP/1.1\r\nX-Slow: " + b"s" * 1000)
        assert transport.eof_written, "still reading after the whole trickle"
        assert self.HEAD_TIMEOUT <= elapsed < self.HEAD_TIMEOUT + SWEEP + 0.2
        assert_json_error(transport.buffer, 408, "Request headers not received in time")
        assert app.requests == []

    async def test_a_trickled_request_line_is_408_at_the_deadline(self, timed):
        protocol, transport = self.connect(timed)
        await self.trickle(protocol, transport, b"GET /healthcheck?" + b"q" * 400)
        assert_json_error(transport.buffer, 408, "Request headers not received in time")
        assert_refused(transport)

    async def test_a_head_that_stops_halfway_is_408(self, timed):
        protocol, transport = self.connect(timed)
        protocol.data_received(b"GET /healthcheck HTTP/1.1\r\nHost: exa")
        await asyncio.sleep(self.HEAD_TIMEOUT + SWEEP)
        assert_json_error(transport.buffer, 408, "Request headers not received in time")
        assert_refused(transport)

    async def test_a_slow_but_timely_head_is_served(self, timed):
        protocol, transport = self.connect(timed)
        request = get_with()
        protocol.data_received(request[:20])
        await asyncio.sleep(self.HEAD_TIMEOUT / 3)
        protocol.data_received(request[20:])
        await settle()
        assert_response(transport.buffer, 200, b"ok")
        assert not transport.closed

    async def test_an_idle_keep_alive_connection_is_not_a_late_head(self, timed):
        """The deadline runs from the first byte of a request, not between requests."""
        protocol, transport = self.connect(timed)
        protocol.data_received(GET_HEALTHCHECK)
        await asyncio.sleep(self.HEAD_TIMEOUT + SWEEP)
        assert not transport.closed
        protocol.data_received(GET_HEALTHCHECK)
        await settle()
        assert [r["status"] for r in responses(transport.buffer)] == [200, 200]

    async def test_each_request_gets_its_own_deadline(self, timed):
        protocol, transport = self.connect(timed)
        for _ in range(3):
            protocol.data_received(GET_HEALTHCHECK[:10])
            await asyncio.sleep(self.HEAD_TIMEOUT * 0.6)
            protocol.data_received(GET_HEALTHCHECK[10:])
            await settle()
        assert [r["status"] for r in responses(transport.buffer)] == [200, 200, 200]
        assert not transport.closed


class TestLingeringClose:
    """A refused request may still be arriving: closing with unread input makes the kernel
    reset the connection, and the client loses the answer. So input is read and dropped
    for LINGER_TIMEOUT (or until the client closes), then the connection is closed."""

    async def test_input_after_a_refusal_is_dropped_then_the_connection_closes(
        self, app, protocol, transport, monkeypatch
    ):
        monkeypatch.setattr(server_module, "LINGER_TIMEOUT", 0.05)
        protocol.data_received(get_with(headers=[("X-Big", "v" * (LIMITS.max_header_bytes + 1))]))
        assert_refused(transport)
        protocol.data_received(GET_HEALTHCHECK)
        protocol.data_received(b"x" * 100_000)
        await settle()
        assert_json_error(transport.buffer, 431, "Request header too large")
        assert app.requests == []
        await asyncio.sleep(0.1)
        assert transport.closed

    async def test_shutdown_closes_a_lingering_connection(self, server, protocol, transport):
        protocol.data_received(MALFORMED)
        assert_refused(transport)
        await server.close()
        assert transport.closed

    async def test_a_transport_without_half_close_is_closed_at_once(self, protocol, transport, monkeypatch):
        monkeypatch.setattr(transport, "can_write_eof", lambda: False)
        protocol.data_received(MALFORMED)
        assert transport.closed
        assert transport.buffer.startswith(b"HTTP/1.1 400 ")


class TestNoCycles:
    """The parser holds the protocol's bound methods: unless that cycle is broken, a closed
    connection (and what its parser kept of a refused head) waits for the cyclic GC, which
    cli.py makes rare. Under attack that was hundreds of MB."""

    @pytest.fixture
    def no_gc(self):
        gc.disable()
        yield
        gc.enable()

    async def test_a_lost_connection_is_freed_at_once(self, server, no_gc):
        transport = MockTransport()
        protocol = connect(server, transport)
        protocol.data_received(b"GET /healthcheck HTTP/1.1\r\nX-Big: " + b"v" * (LIMITS.max_headers_bytes + 1))
        assert_refused(transport)
        ref = weakref.ref(protocol)
        protocol.connection_lost(None)
        del protocol
        assert ref() is None

    async def test_the_http_protocol_of_an_upgraded_connection_is_freed_at_once(self, server, no_gc):
        transport = MockTransport()
        protocol = connect(server, transport)
        protocol.data_received(UPGRADE)
        await settle()
        assert isinstance(transport.protocol, WebSocketConnection)
        ref = weakref.ref(protocol)
        del protocol
        assert ref() is None
