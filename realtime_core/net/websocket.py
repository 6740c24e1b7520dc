"""The WebSocket driver: feeds websockets' sans-I/O protocol, writes coalesced frames.

net/server.py hands a transport to WebSocketConnection after the upgrade. The
connection feeds received bytes to `websockets.server.ServerProtocol` and passes
each complete text or binary message to its Session (socket.py). Outgoing
frames are already complete WebSocket frames (net/frames.py): send() queues them
and the Writer writes each connection's queue once per loop tick, so a fan-out
to many channels of one socket, or many fan-outs in one tick, cost one write.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol

from websockets.frames import CloseCode, Opcode
from websockets.protocol import State
from websockets.server import ServerProtocol

__all__ = ["Session", "WebSocketConnection", "Writer"]

log = logging.getLogger(__name__)

OP_TEXT, OP_BINARY, OP_CONT = Opcode.TEXT, Opcode.BINARY, Opcode.CONT


class Session(Protocol):
    """What a WebSocketConnection drives: one Phoenix socket (socket.py)."""

    def on_text(self, data: bytes) -> None: ...

    def on_binary(self, data: bytes) -> None: ...

    def on_close(self) -> None: ...


class Writer:
    """Writes queued frames once per loop tick, in bounded chunks.

    A fan-out to S sockets queues S frames; the flush then writes each socket's
    queue with one transport.write(). Flushing thousands of sockets in one
    callback would stall the loop, so each callback writes `chunk` sockets and
    reschedules itself for the rest (design §2: p99 stays low for big topics).
    """

    __slots__ = ("_chunk", "_dirty", "_loop", "_scheduled", "max_buffer", "slow_consumers")

    def __init__(self, loop: asyncio.AbstractEventLoop, *, chunk: int, max_buffer: int) -> None:
        self._loop = loop
        self._chunk = chunk
        self._dirty: list[WebSocketConnection] = []
        self._scheduled = False
        self.max_buffer = max_buffer
        self.slow_consumers = 0

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
        "_frag",
        "_frag_opcode",
        "_loop",
        "_out",
        "_proto",
        "_writer",
        "closed",
        "last_seen",
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
        self.session: Session | None = None
        self.closed = False
        self.last_seen = loop.time()
        self.peer = peer

    # Sending

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
        if not out or self.closed:
            return
        transport = self.transport
        # Backlog already queued in the transport means the client does not
        # read fast enough: drop it rather than let server memory grow.
        if transport.get_write_buffer_size() > self._writer.max_buffer:
            self._writer.slow_consumers += 1
            log.warning("closing slow consumer %s: write buffer over %d bytes", self.peer, self._writer.max_buffer)
            self._abort()
            return
        transport.write(out[0] if len(out) == 1 else b"".join(out))

    def close(self, code: CloseCode = CloseCode.NORMAL_CLOSURE, reason: str = "") -> None:
        """Send what is queued, then a close frame; the client's answer ends the connection."""
        if self.closed or self._proto.state is not State.OPEN:
            return
        self.flush()
        self._proto.send_close(code, reason)
        self._write_protocol_output()

    def _abort(self) -> None:
        self.closed = True
        self._out = None
        self.transport.abort()

    # asyncio.Protocol

    def data_received(self, data: bytes) -> None:
        self.last_seen = self._loop.time()
        proto = self._proto
        proto.receive_data(data)
        session = self.session
        for frame in proto.events_received():
            opcode = frame.opcode
            if opcode is OP_TEXT or opcode is OP_BINARY:
                if frame.fin:
                    if session is not None:
                        self._deliver(session, opcode, frame.data)
                else:
                    self._frag_opcode, self._frag = opcode, [frame.data]
            elif opcode is OP_CONT and self._frag is not None:
                self._frag.append(frame.data)
                if frame.fin:
                    data_, self._frag = b"".join(self._frag), None
                    if session is not None:
                        self._deliver(session, self._frag_opcode, data_)
            # PING, PONG and CLOSE are answered by the protocol itself.
        self._write_protocol_output()

    def _deliver(self, session: Session, opcode: Opcode, data: bytes) -> None:
        try:
            if opcode is OP_TEXT:
                session.on_text(data)
            else:
                session.on_binary(data)
        except Exception:
            # A bug while handling one message must not take the connection
            # (or the server) down; the session already answered what it could.
            log.exception("unhandled error on message from %s", self.peer)

    def _write_protocol_output(self) -> None:
        proto = self._proto
        data = proto.data_to_send()
        if data:
            if self._out:
                self.flush()
            for chunk in data:
                if chunk:
                    if not self.closed:
                        self.transport.write(chunk)
                else:
                    # websockets signals "close the TCP connection" with b"".
                    self.closed = True
                    self.transport.close()
                    return

    def eof_received(self) -> bool | None:
        self._proto.receive_eof()
        self._write_protocol_output()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._out = None
        session, self.session = self.session, None
        if session is not None:
            try:
                session.on_close()
            except Exception:
                log.exception("unhandled error closing the session of %s", self.peer)

    def pause_writing(self) -> None:
        """Back-pressure is handled by the backlog check in flush()."""

    def resume_writing(self) -> None:
        """See pause_writing()."""

    @property
    def closing(self) -> bool:
        """True once a close frame was sent or received."""
        return self.closed or self._proto.state is not State.OPEN
