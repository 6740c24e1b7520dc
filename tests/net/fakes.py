"""The transport fake and frame helpers shared by the tests of realtime_core.net.

In uvicorn's style, a protocol under test is given a MockTransport; the test
feeds bytes to data_received(), then checks what the transport holds. Client
frames are built masked, as RFC 6455 §5.3 requires of clients; server frames
are read back with the parsers of tests/fakes.py, re-exported here."""

from __future__ import annotations

from typing import Any

from fakes import server_frame, server_frames
from websockets.frames import Frame, Opcode

__all__ = ["MockTransport", "client_frame", "server_frame", "server_frames"]


class MockTransport:
    """Records what a protocol does to its transport: writes, closes, pauses and set_protocol()."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []  # one entry per write() call
        self.closed = False
        self.eof_written = False
        self.aborted = False
        self.read_paused = False
        self.protocol: Any = None
        self.write_buffer_size = 0  # what get_write_buffer_size() reports; raise it to fake a slow reader

    @property
    def buffer(self) -> bytes:
        """Everything written so far."""
        return b"".join(self.writes)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 54321)}.get(name, default)

    def write(self, data: bytes) -> None:
        assert not self.closed and not self.eof_written, "write after close"
        self.writes.append(data)

    def close(self) -> None:
        self.closed = True

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        assert not self.closed and not self.eof_written, "EOF twice or after close"
        self.eof_written = True

    def abort(self) -> None:
        self.aborted = self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        self.read_paused = True

    def resume_reading(self) -> None:
        self.read_paused = False

    def set_protocol(self, protocol: Any) -> None:
        self.protocol = protocol

    def get_protocol(self) -> Any:
        return self.protocol

    def get_write_buffer_size(self) -> int:
        return self.write_buffer_size


def client_frame(opcode: Opcode, data: bytes = b"", fin: bool = True) -> bytes:
    """A masked client frame (RFC 6455 §5.3: clients mask)."""
    return Frame(opcode, data, fin=fin).serialize(mask=True)
