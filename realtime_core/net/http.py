"""HTTP request and response values, and the small router of async handlers.

net/server.py parses a request into a Request, asks Router.match() for a
handler, awaits it and writes the Response it returns. Handlers never touch a
transport; they are plain `async def handler(request) -> Response`."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qs

import orjson

from ..envvars import int_var

__all__ = ["Handler", "HttpLimits", "Request", "Response", "Router", "StreamingResponse", "json_response"]


@dataclass(frozen=True, slots=True)
class HttpLimits:
    """Bounds on one HTTP request, enforced by net/server.py while it is read.

    Cowboy's (upstream's HTTP server) defaults are a request line of 8000 bytes,
    header values of 4096 (upstream's MAX_HEADER_LENGTH), 100 headers and 5 s for a
    request head; ours are as large or larger. Cowboy does not bound all headers
    together; h11 (uvicorn) bounds a whole head at 16 KB, ours is 64 KB.
    The WebSocket URL carries the apikey JWT: 8 KB leaves room for a large one.
    Each field names its environment variable (envvars): config.Settings holds one."""

    max_url_bytes: int = int_var(
        "REALTIME_MAX_URL_BYTES",
        8 * 1024,
        "longer request URLs (the WebSocket one carries the apikey) are answered 414; at most 65535",
        minimum=1,
        maximum=65_535,  # httptools' URL parser refuses longer ones
    )
    max_header_bytes: int = int_var(
        "MAX_HEADER_LENGTH",
        8 * 1024,
        "a longer header name or value is answered 431 (upstream's name; its default is 4096)",
        minimum=1,
    )
    max_headers: int = int_var("REALTIME_MAX_HEADERS", 100, "more headers are answered 431", minimum=1)
    # All header lines ("name: value\r\n") together.
    max_headers_bytes: int = int_var(
        "REALTIME_MAX_HEADERS_BYTES", 64 * 1024, "more header bytes in all are answered 431", minimum=1
    )
    # From the first byte of a request to the end of its head, however slowly it
    # trickles in: answered 408 and closed.
    head_timeout_ms: int = int_var(
        "REALTIME_REQUEST_HEAD_TIMEOUT_MS",
        10_000,
        "a request head not complete this long after its first byte is answered 408",
        minimum=1,
    )
    max_body_bytes: int = int_var(
        "REALTIME_MAX_HTTP_BODY_BYTES", 10 * 1024 * 1024, "a larger request body (declared or sent) is answered 413"
    )

    @property
    def head_timeout(self) -> float:
        """head_timeout_ms in seconds."""
        return self.head_timeout_ms / 1000


@dataclass(slots=True)
class Request:
    """One parsed HTTP/1.1 request. Header names are lower case."""

    method: str
    path: str
    query_string: str
    headers: dict[str, str]
    body: bytes = b""
    client: str = ""
    params: dict[str, str] = field(default_factory=dict)  # from the route pattern
    _query: dict[str, str] | None = None

    @property
    def query(self) -> dict[str, str]:
        """The query parameters, the first value of each."""
        if self._query is None:
            parsed = parse_qs(self.query_string, keep_blank_values=True)
            self._query = {k: v[0] for k, v in parsed.items()}
        return self._query


@dataclass(slots=True)
class Response:
    """What a handler returns: status, extra headers and the body bytes."""

    status: int = 200
    body: bytes = b""
    headers: list[tuple[str, str]] = field(default_factory=list)
    content_type: str | None = None
    # Told the bytes written (status line, headers, body) once the server wrote them: egress.
    on_written: Callable[[int], None] | None = None

    def head(self, keep_alive: bool) -> bytes:
        """The status line and headers, ending with the blank line."""
        reason = _REASONS.get(self.status, "Unknown")
        lines = [f"HTTP/1.1 {self.status} {reason}"]
        if self.content_type:
            lines.append(f"content-type: {self.content_type}")
        if self.status != 204:  # RFC 9110 §8.6: MUST NOT send Content-Length in a 204
            lines.append(f"content-length: {len(self.body)}")
        lines.extend(f"{name}: {value}" for name, value in self.headers)
        if not keep_alive:
            lines.append("connection: close")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


class StreamingResponse(Response):
    """A response whose body is written as `chunks` yields it (chunked transfer encoding).

    net/server.py writes each chunk as it comes, waits while the client is not reading
    (the transport's write buffer is over its high-water mark), and closes `chunks`
    (`aclose()`) when the client goes away or the server stops: an async generator
    then runs its `finally` to release what it holds. `body` is unused."""

    def __init__(
        self,
        chunks: AsyncIterator[bytes],
        status: int = 200,
        headers: list[tuple[str, str]] | None = None,
        content_type: str | None = None,
    ) -> None:
        super().__init__(status, b"", headers or [], content_type)
        self.chunks = chunks

    def head(self, keep_alive: bool) -> bytes:
        reason = _REASONS.get(self.status, "Unknown")
        lines = [f"HTTP/1.1 {self.status} {reason}", "transfer-encoding: chunked"]
        if self.content_type:
            lines.append(f"content-type: {self.content_type}")
        lines.extend(f"{name}: {value}" for name, value in self.headers)
        if not keep_alive:
            lines.append("connection: close")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def chunk(data: bytes) -> bytes:
    """`data` as one chunk of a chunked body (RFC 9112 §7.1); b"" is the last chunk."""
    return b"%x\r\n%b\r\n" % (len(data), data)


_REASONS = {s.value: s.phrase for s in HTTPStatus}


def json_response(status: int, body: Any, headers: list[tuple[str, str]] | None = None) -> Response:
    """A JSON response (`body` is encoded with orjson)."""
    return Response(status, orjson.dumps(body), headers or [], "application/json; charset=utf-8")


Handler = Callable[[Request], Awaitable[Response]]


class Router:
    """Routes (method, path pattern) to handlers. Patterns use `:name` segments."""

    __slots__ = ("_routes",)

    def __init__(self) -> None:
        self._routes: list[tuple[str, re.Pattern[str], Handler]] = []

    def add(self, method: str, pattern: str, handler: Handler) -> None:
        regex = re.sub(r":(\w+)", r"(?P<\1>[^/]+)", pattern)
        self._routes.append((method, re.compile(f"^{regex}$"), handler))

    def allowed(self, path: str) -> list[str]:
        """The methods routed for `path` (a 405's `allow` header), HEAD with GET."""
        methods = {method for method, regex, _ in self._routes if regex.match(path)}
        if "GET" in methods:
            methods.add("HEAD")
        return sorted(methods)

    def match(self, method: str, path: str) -> tuple[Handler | None, dict[str, str], bool]:
        """Return (handler, path params, path_known). path_known without a
        handler means the method is not allowed."""
        path_known = False
        for route_method, regex, handler in self._routes:
            m = regex.match(path)
            if m is None:
                continue
            path_known = True
            if route_method == method:
                return handler, m.groupdict(), True
        return None, {}, path_known
