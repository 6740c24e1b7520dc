"""Property tests of the HTTP request head parser: realtime_core.net.server.HttpProtocol.data_received().

Bytes from a client, cut into arbitrary chunks, never raise out of
data_received() and never crash a task. Every response written is a valid
HTTP/1.1 response with one of the statuses the server documents: a handler's
answer, 404/405 for routing, 400 "Malformed HTTP request" for what the parser
refuses, 413 for a body over the limit, the size/time limits of the request
head (408, 414, 431), or the refused upgrade's answers (400, 426, and 403 from the application)."""

from __future__ import annotations

import asyncio
from typing import Any

from hypothesis import example, given
from hypothesis import strategies as st
from net.fakes import MockTransport

from realtime_core.errors import ConnectError
from realtime_core.net.http import HttpLimits, Request, Response, Router
from realtime_core.net.server import HttpProtocol, Server

from .strategies import mutated

DOCUMENTED = {200, 400, 403, 404, 405, 408, 413, 414, 426, 431}
MAX_BODY = 64


class App:
    """Two routes and a socket path whose upgrade is refused with 403 (no tenant behind it)."""

    socket_paths = frozenset({"/socket/websocket"})

    def __init__(self) -> None:
        self.http = Router()
        self.http.add("GET", "/api/ping", self.ping)
        self.http.add("POST", "/api/broadcast", self.echo)

    async def ping(self, request: Request) -> Response:
        return Response(200, b"pong")

    async def echo(self, request: Request) -> Response:
        return Response(200, request.body)

    async def open_socket(self, request: Request) -> Any:
        raise ConnectError(403, "Unauthorized")

    def connect_error_delay(self, error: ConnectError) -> float:
        return 0.0


def statuses(out: bytes) -> list[int]:
    """The status of every response in `out`, each a complete HTTP/1.1 response.

    A response to HEAD carries a content-length but no body: a response is
    taken to have its body when the next one (or the end) follows it."""
    found: list[int] = []
    pos = 0
    while pos < len(out):
        assert out.startswith(b"HTTP/1.1 ", pos), out[pos : pos + 300]
        end = out.find(b"\r\n\r\n", pos)
        assert end > 0, out[pos : pos + 300]
        head = out[pos:end].decode("latin-1").split("\r\n")
        found.append(int(head[0].split(" ", 2)[1]))
        length = next((int(h.split(":", 1)[1]) for h in head[1:] if h.lower().startswith("content-length:")), 0)
        with_body = end + 4 + length
        pos = with_body if with_body == len(out) or out.startswith(b"HTTP/1.1 ", with_body) else end + 4
    return found


LOOP = asyncio.new_event_loop()


async def _feed(chunks: list[bytes]) -> tuple[MockTransport, list[dict[str, Any]]]:
    errors: list[dict[str, Any]] = []
    LOOP.set_exception_handler(lambda _loop, context: errors.append(context))
    server = Server(
        App(),
        max_frame_bytes=1 << 20,
        limits=HttpLimits(max_body_bytes=MAX_BODY),
        idle_timeout=60,
        max_write_buffer=1 << 20,
        flush_chunk=1 << 16,
    )
    protocol = HttpProtocol(server)
    transport = MockTransport()
    protocol.connection_made(transport)  # type: ignore[arg-type]
    for chunk in chunks:
        if transport.closed or transport.protocol is not None:
            break
        protocol.data_received(chunk)  # must not raise
        for _ in range(3):
            await asyncio.sleep(0)  # handlers and the upgrade run as tasks
    for _ in range(10):
        await asyncio.sleep(0)
    return transport, errors


def feed(chunks: list[bytes]) -> None:
    transport, errors = LOOP.run_until_complete(_feed(chunks))
    assert not errors, errors
    out = transport.buffer
    if not out:
        return  # an incomplete head: nothing to answer yet
    found = statuses(out)
    assert found and set(found) <= DOCUMENTED, (found, out[:300])


# -- request heads --

tokens = st.text(alphabet="!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ", min_size=1)
methods = st.one_of(
    st.sampled_from([b"GET", b"POST", b"HEAD", b"PUT", b"OPTIONS", b"CONNECT", b"PRI"]), st.binary(max_size=8)
)
targets = st.one_of(
    st.sampled_from(
        [b"/api/ping", b"/api/broadcast", b"/socket/websocket?vsn=2.0.0", b"*", b"http://h/api/ping", b"/", b"h:443"]
    ),
    st.binary(max_size=40),
    st.text(max_size=30).map(lambda s: ("/" + s).encode("utf-8", "surrogatepass")),
    st.sampled_from([b"/%", b"/%zz", b"/%00", b"/a?%ff=%fe", b"/\x00", b"//", b"/a#frag", b"/?" + b"&" * 50]),
)
versions = st.one_of(
    st.sampled_from([b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2.0", b"HTTP/1.", b"http/1.1"]), st.binary(max_size=10)
)
header_names = st.one_of(
    st.sampled_from(
        [
            b"Host",
            b"Content-Length",
            b"Transfer-Encoding",
            b"Connection",
            b"Upgrade",
            b"Sec-WebSocket-Key",
            b"Sec-WebSocket-Version",
            b"Expect",
        ]
    ),
    tokens.map(str.encode),
    st.binary(max_size=10),
)
header_values = st.one_of(
    st.sampled_from(
        [
            b"0",
            b"5",
            b"-1",
            b"99999999999999999999999",
            b"chunked",
            b"close",
            b"keep-alive",
            b"Upgrade",
            b"websocket",
            b"13",
            b"dGhlIHNhbXBsZSBub25jZQ==",
            b"100-continue",
        ]
    ),
    st.binary(max_size=20),
)


@st.composite
def requests(draw: st.DrawFn) -> bytes:
    eol = draw(st.sampled_from([b"\r\n", b"\n"]))
    lines = [draw(methods) + b" " + draw(targets) + b" " + draw(versions)]
    for name, value in draw(st.lists(st.tuples(header_names, header_values), max_size=6)):
        lines.append(name + b": " + value)
    return eol.join(lines) + eol + eol + draw(st.binary(max_size=80))


UPGRADE = (
    b"GET /socket/websocket?vsn=2.0.0 HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
)
UPGRADE_HEADERS = [
    (b"Host", [b"h", b"", b"h:99999"]),
    (b"Upgrade", [b"websocket", b"WebSocket", b"h2c", b"websocket, foo"]),
    (b"Connection", [b"Upgrade", b"keep-alive, Upgrade", b"close", b"upgrade,,"]),
    (b"Sec-WebSocket-Version", [b"13", b"8", b"13, 8", b"", b"99999999999999999999"]),
    (b"Sec-WebSocket-Key", [b"dGhlIHNhbXBsZSBub25jZQ==", b"short", b"!!!!", b"", b"dGhlIHNhbXBsZSBub25jZQ==, x"]),
    (b"Sec-WebSocket-Extensions", [b"permessage-deflate", b"permessage-deflate; client_max_window_bits=99", b";;"]),
    (b"Sec-WebSocket-Protocol", [b"phoenix", b",", b"\xff"]),
]


@st.composite
def upgrades(draw: st.DrawFn) -> bytes:
    """A valid WebSocket upgrade with up to two faults: a header left out, repeated or given an odd value."""
    target = draw(st.sampled_from([b"/socket/websocket?vsn=2.0.0&apikey=k", b"/socket/websocket"]) | targets)
    method = draw(st.sampled_from([b"GET"] * 4 + [b"POST", b"HEAD"]))
    headers = [[name, choices[0]] for name, choices in UPGRADE_HEADERS[:5]]
    for _ in range(draw(st.integers(0, 2))):
        i = draw(st.integers(0, len(UPGRADE_HEADERS) - 1))
        name, choices = UPGRADE_HEADERS[i]
        fault = draw(st.sampled_from(["drop", "repeat", "value", "odd"]))
        if fault == "drop":
            headers = [h for h in headers if h[0] != name]
        elif fault == "repeat":
            headers.append([name, draw(st.sampled_from(choices))])
        else:
            value = draw(st.sampled_from(choices) if fault == "value" else header_values)
            headers = [h for h in headers if h[0] != name] + [[name, value]]
    lines = [method + b" " + target + b" HTTP/1.1", *(name + b": " + value for name, value in headers)]
    tail = draw(st.one_of(st.just(b""), st.binary(max_size=30)))  # frames before the answer
    return b"\r\n".join(lines) + b"\r\n\r\n" + tail


inputs = st.one_of(
    requests(),
    upgrades(),
    upgrades(),  # twice as often: the upgrade path has the most branches
    requests().flatmap(mutated),
    st.lists(requests(), min_size=2, max_size=4).map(b"".join),  # pipelined
    st.just(UPGRADE).flatmap(mutated),
    st.binary(max_size=200),
)


@st.composite
def chunked(draw: st.DrawFn) -> list[bytes]:
    data = draw(inputs)
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=4)))
    return [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]


@given(chunked())
@example([b"GET /api/ping HTTP/1.1\r\nHost: h\r\n\r\n"])
@example([b"GET /api/ping HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n"])
@example([b"POST /api/broadcast HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffffff\r\n"])
@example([UPGRADE[:40], UPGRADE[40:]])
@example([b"CONNECT h:443 HTTP/1.1\r\nHost: h\r\n\r\n"])  # llhttp: an upgrade; parse_url() raised
@example([b"CONNECT  HTTP/1.1\r\n\r\n"])
@example([b"HEAD /api/ping HTTP/1.1\r\n\r\n", b"\x00"])  # a HEAD answer without its body, then a 400
def test_request_heads(chunks: list[bytes]) -> None:
    feed(chunks)
