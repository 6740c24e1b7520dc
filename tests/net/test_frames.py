"""Tests for realtime_core.net.frames: server frame headers (RFC 6455 §5.2)."""

from __future__ import annotations

import pytest
from websockets.frames import Opcode

from realtime_core.net.frames import OP_BINARY, OP_TEXT, binary_frame, text_frame

from .fakes import server_frame

# (payload length, expected header after the first byte)
HEADERS = [
    # 7-bit length: MASK bit 0, length in the low 7 bits
    (0, b"\x00"),
    (1, b"\x01"),
    (125, b"\x7d"),
    # 126 marks a 16-bit length that follows, network order
    (126, b"\x7e" + b"\x00\x7e"),
    (127, b"\x7e" + b"\x00\x7f"),
    (65535, b"\x7e" + b"\xff\xff"),
    # 127 marks a 64-bit length that follows, network order
    (65536, b"\x7f" + b"\x00\x00\x00\x00\x00\x01\x00\x00"),
]


class TestHeaders:
    """RFC 6455 §5.2: the smallest length encoding is used, and server frames are unmasked."""

    @pytest.mark.parametrize(("length", "header"), HEADERS)
    def test_text_frame_header_bytes(self, length: int, header: bytes) -> None:
        data = b"x" * length
        frame = text_frame(data)
        assert frame == (
            b"\x81"  # FIN=1, RSV1-3=0, opcode 1 (text)
            + header  # MASK=0, payload length
            + data
        )

    @pytest.mark.parametrize(("length", "header"), HEADERS)
    def test_binary_frame_header_bytes(self, length: int, header: bytes) -> None:
        data = b"\x00" * length
        frame = binary_frame(data)
        assert frame == (
            b"\x82"  # FIN=1, RSV1-3=0, opcode 2 (binary)
            + header  # MASK=0, payload length
            + data
        )


class TestParsedByWebsockets:
    """Frames are read back by websockets' parser as single unmasked FIN frames."""

    @pytest.mark.parametrize("length", [length for length, _ in HEADERS])
    def test_text_frame_parses_back(self, length: int) -> None:
        data = ("é" * (length // 2) + "a" * (length % 2)).encode()
        frame = server_frame(text_frame(data))
        assert frame.opcode is Opcode.TEXT
        assert frame.fin
        assert not (frame.rsv1 or frame.rsv2 or frame.rsv3)
        assert frame.data == data

    @pytest.mark.parametrize("length", [length for length, _ in HEADERS])
    def test_binary_frame_parses_back(self, length: int) -> None:
        data = bytes(i % 256 for i in range(length))
        frame = server_frame(binary_frame(data))
        assert frame.opcode is Opcode.BINARY
        assert frame.fin
        assert frame.data == data


def test_opcodes_match_rfc_6455() -> None:
    # RFC 6455 §5.2: %x1 denotes a text frame, %x2 a binary frame
    assert (Opcode.TEXT.value, Opcode.BINARY.value) == (OP_TEXT, OP_BINARY)
