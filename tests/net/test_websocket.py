"""Tests for realtime_core.net.websocket: coalesced writes, slow consumers, and the RFC 6455 duties
the connection shares with websockets' ServerProtocol (fragmentation: RFC 6455 §5.4, ping: RFC 6455 §5.5.2,
close: RFC 6455 §5.5.1).

A WebSocketConnection is built over a MockTransport (tests/net/fakes.py) with
a ServerProtocol already OPEN (as net/server.py leaves it after the handshake);
client frames are masked bytes fed to data_received()."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from websockets.frames import Close, CloseCode, Frame, Opcode
from websockets.protocol import State
from websockets.server import ServerProtocol

from realtime_core.net.frames import binary_frame, text_frame
from realtime_core.net.websocket import WebSocketConnection, Writer

from .fakes import MockTransport, client_frame, server_frames

MAX_BUFFER = 1_000


class RecordingSession:
    def __init__(self) -> None:
        self.messages: list[tuple[str, bytes]] = []
        self.closes = 0

    def on_text(self, data: bytes) -> None:
        self.messages.append(("text", data))

    def on_binary(self, data: bytes) -> None:
        self.messages.append(("binary", data))

    def on_close(self) -> None:
        self.closes += 1

    def on_sent(self, nbytes: int) -> None:
        """Nothing: these tests read what the transport was given."""


class FailingSession(RecordingSession):
    """Raises on the text b"boom", records everything else."""

    def on_text(self, data: bytes) -> None:
        if data == b"boom":
            raise RuntimeError("session bug")
        super().on_text(data)


def client_close(code: int = CloseCode.NORMAL_CLOSURE, reason: str = "") -> bytes:
    return client_frame(Opcode.CLOSE, Close(code, reason).serialize())


async def tick() -> None:
    """Let the loop run once (the Writer flushes on the next iteration)."""
    await asyncio.sleep(0)


@pytest.fixture
async def writer():
    return Writer(asyncio.get_running_loop(), chunk=512, max_buffer=MAX_BUFFER)


def open_connection(writer: Writer, session: Any = None) -> tuple[WebSocketConnection, MockTransport]:
    transport = MockTransport()
    conn = WebSocketConnection(
        ServerProtocol(state=State.OPEN, max_size=1 << 20),
        transport,  # type: ignore[arg-type]
        writer,
        asyncio.get_running_loop(),
        "127.0.0.1:50000",
    )
    conn.session = session if session is not None else RecordingSession()
    return conn, transport


@pytest.fixture
async def conn_and_transport(writer):
    return open_connection(writer)


def assert_frames_sent(transport: MockTransport, *expected: tuple[Opcode, bytes]) -> None:
    assert [(f.opcode, f.data) for f in server_frames(transport.buffer)] == list(expected)


def assert_close_sent(transport: MockTransport, code: int, reason: str = "") -> None:
    frames = server_frames(transport.buffer)
    assert frames, "nothing sent"
    last = frames[-1]
    assert last.opcode is Opcode.CLOSE
    assert Close.parse(last.data) == Close(code, reason)


class TestWriter:
    """One transport.write() per connection per tick, in chunks of connections."""

    async def test_sends_wait_for_the_next_tick(self, conn_and_transport):
        conn, transport = conn_and_transport
        conn.send(text_frame(b"a"))
        assert transport.writes == []
        await tick()
        assert transport.writes == [text_frame(b"a")]

    async def test_many_sends_in_one_tick_are_one_write(self, conn_and_transport):
        conn, transport = conn_and_transport
        frames = [text_frame(b"%d" % n) for n in range(50)]
        for frame in frames:
            conn.send(frame)
        await tick()
        assert transport.writes == [b"".join(frames)]

    async def test_a_single_frame_is_written_without_copying(self, conn_and_transport):
        conn, transport = conn_and_transport
        frame = text_frame(b"x" * 1_000)
        conn.send(frame)
        await tick()
        assert transport.writes[0] is frame

    async def test_each_tick_writes_what_it_queued(self, conn_and_transport):
        conn, transport = conn_and_transport
        conn.send(text_frame(b"1"))
        await tick()
        conn.send(text_frame(b"2"))
        conn.send(text_frame(b"3"))
        await tick()
        assert transport.writes == [text_frame(b"1"), text_frame(b"2") + text_frame(b"3")]

    async def test_frames_keep_their_order(self, conn_and_transport):
        conn, transport = conn_and_transport
        conn.send(text_frame(b"first"))
        conn.send(binary_frame(b"second"))
        await tick()
        assert_frames_sent(transport, (Opcode.TEXT, b"first"), (Opcode.BINARY, b"second"))

    async def test_a_flush_in_chunks_takes_several_iterations(self):
        writer = Writer(asyncio.get_running_loop(), chunk=2, max_buffer=MAX_BUFFER)
        pairs = [open_connection(writer) for _ in range(5)]
        for conn, _ in pairs:
            conn.send(text_frame(b"x"))
        flushed = []
        for _ in range(10):
            await tick()
            flushed.append(sum(1 for _, transport in pairs if transport.writes))
            if flushed[-1] == 5:
                break
        assert flushed[0] == 2, "one callback writes `chunk` connections"
        assert flushed[-1] == 5, "the rest follow in later iterations"
        assert len(flushed) >= 3
        assert all(transport.writes == [text_frame(b"x")] for _, transport in pairs)

    async def test_a_connection_queued_during_a_chunked_flush_is_flushed_too(self):
        writer = Writer(asyncio.get_running_loop(), chunk=1, max_buffer=MAX_BUFFER)
        (a, ta), (b, tb) = open_connection(writer), open_connection(writer)
        a.send(text_frame(b"a"))
        await tick()
        b.send(text_frame(b"b"))
        for _ in range(5):
            await tick()
        assert (ta.writes, tb.writes) == ([text_frame(b"a")], [text_frame(b"b")])


class TestSlowConsumer:
    """A connection whose transport backlog passes max_buffer is aborted, not buffered."""

    async def test_a_big_write_buffer_aborts_the_connection(self, writer, conn_and_transport):
        conn, transport = conn_and_transport
        transport.write_buffer_size = MAX_BUFFER + 1
        conn.send(text_frame(b"x"))
        await tick()
        assert transport.aborted
        assert transport.writes == []
        assert writer.slow_consumers == 1
        assert conn.closed

    async def test_a_buffer_at_the_maximum_is_still_written(self, writer, conn_and_transport):
        conn, transport = conn_and_transport
        transport.write_buffer_size = MAX_BUFFER
        conn.send(text_frame(b"x"))
        await tick()
        assert transport.writes == [text_frame(b"x")]
        assert writer.slow_consumers == 0

    async def test_sends_after_the_abort_are_dropped(self, writer, conn_and_transport):
        conn, transport = conn_and_transport
        transport.write_buffer_size = MAX_BUFFER + 1
        conn.send(text_frame(b"x"))
        await tick()
        conn.send(text_frame(b"y"))
        await tick()
        assert writer.slow_consumers == 1
        assert transport.writes == []

    async def test_other_connections_are_not_affected(self, writer):
        (slow, slow_t), (fast, fast_t) = open_connection(writer), open_connection(writer)
        slow_t.write_buffer_size = MAX_BUFFER * 10
        slow.send(text_frame(b"x"))
        fast.send(text_frame(b"x"))
        await tick()
        assert slow_t.aborted
        assert fast_t.writes == [text_frame(b"x")]


class TestMessages:
    async def test_a_text_frame_goes_to_on_text(self, conn_and_transport):
        conn, _ = conn_and_transport
        conn.data_received(client_frame(Opcode.TEXT, b'["1","1","phoenix","heartbeat",{}]'))
        assert conn.session.messages == [("text", b'["1","1","phoenix","heartbeat",{}]')]

    async def test_a_binary_frame_goes_to_on_binary(self, conn_and_transport):
        conn, _ = conn_and_transport
        conn.data_received(client_frame(Opcode.BINARY, b"\x03\x00"))
        assert conn.session.messages == [("binary", b"\x03\x00")]

    async def test_several_frames_in_one_read(self, conn_and_transport):
        conn, _ = conn_and_transport
        conn.data_received(client_frame(Opcode.TEXT, b"a") + client_frame(Opcode.TEXT, b"b"))
        assert conn.session.messages == [("text", b"a"), ("text", b"b")]

    async def test_a_frame_split_across_reads(self, conn_and_transport):
        conn, _ = conn_and_transport
        data = client_frame(Opcode.TEXT, b"x" * 300)
        for i in range(0, len(data), 50):
            conn.data_received(data[i : i + 50])
        assert conn.session.messages == [("text", b"x" * 300)]

    async def test_reading_updates_last_seen(self, conn_and_transport):
        conn, _ = conn_and_transport
        conn.last_seen = 0.0
        conn.data_received(client_frame(Opcode.TEXT, b"a"))
        assert conn.last_seen > 0.0


class TestFragmentation:
    """RFC 6455 §5.4: a fragmented message is delivered once, whole."""

    async def test_a_fragmented_text_message_is_reassembled(self, conn_and_transport):
        conn, _ = conn_and_transport
        conn.data_received(client_frame(Opcode.TEXT, b"Hel", fin=False))
        conn.data_received(client_frame(Opcode.CONT, b"lo, ", fin=False))
        assert conn.session.messages == [], "nothing before the final fragment"
        conn.data_received(client_frame(Opcode.CONT, b"world", fin=True))
        assert conn.session.messages == [("text", b"Hello, world")]

    async def test_a_fragmented_binary_message_is_reassembled(self, conn_and_transport):
        conn, _ = conn_and_transport
        conn.data_received(client_frame(Opcode.BINARY, b"\x03\x01", fin=False) + client_frame(Opcode.CONT, b"\x02"))
        assert conn.session.messages == [("binary", b"\x03\x01\x02")]

    async def test_a_ping_between_fragments_is_answered_and_the_message_completes(self, conn_and_transport):
        """RFC 6455 §5.4: control frames MAY be injected in the middle of a fragmented message."""
        conn, transport = conn_and_transport
        conn.data_received(client_frame(Opcode.TEXT, b"a", fin=False))
        conn.data_received(client_frame(Opcode.PING, b"p"))
        conn.data_received(client_frame(Opcode.CONT, b"b"))
        assert conn.session.messages == [("text", b"ab")]
        assert_frames_sent(transport, (Opcode.PONG, b"p"))

    async def test_messages_after_a_fragmented_one_are_separate(self, conn_and_transport):
        conn, _ = conn_and_transport
        conn.data_received(client_frame(Opcode.TEXT, b"a", fin=False) + client_frame(Opcode.CONT, b"b"))
        conn.data_received(client_frame(Opcode.TEXT, b"c"))
        assert conn.session.messages == [("text", b"ab"), ("text", b"c")]


class TestPing:
    """RFC 6455 §5.5.2: a Ping is answered with a Pong carrying the same data."""

    async def test_ping_is_answered_at_once(self, conn_and_transport):
        conn, transport = conn_and_transport
        conn.data_received(client_frame(Opcode.PING, b"are you there"))
        assert_frames_sent(transport, (Opcode.PONG, b"are you there"))
        assert conn.session.messages == []

    async def test_queued_frames_are_written_before_the_pong(self, conn_and_transport):
        conn, transport = conn_and_transport
        conn.send(text_frame(b"queued"))
        conn.data_received(client_frame(Opcode.PING, b"p"))
        assert_frames_sent(transport, (Opcode.TEXT, b"queued"), (Opcode.PONG, b"p"))
        await tick()
        assert_frames_sent(transport, (Opcode.TEXT, b"queued"), (Opcode.PONG, b"p"))

    async def test_a_pong_needs_no_answer(self, conn_and_transport):
        conn, transport = conn_and_transport
        conn.data_received(client_frame(Opcode.PONG, b"p"))
        assert transport.writes == []


class TestClose:
    """RFC 6455 §5.5.1 and §7: the close handshake, from either side."""

    async def test_a_client_close_is_echoed_and_the_tcp_connection_closed(self, conn_and_transport):
        conn, transport = conn_and_transport
        conn.data_received(client_close(CloseCode.GOING_AWAY, "bye"))
        assert_close_sent(transport, CloseCode.GOING_AWAY, "bye")
        assert transport.closed, "the server closes the TCP connection first (RFC 6455 §7.1.1)"
        assert conn.closing

    async def test_the_session_closes_when_the_connection_is_lost(self, conn_and_transport):
        conn, _ = conn_and_transport
        session = conn.session
        conn.data_received(client_close())
        assert session.closes == 0
        conn.connection_lost(None)
        conn.connection_lost(None)
        assert session.closes == 1

    async def test_a_server_close_writes_queued_frames_first(self, conn_and_transport):
        conn, transport = conn_and_transport
        conn.send(text_frame(b"last words"))
        conn.close(CloseCode.GOING_AWAY, "Too many joins per second")
        frames = server_frames(transport.buffer)
        assert [f.opcode for f in frames] == [Opcode.TEXT, Opcode.CLOSE]
        assert_close_sent(transport, CloseCode.GOING_AWAY, "Too many joins per second")
        assert conn.closing
        assert not transport.closed, "the client answers first"

    async def test_the_clients_answer_to_a_server_close_ends_the_connection(self, conn_and_transport):
        conn, transport = conn_and_transport
        conn.close(CloseCode.SERVICE_RESTART, "drain")
        conn.data_received(client_close(CloseCode.SERVICE_RESTART, "drain"))
        assert transport.closed
        assert len([f for f in server_frames(transport.buffer) if f.opcode is Opcode.CLOSE]) == 1

    async def test_close_twice_sends_one_close_frame(self, conn_and_transport):
        conn, transport = conn_and_transport
        conn.close(CloseCode.GOING_AWAY)
        conn.close(CloseCode.NORMAL_CLOSURE)
        assert [f.opcode for f in server_frames(transport.buffer)] == [Opcode.CLOSE]

    async def test_no_data_frame_follows_a_close_frame(self, conn_and_transport):
        """RFC 6455 §5.5.1: after sending a Close frame, the endpoint MUST NOT send any further data frames."""
        conn, transport = conn_and_transport
        conn.close(CloseCode.GOING_AWAY, "bye")
        conn.send(text_frame(b"too late"))
        await tick()
        assert [f.opcode for f in server_frames(transport.buffer)] == [Opcode.CLOSE]

    async def test_nothing_is_written_after_the_connection_closed(self, conn_and_transport):
        conn, transport = conn_and_transport
        conn.data_received(client_close())
        conn.send(text_frame(b"too late"))
        await tick()
        assert [f.opcode for f in server_frames(transport.buffer)] == [Opcode.CLOSE]

    async def test_a_protocol_error_closes_with_1002(self, conn_and_transport):
        conn, transport = conn_and_transport
        conn.data_received(Frame(Opcode.TEXT, b"unmasked").serialize(mask=False))  # clients MUST mask
        assert_close_sent(transport, CloseCode.PROTOCOL_ERROR, "incorrect masking")
        assert transport.closed
        assert conn.session.messages == []

    async def test_a_frame_over_max_size_closes_with_1009(self, writer):
        transport = MockTransport()
        conn = WebSocketConnection(
            ServerProtocol(state=State.OPEN, max_size=10),
            transport,
            writer,
            asyncio.get_running_loop(),
            "peer",  # type: ignore[arg-type]
        )
        conn.session = RecordingSession()
        conn.data_received(client_frame(Opcode.TEXT, b"x" * 11))
        assert server_frames(transport.buffer)[-1].opcode is Opcode.CLOSE
        assert Close.parse(server_frames(transport.buffer)[-1].data).code == CloseCode.MESSAGE_TOO_BIG
        assert conn.session.messages == []


class TestSessionErrors:
    """A bug in the session must not take the connection down."""

    async def test_an_exception_in_on_text_is_logged_and_the_next_message_delivered(self, writer, caplog):
        session = FailingSession()
        conn, transport = open_connection(writer, session)
        conn.data_received(client_frame(Opcode.TEXT, b"boom") + client_frame(Opcode.TEXT, b"next"))
        assert session.messages == [("text", b"next")]
        assert "session bug" in caplog.text
        assert not conn.closing
        conn.data_received(client_frame(Opcode.PING, b"still alive"))
        assert_frames_sent(transport, (Opcode.PONG, b"still alive"))

    async def test_an_exception_in_on_close_is_logged(self, writer, caplog):
        class BadClose(RecordingSession):
            def on_close(self) -> None:
                raise RuntimeError("close bug")

        conn, _ = open_connection(writer, BadClose())
        conn.connection_lost(None)
        assert "close bug" in caplog.text
        assert conn.closed

    async def test_frames_before_a_session_is_attached_are_dropped(self, writer):
        conn, _ = open_connection(writer)
        conn.session = None
        conn.data_received(client_frame(Opcode.TEXT, b"early"))  # must not raise
        conn.session = RecordingSession()
        conn.data_received(client_frame(Opcode.TEXT, b"later"))
        assert conn.session.messages == [("text", b"later")]
