"""Tests for StreamingResponse on HttpProtocol: chunked framing, write back-pressure, and the
end of a stream when its client goes away (net/http.py, net/server.py).

As in test_server.py: raw requests fed to data_received() over a MockTransport."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from realtime_core.net.http import Request, Response, StreamingResponse

from .fakes import MockTransport
from .test_server import FakeApp, connect, make_server, responses, settle

GET_STREAM = b"GET /stream HTTP/1.1\r\nHost: example.org\r\n\r\n"
HEAD_STREAM = b"HEAD /stream HTTP/1.1\r\nHost: example.org\r\n\r\n"
GET_HEALTHCHECK = b"GET /healthcheck HTTP/1.1\r\nHost: example.org\r\n\r\n"


class StreamingApp(FakeApp):
    """FakeApp with /stream: yields what the test puts in `queue` until it puts None. The handler
    waits for `gate` when a test sets one; `closed` is set once the body's iterator is closed."""

    def __init__(self) -> None:
        super().__init__()
        self.http.add("GET", "/stream", self.stream)
        self.queue: asyncio.Queue[bytes | None] = asyncio.Queue()
        self.produced = 0
        self.closed = asyncio.Event()
        self.gate: asyncio.Event | None = None

    async def stream(self, request: Request) -> Response:
        if self.gate is not None:
            await self.gate.wait()
        app = self

        class Chunks:
            """An iterator with aclose(), as admin/tail.py's: closed even if never iterated."""

            def __init__(self) -> None:
                self.inner = chunks()

            def __aiter__(self) -> Chunks:
                return self

            async def __anext__(self) -> bytes:
                return await anext(self.inner)

            async def aclose(self) -> None:
                app.closed.set()
                await self.inner.aclose()

        async def chunks() -> AsyncIterator[bytes]:
            try:
                while (item := await self.queue.get()) is not None:
                    self.produced += 1
                    yield item
            finally:
                self.closed.set()

        return StreamingResponse(Chunks(), content_type="text/event-stream")


@pytest.fixture
async def app():
    return StreamingApp()


@pytest.fixture
async def transport():
    return MockTransport()


@pytest.fixture
async def protocol(app, transport):
    return connect(make_server(app), transport)


async def test_chunks_are_written_as_they_come_then_the_last_chunk(app, protocol, transport):
    protocol.data_received(GET_STREAM)
    await settle()
    head = transport.buffer
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"transfer-encoding: chunked\r\n" in head and b"content-length" not in head
    app.queue.put_nowait(b"event: a\n\n")
    await settle()
    assert transport.buffer.endswith(b"a\r\nevent: a\n\n\r\n")
    app.queue.put_nowait(b"event: b\n\n")
    app.queue.put_nowait(None)
    await settle()
    [response] = responses(transport.buffer)
    assert response["status"] == 200
    assert response["headers"]["content-type"] == "text/event-stream"
    assert response["body"] == b"event: a\n\nevent: b\n\n"
    assert app.closed.is_set()
    assert not transport.closed  # keep-alive: the connection serves the next request


async def test_the_connection_serves_the_next_request_after_a_stream(app, protocol, transport):
    protocol.data_received(GET_STREAM + GET_HEALTHCHECK)
    await settle()
    app.queue.put_nowait(b"x")
    app.queue.put_nowait(None)
    await settle()
    assert [r["body"] for r in responses(transport.buffer)] == [b"x", b"ok"]


async def test_a_lost_client_closes_the_stream_without_waiting_for_a_chunk(app, protocol, transport):
    protocol.data_received(GET_STREAM)
    await settle()
    protocol.connection_lost(None)
    await asyncio.wait_for(app.closed.wait(), 1)
    assert not protocol.busy
    app.queue.put_nowait(b"too late")
    await settle()
    assert app.produced == 0


async def test_a_client_gone_before_the_handler_returned_still_closes_the_stream(app, protocol, transport):
    app.gate = asyncio.Event()
    protocol.data_received(GET_STREAM)
    await settle()
    protocol.connection_lost(None)
    app.gate.set()
    await asyncio.wait_for(app.closed.wait(), 1)
    assert transport.buffer == b""


async def test_a_client_that_does_not_read_holds_back_the_producer(app, protocol, transport):
    protocol.data_received(GET_STREAM)
    await settle()
    protocol.pause_writing()  # the transport passed its high-water mark
    app.queue.put_nowait(b"one")
    app.queue.put_nowait(b"two")
    await settle()
    # The chunk already awaited when writing paused is written; nothing more is asked for.
    assert app.produced == 1 and b"two" not in transport.buffer
    protocol.resume_writing()
    await settle()
    assert app.produced == 2 and transport.buffer.endswith(b"3\r\ntwo\r\n")


async def test_head_sends_the_head_only(app, protocol, transport):
    protocol.data_received(HEAD_STREAM + GET_HEALTHCHECK)
    await settle()
    head, _, rest = transport.buffer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK") and rest.startswith(b"HTTP/1.1 200 OK")
    assert app.produced == 0
