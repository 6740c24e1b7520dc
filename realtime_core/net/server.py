"""One asyncio server on one port: HTTP/1.1 requests and WebSocket upgrades.

HttpProtocol parses requests with httptools callbacks (as uvicorn's
httptools_impl does). A GET upgrade on a socket path is checked by the
websockets sans-I/O handshake, then by the application's `open_socket()`
(tenant, token, limits); on success the transport is handed to a
WebSocketConnection with transport.set_protocol(). Other requests go to the
application's Router; handlers return a Response.

Server owns the listening socket, the set of open connections and the sweeper
that closes idle ones (docs/protocol.md §1.5: 60 s without input)."""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from typing import Protocol

import httptools
from websockets.datastructures import Headers
from websockets.frames import CloseCode
from websockets.http11 import Request as WsRequest
from websockets.protocol import State
from websockets.server import ServerProtocol

from ..errors import CONNECT_ERROR_TEXT, ConnectError
from ..tasks import spawn
from .http import Request, Response, Router, json_response
from .websocket import Session, WebSocketConnection, Writer

__all__ = ["Application", "HttpProtocol", "Server"]

log = logging.getLogger(__name__)

# A close handshake we started is given this long to complete.
CLOSE_TIMEOUT = 5.0
# A half-received request or an idle keep-alive connection is closed after this.
HTTP_IDLE_TIMEOUT = 60.0
MAX_PIPELINED = 16


class Application(Protocol):
    """What the server needs from the application (app.App)."""

    http: Router
    socket_paths: frozenset[str]

    async def open_socket(self, request: Request) -> tuple[Session, Callable[[WebSocketConnection], None]]:
        """Authenticate an upgrade; raise ConnectError to refuse it."""
        ...

    def connect_error_delay(self, error: ConnectError) -> float: ...


class Server:
    """The listener, its open connections and the idle sweeper."""

    def __init__(
        self,
        app: Application,
        *,
        max_frame_bytes: int,
        max_body_bytes: int,
        idle_timeout: float,
        max_write_buffer: int,
        flush_chunk: int,
    ) -> None:
        self.app = app
        self.max_frame_bytes = max_frame_bytes
        self.max_body_bytes = max_body_bytes
        self.idle_timeout = idle_timeout
        self.loop = asyncio.get_running_loop()
        self.writer = Writer(self.loop, chunk=flush_chunk, max_buffer=max_write_buffer)
        self.http_connections: set[HttpProtocol] = set()
        self.websockets: set[WebSocketConnection] = set()
        self._server: asyncio.AbstractServer | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self.idle_closed = 0

    async def listen(self, host: str, port: int) -> int:
        """Start listening; return the bound port (useful with port 0)."""
        self._server = await self.loop.create_server(
            lambda: HttpProtocol(self), host, port, backlog=4096, reuse_address=True
        )
        self._sweeper = spawn(self._sweep_forever(), name="idle sweeper")
        return self._server.sockets[0].getsockname()[1]

    async def close(self, code: CloseCode = CloseCode.SERVICE_RESTART) -> None:
        """Stop accepting, close every WebSocket with `code` and every HTTP connection."""
        if self._server is not None:
            self._server.close()
        if self._sweeper is not None:
            self._sweeper.cancel()
        for ws in list(self.websockets):
            ws.close(code, "server shutting down")
        for http in list(self.http_connections):
            http.transport_close()
        deadline = self.loop.time() + 2.0
        while self.websockets and self.loop.time() < deadline:
            await asyncio.sleep(0.02)
        for ws in list(self.websockets):
            ws.transport.abort()

    async def _sweep_forever(self) -> None:
        interval = max(0.05, min(1.0, self.idle_timeout / 4))
        closing_since: dict[WebSocketConnection, float] = {}
        while True:
            await asyncio.sleep(interval)
            now = self.loop.time()
            for ws in list(self.websockets):
                if ws.closing:
                    started = closing_since.setdefault(ws, now)
                    if now - started > CLOSE_TIMEOUT:
                        ws.transport.abort()
                elif now - ws.last_seen > self.idle_timeout and not ws.reading_paused:
                    self.idle_closed += 1
                    ws.close(CloseCode.NORMAL_CLOSURE, "idle timeout")
                    closing_since[ws] = now
            for ws in [ws for ws in closing_since if ws not in self.websockets]:
                del closing_since[ws]
            for http in list(self.http_connections):
                if now - http.last_seen > HTTP_IDLE_TIMEOUT and not http.busy:
                    http.transport_close()

    # Hooks for the protocols

    def track_websocket(self, conn: WebSocketConnection) -> None:
        self.websockets.add(conn)

    def forget_websocket(self, conn: WebSocketConnection) -> None:
        self.websockets.discard(conn)


class _TrackedConnection(WebSocketConnection):
    """A WebSocketConnection that leaves the server's set when it is lost."""

    __slots__ = ("_server",)

    def __init__(self, server: Server, *args: object) -> None:
        super().__init__(*args)  # type: ignore[arg-type]
        self._server = server

    def connection_lost(self, exc: Exception | None) -> None:
        self._server.forget_websocket(self)
        super().connection_lost(exc)


class HttpProtocol(asyncio.Protocol):
    """HTTP/1.1 on one TCP connection, until it closes or upgrades."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.loop = server.loop
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.peer = ""
        self.last_seen = self.loop.time()
        self.busy = False  # a handler is running
        self.closed = False
        # Per-request state
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._body: list[bytes] = []
        self._body_size = 0
        self._queue: deque[tuple[Request, bool]] = deque()
        self._upgrading = False
        # RFC 9112 §9.6: after a request with "Connection: close" (or an HTTP/1.0
        # one without keep-alive) nothing more is read; its response is still sent.
        self._last_request = False

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        self.server.http_connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.server.http_connections.discard(self)

    def data_received(self, data: bytes) -> None:
        self.last_seen = self.loop.time()
        if self._upgrading:
            return  # bytes after an upgrade request before the handshake answer: refused client
        if self._last_request:
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            self._on_upgrade(data[exc.args[0] :] if exc.args else b"")
        except httptools.HttpParserError as exc:
            if self._last_request:
                return  # llhttp's "Data after `Connection: close`": ignored, see _last_request
            self._send_and_close(json_response(400, {"error": f"Malformed HTTP request: {exc}"}))

    # httptools callbacks

    def on_message_begin(self) -> None:
        self._url = b""
        self._headers = []
        self._body = []
        self._body_size = 0

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))

    def on_body(self, body: bytes) -> None:
        self._body_size += len(body)
        if self._body_size > self.server.max_body_bytes:
            self._send_and_close(json_response(413, {"error": "Request body too large"}))
            raise httptools.HttpParserError("body too large")
        self._body.append(body)

    def on_message_complete(self) -> None:
        if self.parser.should_upgrade():
            return  # handled by _on_upgrade once feed_data raises HttpParserUpgrade
        request = self._build_request()
        keep_alive = self.parser.should_keep_alive()
        self._last_request = not keep_alive
        self._queue.append((request, keep_alive))
        if len(self._queue) > MAX_PIPELINED and self.transport is not None:
            self.transport.pause_reading()
        if not self.busy:
            self.busy = True
            spawn(self._serve_queue(), name=f"http {self.peer}", on_error=lambda _: self.transport_close())

    def _build_request(self) -> Request:
        url = httptools.parse_url(self._url)
        headers: dict[str, str] = {}
        for name, value in self._headers:
            key = name.decode("latin-1").lower()
            text = value.decode("latin-1")
            headers[key] = f"{headers[key]}, {text}" if key in headers else text
        return Request(
            method=self.parser.get_method().decode("ascii", "replace"),
            path=(url.path or b"/").decode("utf-8", "replace"),
            query_string=(url.query or b"").decode("utf-8", "replace"),
            headers=headers,
            body=b"".join(self._body),
            client=self.peer,
        )

    # Requests

    async def _serve_queue(self) -> None:
        try:
            while self._queue and not self.closed:
                request, keep_alive = self._queue.popleft()
                response = await self._dispatch(request)
                if self.closed or self.transport is None:
                    return
                # RFC 9110 §9.3.2: HEAD is GET without the content (the length stays).
                body = b"" if request.method == "HEAD" else response.body
                self.transport.write(response.head(keep_alive) + body)
                if not keep_alive:
                    self.transport_close()
                    return
                if len(self._queue) <= MAX_PIPELINED:
                    self.transport.resume_reading()
        finally:
            self.busy = False
            self.last_seen = self.loop.time()

    async def _dispatch(self, request: Request) -> Response:
        method = "GET" if request.method == "HEAD" else request.method
        handler, params, path_known = self.server.app.http.match(method, request.path)
        if handler is None:
            if path_known:
                return json_response(405, {"error": "Method not allowed"})
            return json_response(404, {"error": "Not found"})
        request.params = params
        try:
            return await handler(request)
        except Exception:
            log.exception("error handling %s %s", request.method, request.path)
            return json_response(500, {"error": "Internal server error"})

    def _send_and_close(self, response: Response) -> None:
        if self.transport is not None and not self.closed:
            self.transport.write(response.head(False) + response.body)
        self.transport_close()

    def transport_close(self) -> None:
        if self.transport is not None and not self.closed:
            self.closed = True
            self.transport.close()

    # WebSocket upgrade

    def _on_upgrade(self, trailing: bytes) -> None:
        try:
            request = self._build_request()
        except httptools.HttpParserInvalidURLError as exc:
            # llhttp takes CONNECT's authority form (`CONNECT host:443`) as an
            # upgrade, and parse_url() refuses it.
            self._send_and_close(json_response(400, {"error": f"Malformed HTTP request: {exc}"}))
            return
        if request.path not in self.server.app.socket_paths or request.method != "GET":
            self._send_and_close(json_response(404, {"error": "Not found"}))
            return
        self._upgrading = True
        assert self.transport is not None
        self.transport.pause_reading()
        spawn(self._upgrade(request, trailing), name=f"upgrade {self.peer}", on_error=self._upgrade_failed)

    async def _upgrade(self, request: Request, trailing: bytes) -> None:
        server = self.server
        proto = ServerProtocol(max_size=server.max_frame_bytes)
        ws_request = WsRequest(
            request.path, Headers((k.decode("latin-1"), v.decode("latin-1")) for k, v in self._headers)
        )
        handshake = proto.accept(ws_request)
        if handshake.status_code != 101:
            proto.send_response(handshake)
            self._write_all(proto.data_to_send())
            self.transport_close()
            return
        try:
            session, attach = await server.app.open_socket(request)
        except ConnectError as error:
            delay = server.app.connect_error_delay(error)
            if delay:
                await asyncio.sleep(delay)
            body = json_response(error.status, {"error": error.text}) if error.text else Response(error.status)
            self._send_and_close(body)
            return
        if self.closed or self.transport is None:
            session.on_close()
            return
        transport = self.transport
        conn = _TrackedConnection(server, proto, transport, server.writer, self.loop, self.peer)
        server.http_connections.discard(self)
        transport.set_protocol(conn)
        proto.send_response(handshake)
        self._write_all(proto.data_to_send())
        if proto.state is not State.OPEN:
            self.transport_close()
            session.on_close()
            return
        # The protocol's parser was created expecting the HTTP request, which
        # httptools already consumed: restart it in the OPEN state, where it
        # parses WebSocket frames.
        proto.parser = proto.parse()
        next(proto.parser)
        server.track_websocket(conn)
        conn.session = session
        attach(conn)
        if trailing:
            conn.data_received(trailing)
        if not conn.reading_paused:  # the session may already hold too much
            transport.resume_reading()

    def _upgrade_failed(self, _: BaseException) -> None:
        """An unexpected failure in _upgrade (spawn logged it): 500 before the protocol switch."""
        if self.transport is not None and self.transport.get_protocol() is self:
            self._send_and_close(json_response(500, {"error": CONNECT_ERROR_TEXT}))
        elif self.transport is not None:
            self.transport.abort()

    def _write_all(self, chunks: list[bytes]) -> None:
        if self.transport is None or self.closed:
            return
        for chunk in chunks:
            if chunk:
                self.transport.write(chunk)
