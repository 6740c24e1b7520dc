"""Tests for what one WebSocket client may cost the server (realtime_core.net.websocket):
every write under the slow-consumer rule, input paused by the session, and the
RFC 6455 §8.1 UTF-8 check of text messages (close 1007).

Built like tests/net/test_websocket.py: a WebSocketConnection over a MockTransport."""

from __future__ import annotations

import asyncio

import pytest
from websockets.frames import CloseCode, Opcode

from realtime_core.net.frames import text_frame
from realtime_core.net.websocket import READ_BUDGET, Writer

from .fakes import client_frame, server_frames
from .test_websocket import MAX_BUFFER, assert_close_sent, assert_frames_sent, client_close, open_connection, tick


@pytest.fixture
async def writer():
    return Writer(asyncio.get_running_loop(), chunk=512, max_buffer=MAX_BUFFER)


@pytest.fixture
async def conn_and_transport(writer):
    return open_connection(writer)


class PausingSession:
    """Records messages; asks its connection to stop reading at the text b"pause"."""

    def __init__(self) -> None:
        self.conn = None
        self.messages: list[bytes] = []
        self.closes = 0

    def on_text(self, data: bytes) -> None:
        self.messages.append(data)
        if data == b"pause":
            self.conn.pause_reading()

    def on_binary(self, data: bytes) -> None:
        self.messages.append(data)

    def on_close(self) -> None:
        self.closes += 1

    def on_sent(self, nbytes: int) -> None:
        """Nothing: these tests read what the transport was given."""


def paused_connection(writer):
    session = PausingSession()
    conn, transport = open_connection(writer, session)
    session.conn = conn
    return conn, transport, session


def texts(*data: bytes) -> bytes:
    return b"".join(client_frame(Opcode.TEXT, d) for d in data)


class TestEveryWriteIsAccounted:
    """Pongs and close frames pass the same backlog check as queued frames."""

    async def test_a_pong_to_a_client_that_does_not_read_aborts_it(self, writer, conn_and_transport):
        conn, transport = conn_and_transport
        transport.write_buffer_size = MAX_BUFFER + 1
        conn.data_received(client_frame(Opcode.PING, b"p" * 100))
        assert transport.aborted
        assert transport.writes == []
        assert writer.slow_consumers == 1
        conn.data_received(client_frame(Opcode.PING, b"again"))
        assert transport.writes == []
        assert writer.slow_consumers == 1, "counted once per connection"

    async def test_pongs_are_written_while_the_backlog_is_within_the_maximum(self, writer, conn_and_transport):
        conn, transport = conn_and_transport
        transport.write_buffer_size = MAX_BUFFER
        conn.data_received(client_frame(Opcode.PING, b"a") + client_frame(Opcode.PING, b"b"))
        assert_frames_sent(transport, (Opcode.PONG, b"a"), (Opcode.PONG, b"b"))
        assert len(transport.writes) == 1, "the pongs of one read are one write"
        assert writer.slow_consumers == 0

    async def test_a_close_frame_to_a_client_that_does_not_read_aborts_it(self, writer, conn_and_transport):
        conn, transport = conn_and_transport
        transport.write_buffer_size = MAX_BUFFER + 1
        conn.close(CloseCode.GOING_AWAY, "bye")
        assert transport.aborted
        assert transport.writes == []
        assert writer.slow_consumers == 1

    async def test_an_echoed_close_to_a_client_that_does_not_read_aborts_it(self, writer, conn_and_transport):
        conn, transport = conn_and_transport
        transport.write_buffer_size = MAX_BUFFER + 1
        conn.data_received(client_close())
        assert transport.aborted
        assert transport.writes == []
        assert writer.slow_consumers == 1


class TestInvalidUtf8:
    """RFC 6455 §8.1: a text message that is not UTF-8 fails the connection with 1007."""

    async def test_an_invalid_text_frame_closes_with_1007(self, conn_and_transport):
        conn, transport = conn_and_transport
        conn.data_received(client_frame(Opcode.TEXT, b'["1","1","x",\xff"e",{}]') + texts(b"after"))
        assert_close_sent(transport, CloseCode.INVALID_DATA, "invalid start byte at position 13")
        assert transport.closed
        assert conn.session.messages == [], "neither the invalid message nor what follows is handled"

    async def test_messages_before_it_are_handled(self, conn_and_transport):
        conn, transport = conn_and_transport
        conn.data_received(texts(b"before", b"\xc3\x28"))
        assert conn.session.messages == [("text", b"before")]
        assert_close_sent(transport, CloseCode.INVALID_DATA, "invalid continuation byte at position 0")

    async def test_an_invalid_fragmented_text_message_closes_with_1007(self, conn_and_transport):
        """A code point split across fragments is valid; the whole message is checked."""
        conn, transport = conn_and_transport
        conn.data_received(client_frame(Opcode.TEXT, b"\xc3", fin=False) + client_frame(Opcode.CONT, b"\xa9"))
        assert conn.session.messages == [("text", "é".encode())]
        conn.data_received(client_frame(Opcode.TEXT, b"ok", fin=False) + client_frame(Opcode.CONT, b"\xed\xa0\x80"))
        assert_close_sent(transport, CloseCode.INVALID_DATA, "invalid continuation byte at position 2")
        assert conn.session.messages == [("text", "é".encode())]

    async def test_valid_non_ascii_text_is_delivered(self, conn_and_transport):
        conn, transport = conn_and_transport
        conn.data_received(texts("naïve ✓ 😀".encode()))
        assert conn.session.messages == [("text", "naïve ✓ 😀".encode())]
        assert transport.writes == []

    async def test_invalid_utf8_in_a_binary_frame_is_the_sessions_business(self, conn_and_transport):
        conn, _ = conn_and_transport
        conn.data_received(client_frame(Opcode.BINARY, b"\xff"))
        assert conn.session.messages == [("binary", b"\xff")]
        assert not conn.closing


class TestPauseReading:
    """The session stops input; frames already read wait, in order, for resume_reading()."""

    async def test_frames_after_the_pause_wait_for_resume(self, writer):
        conn, transport, session = paused_connection(writer)
        conn.data_received(texts(b"a", b"pause", b"b", b"c"))
        assert session.messages == [b"a", b"pause"]
        assert transport.read_paused
        assert conn.reading_paused
        conn.resume_reading()
        assert session.messages == [b"a", b"pause"], "not inside the caller: it may be draining its own queue"
        assert transport.read_paused, "the transport resumes after the held frames"
        await tick()
        assert session.messages == [b"a", b"pause", b"b", b"c"]
        assert not transport.read_paused
        assert not conn.reading_paused

    async def test_a_pause_while_handling_the_held_frames_keeps_the_rest(self, writer):
        conn, transport, session = paused_connection(writer)
        conn.data_received(texts(b"pause", b"a", b"pause", b"b"))
        conn.resume_reading()
        await tick()
        assert session.messages == [b"pause", b"a", b"pause"]
        assert transport.read_paused
        conn.resume_reading()
        await tick()
        assert session.messages == [b"pause", b"a", b"pause", b"b"]
        assert not transport.read_paused

    async def test_data_read_while_frames_are_held_goes_behind_them(self, writer):
        conn, _, session = paused_connection(writer)
        conn.data_received(texts(b"pause", b"a"))
        conn.data_received(texts(b"b"))  # e.g. the bytes that came with the upgrade request
        conn.resume_reading()
        await tick()
        assert session.messages == [b"pause", b"a", b"b"]

    async def test_pings_held_with_the_frames_are_answered_when_read(self, writer):
        conn, transport, _ = paused_connection(writer)
        conn.data_received(texts(b"pause") + client_frame(Opcode.PING, b"p"))
        assert_frames_sent(transport, (Opcode.PONG, b"p"))

    async def test_resume_without_held_frames_resumes_at_once(self, writer):
        conn, transport, _ = paused_connection(writer)
        conn.data_received(texts(b"pause"))
        conn.resume_reading()
        assert not transport.read_paused

    async def test_resuming_restarts_the_idle_clock(self, writer):
        conn, _, _ = paused_connection(writer)
        conn.data_received(texts(b"pause"))
        conn.last_seen = 0.0
        conn.resume_reading()
        assert conn.last_seen > 0.0, "time spent paused by the server is not the client's idleness"

    async def test_a_server_close_resumes_reading_and_drops_held_frames(self, writer):
        conn, transport, session = paused_connection(writer)
        conn.data_received(texts(b"pause", b"held"))
        conn.close(CloseCode.GOING_AWAY, "bye")
        assert not transport.read_paused, "the client's close must be read"
        assert not conn.reading_paused
        conn.data_received(texts(b"after the close") + client_close(CloseCode.GOING_AWAY, "bye"))
        await tick()
        assert session.messages == [b"pause"]
        assert transport.closed
        assert [f.opcode for f in server_frames(transport.buffer)] == [Opcode.CLOSE]

    async def test_a_server_close_between_resume_and_the_held_frames_still_reads(self, writer):
        conn, transport, session = paused_connection(writer)
        conn.data_received(texts(b"pause", b"held"))
        conn.resume_reading()  # the held frames are due on the next turn
        conn.close(CloseCode.GOING_AWAY, "bye")
        await tick()
        assert not transport.read_paused, "the client's close must be read"
        assert session.messages == [b"pause"]

    async def test_a_closing_connection_is_not_paused(self, writer):
        conn, transport, _ = paused_connection(writer)
        conn.close()
        conn.pause_reading()
        assert not transport.read_paused

    async def test_a_client_close_after_messages_in_one_read_lets_them_through(self, writer):
        conn, _, session = paused_connection(writer)
        conn.data_received(texts(b"last words") + client_close())
        assert session.messages == [b"last words"]

    async def test_held_frames_of_a_lost_connection_are_dropped(self, writer):
        conn, _, session = paused_connection(writer)
        conn.data_received(texts(b"pause", b"held"))
        conn.connection_lost(None)
        conn.resume_reading()
        await tick()
        assert session.messages == [b"pause"]

    async def test_a_paused_client_that_does_not_read_is_still_cut_off(self, writer):
        conn, transport, session = paused_connection(writer)
        conn.data_received(texts(b"pause", b"held"))
        transport.write_buffer_size = MAX_BUFFER + 1
        conn.send(text_frame(b"push"))
        await tick()
        assert transport.aborted
        assert writer.slow_consumers == 1
        conn.resume_reading()
        await tick()
        assert session.messages == [b"pause"], "nothing is handled for a connection that is gone"

    async def test_sending_is_not_affected_by_a_pause(self, writer):
        conn, transport, _ = paused_connection(writer)
        conn.data_received(texts(b"pause"))
        conn.send(text_frame(b"reply"))
        await tick()
        assert_frames_sent(transport, (Opcode.TEXT, b"reply"))


class TestReadBudget:
    """A connection that hands over READ_BUDGET bytes in one loop turn waits for the next turn."""

    async def test_a_busy_connection_waits_one_turn(self, conn_and_transport):
        conn, transport = conn_and_transport
        half = client_frame(Opcode.BINARY, b"x" * (READ_BUDGET // 2))
        conn.data_received(half)
        assert not transport.read_paused
        conn.data_received(half)
        assert transport.read_paused, "the others are read first"
        assert len(conn.session.messages) == 2, "what was read is handled"
        await tick()
        assert not transport.read_paused
        conn.data_received(half)
        assert not transport.read_paused, "a new turn, a new budget"

    async def test_the_turn_ends_without_resuming_a_session_pause(self, writer):
        conn, transport, _ = paused_connection(writer)
        conn.data_received(texts(b"pause", b"x" * READ_BUDGET))
        await tick()
        assert transport.read_paused, "the session still holds too much"
        conn.resume_reading()
        await tick()
        assert not transport.read_paused

    async def test_a_session_resume_during_the_turn_leaves_the_wait_to_the_turn(self, writer):
        conn, transport, _ = paused_connection(writer)
        conn.data_received(texts(b"pause") + client_frame(Opcode.BINARY, b"x" * READ_BUDGET))
        conn.resume_reading()
        assert transport.read_paused
        await tick()
        assert not transport.read_paused
