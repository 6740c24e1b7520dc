"""One asyncio server on one port: HTTP/1.1 requests and WebSocket upgrades.

HttpProtocol parses requests with httptools callbacks (as uvicorn's
httptools_impl does). A GET upgrade on a socket path is checked by the
websockets sans-I/O handshake, then by the application's `open_socket()`
(tenant, token, limits); on success the transport is handed to a
WebSocketConnection with transport.set_protocol(). Other requests go to the
application's Router; handlers return a Response.

Server owns the listening socket, the set of open connections and the sweeper
that closes idle ones (docs/protocol.md §1.5: 60 s without input) and answers 408 to
request heads not complete within HttpLimits.head_timeout.

Every request is bounded while it is read (HttpLimits): the URL (414), each
header, the number of headers and all of them together (431), the body (413).
httptools joins the pieces of a header name or value with `+=` on every read,
so a head that does not end in one read is held here (its request line fed, the
rest kept in one bytearray) until its blank line arrives, then fed at once:
reading a head costs time linear in its size, and never more than the limits."""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from typing import NoReturn, Protocol

import httptools
from websockets.datastructures import Headers
from websockets.frames import CloseCode
from websockets.http11 import Request as WsRequest
from websockets.protocol import State
from websockets.server import ServerProtocol

from ..errors import CONNECT_ERROR_TEXT, ConnectError
from ..tasks import Supervisor
from .http import HttpLimits, Request, Response, Router, StreamingResponse, json_response
from .http import chunk as body_chunk
from .websocket import Session, WebSocketConnection, Writer

__all__ = ["Application", "HttpProtocol", "Server"]

log = logging.getLogger(__name__)

# A close handshake we started is given this long to complete.
CLOSE_TIMEOUT = 5.0
# A half-received request or an idle keep-alive connection is closed after this.
HTTP_IDLE_TIMEOUT = 60.0
# After refusing a request that may still be arriving, what arrives is read and
# dropped this long (or until the client closes) before closing: closing with
# unread input resets the connection, and the client would lose the answer
# (Cowboy's linger_timeout, nginx's lingering close).
LINGER_TIMEOUT = 1.0
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
        limits: HttpLimits,
        idle_timeout: float,
        max_write_buffer: int,
        flush_chunk: int,
    ) -> None:
        self.app = app
        self.max_frame_bytes = max_frame_bytes
        self.limits = limits
        # A head of at most max_headers headers, fed to the parser in this many bytes or fewer,
        # passes every header check: each header line takes at least 3 bytes besides its name
        # and value (":" and CRLF), where the block limit counts 4.
        self.check_heads_above = min(limits.max_header_bytes, limits.max_headers_bytes - limits.max_headers)
        self.idle_timeout = idle_timeout
        self.loop = asyncio.get_running_loop()
        self.writer = Writer(self.loop, chunk=flush_chunk, max_buffer=max_write_buffer)
        self.http_connections: set[HttpProtocol] = set()
        self.websockets: set[WebSocketConnection] = set()
        self._server: asyncio.AbstractServer | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self.tasks = Supervisor()  # the sweeper, request queues and upgrades
        self.idle_closed = 0

    async def listen(self, host: str, port: int, *, reuse_port: bool = False) -> int:
        """Start listening; return the bound port (useful with port 0). With `reuse_port`, other
        processes may listen on the same port (SO_REUSEPORT): the kernel spreads connections."""
        self._server = await self.loop.create_server(
            lambda: HttpProtocol(self), host, port, backlog=4096, reuse_address=True, reuse_port=reuse_port
        )
        self._sweeper = self.tasks.spawn(self._sweep_forever(), name="idle sweeper")
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
        # Requests and upgrades still being handled end with their connections.
        await self.tasks.stop(timeout=2.0)

    async def _sweep_forever(self) -> None:
        interval = max(0.05, min(1.0, self.idle_timeout / 4, self.limits.head_timeout / 4))
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
            head_deadline = now - self.limits.head_timeout
            for http in list(self.http_connections):
                if http.busy:
                    continue
                if http.in_head and http.head_started < head_deadline:
                    http.reject(408, "Request headers not received in time")
                elif now - http.last_seen > HTTP_IDLE_TIMEOUT:
                    http.transport_close()

    # Hooks for the protocols

    def track_websocket(self, conn: WebSocketConnection) -> None:
        self.websockets.add(conn)

    def forget_websocket(self, conn: WebSocketConnection) -> None:
        self.websockets.discard(conn)


async def _close_chunks(response: StreamingResponse) -> None:
    """Let the body's iterator release what it holds (an async generator's `finally`)."""
    close = getattr(response.chunks, "aclose", None)
    if close is not None:
        try:
            await close()
        except Exception:
            log.exception("closing a streaming response")


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
        self.limits = server.limits
        self.loop = server.loop
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.peer = ""
        self.last_seen = self.loop.time()
        self.busy = False  # a handler is running
        self.closed = False
        # Per-request state
        self.in_head = False  # between the first byte of a request and the end of its head
        self.head_started = 0.0
        # A head that did not end in the read that ended its request line: the bytes
        # after it, to feed once its blank line is here (see the module docstring).
        self._held: bytearray | None = None
        self._held_fed = 0  # how many of _held's first bytes the parser already has
        self._held_size = 0  # header bytes of the current head so far
        self._url: list[bytes] = []
        self._url_size = 0
        self._headers: list[tuple[bytes, bytes]] = []
        self._head_fed = 0  # bytes fed to the parser since the current head began, or more
        self._body: list[bytes] = []
        self._body_size = 0
        self._queue: deque[tuple[Request, bool]] = deque()
        self._upgrading = False
        # RFC 9112 §9.6: after a request with "Connection: close" (or an HTTP/1.0
        # one without keep-alive) nothing more is read; its response is still sent.
        self._last_request = False
        # Streaming responses (StreamingResponse): whether the transport takes more
        # (pause_writing/resume_writing), and a future done once the connection is lost.
        self._writable = asyncio.Event()
        self._writable.set()
        self._lost: asyncio.Future[None] = self.loop.create_future()

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        self.server.http_connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.server.http_connections.discard(self)
        self._drop_parser()
        if not self._lost.done():
            self._lost.set_result(None)
        self._writable.set()

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    def _drop_parser(self) -> None:
        """Once no more input comes: the parser holds our bound methods, a cycle that only
        the cyclic GC frees (rarely, see cli.py), with what the parser keeps of a refused
        head (up to a read): thousands of refused attackers held hundreds of MB."""
        self.__dict__.pop("parser", None)

    def data_received(self, data: bytes) -> None:
        self.last_seen = self.loop.time()
        if self._upgrading:
            return  # bytes after an upgrade request before the handshake answer: refused client
        if self._last_request or self.closed:
            return
        if self._held is not None:
            complete = self._hold(data)
            if complete is None:
                return
            data = complete
        self._head_fed = self._head_fed + len(data) if self.in_head else len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            self._on_upgrade(data[exc.args[0] :] if exc.args else b"")
            return
        except httptools.HttpParserError as exc:
            if self._last_request:
                return  # llhttp's "Data after `Connection: close`": ignored, see _last_request
            self.reject(400, f"Malformed HTTP request: {exc}")
            return
        if self.in_head:
            self._head_continues(data)

    def _head_continues(self, data: bytes) -> None:
        """`data`, just fed, ended inside a request head: hold what follows once
        its request line is complete (until then on_url bounds what the parser keeps)."""
        # The head began after the last blank line of `data`, or in an earlier read
        # (llhttp insists on CRLF, so a complete head ends with exactly this).
        last_blank = data.rfind(b"\r\n\r\n")
        line_end = data.find(b"\n", last_blank + 4 if last_blank >= 0 else 0)
        if line_end < 0:
            return
        # The request line ended with CRLF: keep the last bytes fed after it so that
        # a blank line split across reads is found.
        fed = b"\r\n" + data[line_end + 1 :]
        self._held = bytearray(fed[-3:])
        self._held_fed = len(self._held)
        self._held_size = len(fed) - 2
        if self._held_size > self.limits.max_headers_bytes:
            self.reject(431, "Request headers too large")

    def _hold(self, data: bytes) -> bytes | None:
        """Keep `data` with the held head; once its blank line is here, return what
        the parser has yet to get of it (and whatever follows it)."""
        held = self._held
        assert held is not None
        search_from = max(0, len(held) - 3)
        held += data
        if held.find(b"\r\n\r\n", search_from) >= 0:
            self._held = None
            return bytes(memoryview(held)[self._held_fed :])
        self._held_size += len(data)
        if self._held_size > self.limits.max_headers_bytes:
            self.reject(431, "Request headers too large")
        return None

    # httptools callbacks

    def on_message_begin(self) -> None:
        self.in_head = True
        self.head_started = self.last_seen
        self._url = []
        self._url_size = 0
        self._headers = []
        self._body = []
        self._body_size = 0

    def on_url(self, url: bytes) -> None:
        # Called once per read while the URL arrives: pieces are joined once.
        self._url.append(url)
        self._url_size += len(url)
        if self._url_size > self.limits.max_url_bytes:
            self._refuse(414, "Request URL too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.in_head = False
        # A head is in what was fed since it began (at most a read and what _hold keeps),
        # so one check here suffices, and heads fed in fewer bytes pass it (see Server).
        if self._head_fed > self.server.check_heads_above or len(self._headers) > self.limits.max_headers:
            self._check_headers()

    def _check_headers(self) -> None:
        limits = self.limits
        size = 0
        for name, value in self._headers:
            if len(name) > limits.max_header_bytes or len(value) > limits.max_header_bytes:
                self._refuse(431, "Request header too large")
            size += len(name) + len(value) + 4  # "name: value\r\n"
        if len(self._headers) > limits.max_headers:
            self._refuse(431, "Too many request headers")
        if size > limits.max_headers_bytes:
            self._refuse(431, "Request headers too large")

    def on_body(self, body: bytes) -> None:
        if not self._body_size and self._declared_length() > self.limits.max_body_bytes:
            self._refuse(413, "Request body too large")  # before buffering any of it
        self._body_size += len(body)
        if self._body_size > self.limits.max_body_bytes:
            self._refuse(413, "Request body too large")
        self._body.append(body)

    def _declared_length(self) -> int:
        for name, value in self._headers:
            if len(name) == 14 and name.lower() == b"content-length":
                return int(value)  # llhttp accepted it: digits only
        return 0  # chunked: bounded as it arrives

    def _refuse(self, status: int, error: str) -> NoReturn:
        """Answer `status` and close, from a parser callback: the raise stops the parser."""
        self.reject(status, error)
        raise httptools.HttpParserError(error)

    def reject(self, status: int, error: str) -> None:
        """Answer `status` with `{"error": error}` and close the connection once
        the client has had LINGER_TIMEOUT to stop sending (input is dropped meanwhile)."""
        self.in_head = False
        self._held = None
        transport = self.transport
        if transport is None or self.closed:
            return
        self.closed = True
        response = json_response(status, {"error": error})
        transport.write(response.head(False) + response.body)
        if transport.can_write_eof():
            transport.write_eof()
            self.loop.call_later(LINGER_TIMEOUT, transport.close)
        else:
            transport.close()

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
            self.server.tasks.spawn(
                self._serve_queue(), name=f"http {self.peer}", on_error=lambda _: self.transport_close()
            )

    def _build_request(self) -> Request:
        url = httptools.parse_url(b"".join(self._url))
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
                    if isinstance(response, StreamingResponse):
                        await _close_chunks(response)  # the client left while it was being made
                    return
                if isinstance(response, StreamingResponse):
                    if request.method == "HEAD":  # the head only: a HEAD response has no body
                        await _close_chunks(response)
                        self.transport.write(response.head(keep_alive))
                    elif not await self._stream(response, keep_alive):
                        return
                else:
                    # RFC 9110 §9.3.2: HEAD is GET without the content (the length stays).
                    body = b"" if request.method == "HEAD" else response.body
                    data = response.head(keep_alive) + body
                    self.transport.write(data)
                    if response.on_written is not None:
                        response.on_written(len(data))
                if not keep_alive:
                    self.transport_close()
                    return
                if len(self._queue) <= MAX_PIPELINED:
                    self.transport.resume_reading()
        finally:
            self.busy = False
            self.last_seen = self.loop.time()

    async def _stream(self, response: StreamingResponse, keep_alive: bool) -> bool:
        """Write `response` chunk by chunk until its iterator ends (True) or the connection is
        lost (False). Waits while the transport is over its high-water mark, so a client that
        does not read holds back the producer instead of growing the write buffer. However it
        ends (also cancelled, at server stop), the iterator is closed once nothing awaits it."""
        assert self.transport is not None
        self.transport.write(response.head(keep_alive))
        chunks = response.chunks
        lost = self._lost
        following: asyncio.Future[bytes] | None = None
        try:
            while True:
                if not self._writable.is_set():
                    await self._writable.wait()
                if self.closed:
                    return False
                following = asyncio.ensure_future(anext(chunks))
                await asyncio.wait((following, lost), return_when=asyncio.FIRST_COMPLETED)
                if not following.done():
                    return False
                try:
                    data = following.result()
                except StopAsyncIteration:
                    self.transport.write(body_chunk(b""))
                    return True
                if self.closed:
                    return False
                if data:
                    self.transport.write(body_chunk(data))
        finally:
            if following is not None:
                following.cancel()
                await asyncio.wait((following,))  # an iterator cannot be closed while it runs
                if not following.cancelled():
                    following.exception()  # retrieved: it is the iterator's end or failure, seen above
            await _close_chunks(response)

    async def _dispatch(self, request: Request) -> Response:
        method = "GET" if request.method == "HEAD" else request.method
        handler, params, path_known = self.server.app.http.match(method, request.path)
        if handler is None:
            if path_known:  # RFC 9110 §15.5.6: a 405 names the allowed methods
                allow = ", ".join(self.server.app.http.allowed(request.path))
                return json_response(405, {"error": "Method not allowed"}, [("allow", allow)])
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
        """Close now, also a connection lingering after a refusal (closing twice is harmless)."""
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    # WebSocket upgrade

    def _on_upgrade(self, trailing: bytes) -> None:
        try:
            request = self._build_request()
        except httptools.HttpParserInvalidURLError as exc:
            # llhttp takes CONNECT's authority form (`CONNECT host:443`) as an
            # upgrade, and parse_url() refuses it.
            self.reject(400, f"Malformed HTTP request: {exc}")
            return
        if request.path not in self.server.app.socket_paths or request.method != "GET":
            self._send_and_close(json_response(404, {"error": "Not found"}))
            return
        self._upgrading = True
        assert self.transport is not None
        self.transport.pause_reading()
        self.server.tasks.spawn(
            self._upgrade(request, trailing), name=f"upgrade {self.peer}", on_error=self._upgrade_failed
        )

    async def _upgrade(self, request: Request, trailing: bytes) -> None:
        server = self.server
        # websockets' sans-I/O handshake: accept() checks the upgrade request and builds the
        # response, send_response() serializes it. httptools has already parsed the request, so the
        # frames go to a second protocol created OPEN (its documented `state` argument).
        handshake_proto = ServerProtocol()
        ws_request = WsRequest(
            request.path, Headers((k.decode("latin-1"), v.decode("latin-1")) for k, v in self._headers)
        )
        handshake = handshake_proto.accept(ws_request)
        if handshake.status_code != 101:
            handshake_proto.send_response(handshake)
            self._write_all(handshake_proto.data_to_send())
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
        proto = ServerProtocol(state=State.OPEN, max_size=server.max_frame_bytes)
        conn = _TrackedConnection(server, proto, transport, server.writer, self.loop, self.peer)
        server.http_connections.discard(self)
        transport.set_protocol(conn)
        self._drop_parser()
        handshake_proto.send_response(handshake)
        answer = handshake_proto.data_to_send()
        self._write_all(answer)
        server.track_websocket(conn)
        conn.session = session
        conn.bytes_out += sum(map(len, answer))  # the 101 answer is the connection's first egress
        attach(conn)
        session.on_sent(conn.bytes_out)
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
