"""The WebSocket driver: feeds websockets' sans-I/O protocol, writes coalesced frames.

net/server.py hands a transport to WebSocketConnection after the upgrade. The
connection feeds received bytes to `websockets.server.ServerProtocol` and passes
each complete text or binary message to its Session (socket.py). Outgoing
frames are already complete WebSocket frames (net/frames.py): send() queues them
and the Writer writes each connection's queue once per loop tick, so a fan-out
to many channels of one socket, or many fan-outs in one tick, cost one write.

Every write (queued frames, and the pongs and close frames the protocol makes)
passes the same backlog check: a client that does not read is disconnected as
a slow consumer instead of growing server memory. The Session may stop input
with pause_reading() while it holds messages it cannot handle yet; the frames
already parsed wait in the connection until resume_reading().
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Protocol

from websockets.frames import CloseCode, Frame, Opcode
from websockets.protocol import State
from websockets.server import ServerProtocol

__all__ = ["Session", "WebSocketConnection", "Writer"]

log = logging.getLogger(__name__)

OP_TEXT, OP_BINARY, OP_CONT = Opcode.TEXT, Opcode.BINARY, Opcode.CONT

# Input one connection may hand over in one loop turn; then it waits for the
# next. uvloop (libuv) reads a busy socket up to 32 times per turn, so a single
# flooding client held the loop for a second; this keeps it to one full read,
# which is what asyncio's own selector loop reads per turn.
READ_BUDGET = 256 * 1024


class Session(Protocol):
    """What a WebSocketConnection drives: one Phoenix socket (socket.py)."""

    def on_text(self, data: bytes) -> None: ...

    def on_binary(self, data: bytes) -> None: ...

    def on_close(self) -> None: ...

    def on_sent(self, nbytes: int) -> None:
        """The connection wrote `nbytes` of its own (the HTTP 101 answer, pongs, close frames)."""


class Writer:
    """Writes queued frames once per loop tick, in bounded chunks.

    A fan-out to S sockets queues S frames; the flush then writes each socket's
    queue with one transport.write(). Flushing thousands of sockets in one
    callback would stall the loop, so each callback writes `chunk` sockets and
    reschedules itself for the rest (docs/design.md §2: p99 stays low for big topics).
    It also numbers the loop's turns, by which connections share out reading.
    """

    __slots__ = (
        "_chunk",
        "_dirty",
        "_loop",
        "_scheduled",
        "_turn",
        "_turn_scheduled",
        "max_buffer",
        "on_slow_consumer",
        "slow_consumers",
    )

    def __init__(self, loop: asyncio.AbstractEventLoop, *, chunk: int, max_buffer: int) -> None:
        self._loop = loop
        self._chunk = chunk
        self._dirty: list[WebSocketConnection] = []
        self._scheduled = False
        self._turn = 0
        self._turn_scheduled = False
        self.max_buffer = max_buffer
        self.slow_consumers = 0
        # Told of each slow consumer and the queued frames its disconnect drops (delivery traces).
        self.on_slow_consumer: Callable[[WebSocketConnection, list[bytes] | None], None] | None = None

    def turn(self) -> int:
        """A number that changes once the loop has run its other callbacks: connections
        count their input per turn with it (READ_BUDGET)."""
        if not self._turn_scheduled:
            self._turn_scheduled = True
            self._loop.call_soon(self._next_turn)
        return self._turn

    def _next_turn(self) -> None:
        self._turn += 1
        self._turn_scheduled = False

    def mark(self, conn: WebSocketConnection) -> None:
        """Schedule `conn`'s queue for the next flush (call once per new queue)."""
        self._dirty.append(conn)
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        dirty = self._dirty
        if len(dirty) <= self._chunk:
            batch, self._dirty = dirty, []
        else:
            batch, self._dirty = dirty[: self._chunk], dirty[self._chunk :]
        for conn in batch:
            conn.flush()
        if self._dirty:
            self._loop.call_soon(self._flush)
        else:
            self._scheduled = False


class WebSocketConnection(asyncio.Protocol):
    """One accepted WebSocket: bytes in to its Session, frames out through the Writer."""

    __slots__ = (
        "_backlog",
        "_frag",
        "_frag_opcode",
        "_loop",
        "_out",
        "_proto",
        "_read_paused",
        "_throttled",
        "_turn",
        "_turn_bytes",
        "_writer",
        "bytes_in",
        "bytes_out",
        "closed",
        "dropped_slow",
        "last_seen",
        "messages_in",
        "messages_out",
        "peer",
        "session",
        "transport",
    )

    def __init__(
        self,
        proto: ServerProtocol,
        transport: asyncio.Transport,
        writer: Writer,
        loop: asyncio.AbstractEventLoop,
        peer: str,
    ) -> None:
        self._proto = proto
        self.transport = transport
        self._writer = writer
        self._loop = loop
        self._out: list[bytes] | None = None  # frames queued since the last flush
        self._frag: list[bytes] | None = None  # a fragmented message being assembled
        self._frag_opcode = OP_TEXT
        self._read_paused = False  # the session asked to stop reading
        self._backlog: list[Frame] | None = None  # frames parsed but not handled while paused
        self._turn = -1  # the Writer's turn of the last read, and the bytes read in it
        self._turn_bytes = 0
        self._throttled = False  # reading waits for the next turn (READ_BUDGET)
        self.session: Session | None = None
        self.closed = False
        self.dropped_slow = False  # closed by the slow-consumer rule
        self.last_seen = loop.time()
        self.peer = peer
        # Traffic of this connection (admin introspection, attribution): plain counters where the
        # bytes and messages already pass. Bytes are wire bytes (the HTTP 101 answer included);
        # messages are the frames queued by send() (counted when flushed or dropped), not control frames.
        self.bytes_in = 0
        self.bytes_out = 0
        self.messages_in = 0
        self.messages_out = 0

    # Sending

    @property
    def queued(self) -> list[bytes] | None:
        """The frames queued since the last flush (a new list after each flush), or None."""
        return self._out

    def send(self, frame: bytes) -> None:
        """Queue one complete frame; it is written at the next flush."""
        out = self._out
        if out is None:
            # RFC 6455 §5.5.1: after sending a Close frame, the endpoint MUST NOT
            # send any further data frames. close() flushes the queue first, so
            # checking when a new queue starts is enough (once per tick, not per frame).
            if self.closed or self._proto.state is not State.OPEN:
                return
            self._out = [frame]
            self._writer.mark(self)
        else:
            out.append(frame)

    def flush(self) -> None:
        """Write the queued frames (the Writer calls this)."""
        out = self._out
        self._out = None
        if not out:
            return
        # Counted here, once per flush, not in send(): a fan-out's send is its hottest line.
        self.messages_out += len(out)
        if self.closed:
            return
        transport = self.transport
        # Backlog already queued in the transport means the client does not
        # read fast enough: drop it rather than let server memory grow.
        if transport.get_write_buffer_size() > self._writer.max_buffer:
            self._slow_consumer(out)
            return
        data = out[0] if len(out) == 1 else b"".join(out)
        self.bytes_out += len(data)
        transport.write(data)

    def _write(self, data: bytes) -> None:
        """Write `data` under the same backlog rule as flush(): pongs and close frames too."""
        if self.transport.get_write_buffer_size() > self._writer.max_buffer:
            self._slow_consumer()
            return
        self.bytes_out += len(data)
        self.transport.write(data)

    def _slow_consumer(self, dropped: list[bytes] | None = None) -> None:
        writer = self._writer
        writer.slow_consumers += 1
        self.dropped_slow = True
        if writer.on_slow_consumer is not None:
            writer.on_slow_consumer(self, dropped)
        log.warning("closing slow consumer %s: write buffer over %d bytes", self.peer, self._writer.max_buffer)
        self._abort()

    def close(self, code: CloseCode = CloseCode.NORMAL_CLOSURE, reason: str = "") -> None:
        """Send what is queued, then a close frame; the client's answer ends the connection.

        Input paused by the session resumes, without the frames held back: the
        client's answer must be read, and nothing it sent is handled any more."""
        if self.closed or self._proto.state is not State.OPEN:
            return
        self.flush()
        if self.closed:
            return
        self._proto.send_close(code, reason)
        self._write_protocol_output()
        held = self.reading_paused
        self._read_paused, self._backlog = False, None
        if held:
            self._resume_transport()

    def _abort(self) -> None:
        self.closed = True
        self._discard_queue()
        self.transport.abort()

    def _discard_queue(self) -> None:
        """Drop the frames not yet flushed, counted as queued like the flushed ones."""
        if self._out:
            self.messages_out += len(self._out)
        self._out = None

    # asyncio.Protocol

    def data_received(self, data: bytes) -> None:
        self.last_seen = self._loop.time()
        self.bytes_in += len(data)
        turn = self._writer.turn()
        if turn != self._turn:
            self._turn, self._turn_bytes = turn, len(data)
        else:
            self._turn_bytes += len(data)
        proto = self._proto
        # Data frames are handled until we send a close frame; a close from the
        # client in this same read still lets the messages before it through.
        open_ = proto.state is State.OPEN
        proto.receive_data(data)
        events = proto.events_received()
        if open_ and events:
            if self._backlog is not None:
                self._backlog.extend(events)  # behind the frames held back, never before them
            else:
                self._handle(events)
        self._write_protocol_output()
        if self._turn_bytes >= READ_BUDGET and not self._throttled and not self.closed:
            # This client had its share of the turn: let the others be read first.
            self._throttled = True
            self.transport.pause_reading()
            self._loop.call_soon(self._end_throttle)

    def _end_throttle(self) -> None:
        self._throttled = False
        if not self._read_paused and self._backlog is None and not self.closed:
            self.transport.resume_reading()

    def _handle(self, events: list[Frame]) -> None:
        session = self.session
        for i, frame in enumerate(events):
            if self._read_paused:
                # The session stopped input: keep the rest, in order, for resume_reading().
                self._backlog = events[i:]
                return
            opcode = frame.opcode
            if opcode is OP_TEXT or opcode is OP_BINARY:
                if frame.fin:
                    if session is not None and not self._deliver(session, opcode, frame.data):
                        return
                else:
                    self._frag_opcode, self._frag = opcode, [frame.data]
            elif opcode is OP_CONT and self._frag is not None:
                self._frag.append(frame.data)
                if frame.fin:
                    data_, self._frag = b"".join(self._frag), None
                    if session is not None and not self._deliver(session, self._frag_opcode, data_):
                        return
            # PING, PONG and CLOSE are answered by the protocol itself.

    def _deliver(self, session: Session, opcode: Opcode, data: bytes) -> bool:
        """Hand one message to the session; False when the connection failed instead."""
        self.messages_in += 1
        try:
            if opcode is OP_TEXT:
                if not data.isascii():
                    # RFC 6455 §8.1: a text message that is not UTF-8 fails the
                    # connection with 1007. websockets' parser leaves this check
                    # to its caller; the reason is the one its connections send.
                    try:
                        data.decode()
                    except UnicodeDecodeError as exc:
                        log.info("closing %s: invalid UTF-8 in a text message", self.peer)
                        self._proto.fail(CloseCode.INVALID_DATA, f"{exc.reason} at position {exc.start}")
                        self._backlog = None
                        return False
                session.on_text(data)
            else:
                session.on_binary(data)
        except Exception:
            # A bug while handling one message must not take the connection
            # (or the server) down; the session already answered what it could.
            log.exception("unhandled error on message from %s", self.peer)
        return True

    def pause_reading(self) -> None:
        """Stop handling input (the session holds too much); frames already read wait."""
        if self._read_paused or self.closing:
            return
        self._read_paused = True
        self.transport.pause_reading()

    def resume_reading(self) -> None:
        """Handle the frames held back, in order, then read again.

        The frames run on the next loop iteration, not inside the caller, which
        may be the session draining its own queue."""
        if not self._read_paused:
            return
        self._read_paused = False
        if self._backlog is None:
            self._resume_transport()
        else:
            self._loop.call_soon(self._handle_backlog)

    def _handle_backlog(self) -> None:
        if self._read_paused or self._backlog is None or self.closed:
            return
        events, self._backlog = self._backlog, None
        self._handle(events)
        self._write_protocol_output()
        if not self._read_paused:
            self._resume_transport()

    def _resume_transport(self) -> None:
        # Time spent paused by us is not the client's idleness.
        self.last_seen = self._loop.time()
        if not self._throttled:  # otherwise _end_throttle() resumes
            self.transport.resume_reading()

    @property
    def reading_paused(self) -> bool:
        """True while input waits for the session (the idle sweeper skips such a connection)."""
        return self._read_paused or self._backlog is not None

    def _write_protocol_output(self) -> None:
        data = self._proto.data_to_send()
        if not data:
            return
        if self._out:
            self.flush()
        # websockets signals "close the TCP connection" with b"" after the last frame.
        eof = b"" in data
        out = b"".join(data)
        if out and not self.closed:
            written = self.bytes_out
            self._write(out)
            session = self.session
            if session is not None and self.bytes_out != written:
                session.on_sent(len(out))
        if eof and not self.closed:
            self.closed = True
            self.transport.close()

    def eof_received(self) -> bool | None:
        self._proto.receive_eof()
        self._write_protocol_output()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._discard_queue()
        session, self.session = self.session, None
        if session is not None:
            try:
                session.on_close()
            except Exception:
                log.exception("unhandled error closing the session of %s", self.peer)

    def pause_writing(self) -> None:
        """Back-pressure is handled by the backlog check of every write (flush(), _write())."""

    def resume_writing(self) -> None:
        """See pause_writing()."""

    @property
    def write_backlog(self) -> int:
        """Bytes written but not yet sent (the transport's buffer, which the slow-consumer rule
        watches) plus the frames queued for the next flush."""
        queued = sum(len(frame) for frame in self._out) if self._out else 0
        return queued + (0 if self.closed else self.transport.get_write_buffer_size())

    @property
    def closing(self) -> bool:
        """True once a close frame was sent or received."""
        return self.closed or self._proto.state is not State.OPEN
