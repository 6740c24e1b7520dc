"""Tests for realtime_core.protocol.v2: vsn 2.0.0 arrays and binary frames (docs/protocol.md §2.2, §2.3)."""

from __future__ import annotations

from typing import Any, NamedTuple

import orjson
import pytest
from fakes import decode, server_frame
from websockets.frames import Opcode

from realtime_core.errors import MalformedMessage
from realtime_core.protocol import V2, codec_for
from realtime_core.protocol.message import BINARY, JSON, Message, UserBroadcast
from realtime_core.protocol.v2 import MAX_FIELD_BYTES, V2Codec

TOPIC = "realtime:room1"


# -- helpers --


class Kind4(NamedTuple):
    topic: str
    user_event: str
    metadata: bytes
    encoding: int
    payload: bytes


def parse_kind4(frame: bytes) -> Kind4:
    """Read a binary frame the way realtime-js does (JS serializer.ts _decodeUserBroadcast)."""
    parsed = server_frame(frame)
    assert parsed.opcode is Opcode.BINARY
    data = bytes(parsed.data)
    assert data[0] == 4, "realtime-js decodes only binary kind 4 (docs/protocol.md §2.3)"
    topic_len, event_len, metadata_len, encoding = data[1:5]
    pos = 5
    topic = data[pos : pos + topic_len].decode()
    pos += topic_len
    user_event = data[pos : pos + event_len].decode()
    pos += event_len
    metadata = data[pos : pos + metadata_len]
    pos += metadata_len
    return Kind4(topic, user_event, metadata, encoding, data[pos:])


# -- fixtures, one line per field --

KIND3_JSON = (
    b"\x03"  # kind: 3 user_broadcast_push
    b"\x01"  # join_ref_len: 1
    b"\x02"  # ref_len: 2
    b"\x0e"  # topic_len: 14
    b"\x03"  # user_event_len: 3
    b"\x00"  # metadata_len: 0 (none, as realtime-js sends)
    b"\x01"  # encoding: 1 JSON
    b"1"  # join_ref
    b"12"  # ref
    b"realtime:room1"  # topic
    b"msg"  # user_event
    b'{"n": 1}'  # user_payload, kept byte for byte
)

KIND3_JSON_WITH_METADATA = (
    b"\x03"  # kind: 3 user_broadcast_push
    b"\x01"  # join_ref_len: 1
    b"\x01"  # ref_len: 1
    b"\x0e"  # topic_len: 14
    b"\x03"  # user_event_len: 3
    b"\x0e"  # metadata_len: 14
    b"\x01"  # encoding: 1 JSON
    b"5"  # join_ref
    b"6"  # ref
    b"realtime:room1"  # topic
    b"msg"  # user_event
    b'{"replayed":1}'  # metadata: a JSON object
    b"[1,2,3]"  # user_payload
)

KIND3_BINARY = (
    b"\x03"  # kind: 3 user_broadcast_push
    b"\x01"  # join_ref_len: 1
    b"\x01"  # ref_len: 1
    b"\x0e"  # topic_len: 14
    b"\x04"  # user_event_len: 4
    b"\x00"  # metadata_len: 0
    b"\x00"  # encoding: 0 binary
    b"1"  # join_ref
    b"2"  # ref
    b"realtime:room1"  # topic
    b"file"  # user_event
    b"\x00\x01\xfe\xff"  # user_payload: not UTF-8, not JSON
)
KIND3_BINARY_FIELDS_END = len(KIND3_BINARY) - 4  # where the user payload starts

KIND0 = (
    b"\x00"  # kind: 0 push
    b"\x01"  # join_ref_len: 1
    b"\x01"  # ref_len: 1
    b"\x0e"  # topic_len: 14
    b"\x06"  # event_len: 6
    b"1"  # join_ref
    b"3"  # ref
    b"realtime:room1"  # topic
    b"upload"  # event
    b"\x00\x01\xfe\xff"  # payload: raw bytes
)
KIND0_FIELDS_END = len(KIND0) - 4


def test_codec_identity() -> None:
    assert isinstance(V2, V2Codec)
    assert V2.vsn == "2.0.0"
    assert codec_for("2.0.0") is V2
    assert codec_for("3.0.0") is None


class TestDecodeText:
    """Client text frames are [join_ref, ref, topic, event, payload] (docs/protocol.md §2.2)."""

    def test_array_becomes_message(self) -> None:
        msg = V2.decode_text(b'["1","1","realtime:room1","phx_join",{"config":{"private":false}}]')
        assert msg == Message(
            topic=TOPIC, event="phx_join", payload={"config": {"private": False}}, ref="1", join_ref="1"
        )

    def test_null_refs(self) -> None:
        msg = V2.decode_text('[null,null,"phoenix","heartbeat",{}]')
        assert (msg.join_ref, msg.ref) == (None, None)

    def test_integer_refs_become_strings(self) -> None:
        msg = V2.decode_text(b'[4,17,"t","e",{}]')
        assert (msg.join_ref, msg.ref) == ("4", "17")

    def test_extra_trailing_elements_are_ignored(self) -> None:
        msg = V2.decode_text(b'["1","2","t","e",{"a":1},"extra",null]')
        assert msg == Message(topic="t", event="e", payload={"a": 1}, ref="2", join_ref="1")

    @pytest.mark.parametrize(
        "data",
        [
            b"[]",
            b'["1","2","t","e"]',  # four elements: no payload
            b'{"topic":"t","event":"e","payload":{},"ref":null}',  # a V1 object
            b'"t"',
            b"null",
        ],
    )
    def test_not_a_five_element_array_is_malformed(self, data: bytes) -> None:
        with pytest.raises(MalformedMessage, match="V2 array"):
            V2.decode_text(data)

    @pytest.mark.parametrize("data", [b"", b"[", b'["1","2","t","e",{}', b"\xff"])
    def test_invalid_json_is_malformed(self, data: bytes) -> None:
        with pytest.raises(MalformedMessage, match="invalid JSON"):
            V2.decode_text(data)

    @pytest.mark.parametrize(
        ("data", "field"),
        [
            (b'["1","2",null,"e",{}]', "topic"),
            (b'["1","2",7,"e",{}]', "topic"),
            (b'["1","2","t",null,{}]', "event"),
            (b'["1","2","t",{},{}]', "event"),
            (b'[true,"2","t","e",{}]', "join_ref"),
            (b'[1.5,"2","t","e",{}]', "join_ref"),
            (b'["1",["2"],"t","e",{}]', "ref"),
            (b'["1",false,"t","e",{}]', "ref"),
        ],
    )
    def test_wrong_element_types_are_malformed(self, data: bytes, field: str) -> None:
        with pytest.raises(MalformedMessage, match=field):
            V2.decode_text(data)


class TestDecodeUserBroadcastPush:
    """Binary kind 3, what realtime-js sends for channel.send() (docs/protocol.md §2.3)."""

    def test_json_payload_without_metadata(self) -> None:
        msg = V2.decode_binary(KIND3_JSON)
        assert msg == Message(
            topic=TOPIC,
            event="broadcast",
            payload=UserBroadcast(event="msg", data=b'{"n": 1}', encoding=JSON, metadata=None),
            ref="12",
            join_ref="1",
        )

    def test_json_payload_with_metadata(self) -> None:
        msg = V2.decode_binary(KIND3_JSON_WITH_METADATA)
        assert msg.payload == UserBroadcast(event="msg", data=b"[1,2,3]", encoding=JSON, metadata={"replayed": 1})
        assert (msg.topic, msg.event, msg.join_ref, msg.ref) == (TOPIC, "broadcast", "5", "6")

    def test_binary_payload_is_kept_as_bytes(self) -> None:
        msg = V2.decode_binary(KIND3_BINARY)
        assert msg.payload == UserBroadcast(event="file", data=b"\x00\x01\xfe\xff", encoding=BINARY, metadata=None)
        assert type(msg.payload.data) is bytes

    def test_empty_binary_payload(self) -> None:
        msg = V2.decode_binary(KIND3_BINARY[:KIND3_BINARY_FIELDS_END])
        assert msg.payload.data == b""

    def test_empty_refs_decode_as_none(self) -> None:
        data = (
            b"\x03"  # kind: 3 user_broadcast_push
            b"\x00"  # join_ref_len: 0 (realtime-js writes join_ref ?? "")
            b"\x00"  # ref_len: 0
            b"\x01"  # topic_len: 1
            b"\x01"  # user_event_len: 1
            b"\x00"  # metadata_len: 0
            b"\x01"  # encoding: 1 JSON
            b"t"  # topic
            b"e"  # user_event
            b"{}"  # user_payload
        )
        msg = V2.decode_binary(data)
        assert (msg.join_ref, msg.ref, msg.topic, msg.payload.event) == (None, None, "t", "e")

    def test_utf8_fields(self) -> None:
        topic, event = "realtime:salle-é".encode(), "✓".encode()
        data = (
            bytes([3, 1, 1, len(topic), len(event), 0, 1])  # kind 3, lengths in bytes, JSON
            + b"1"  # join_ref
            + b"2"  # ref
            + topic  # topic
            + event  # user_event
            + b'"x"'  # user_payload
        )
        msg = V2.decode_binary(data)
        assert (msg.topic, msg.payload.event) == ("realtime:salle-é", "✓")

    @pytest.mark.parametrize("cut", range(KIND3_BINARY_FIELDS_END))
    def test_truncated_frame_is_malformed(self, cut: int) -> None:
        with pytest.raises(MalformedMessage):
            V2.decode_binary(KIND3_BINARY[:cut])

    def test_truncated_json_payload_is_malformed(self) -> None:
        with pytest.raises(MalformedMessage, match="payload is not"):
            V2.decode_binary(KIND3_JSON[:-1])

    @pytest.mark.parametrize("payload", [b"", b"{", b"not json", b"\xff\xfe"])
    def test_invalid_json_payload_is_malformed(self, payload: bytes) -> None:
        data = KIND3_JSON[: -len(b'{"n": 1}')] + payload
        with pytest.raises(MalformedMessage, match="encoding is JSON"):
            V2.decode_binary(data)

    @pytest.mark.parametrize(
        ("metadata", "match"),
        [
            (b"{bad", "not JSON"),
            (b"[1,2]", "JSON object"),
            (b'"meta"', "JSON object"),
            (b"null", "JSON object"),
        ],
    )
    def test_metadata_must_be_a_json_object(self, metadata: bytes, match: str) -> None:
        data = (
            bytes([3, 0, 0, 1, 1, len(metadata), 1])  # kind 3, no refs, topic 1, event 1, metadata, JSON
            + b"t"  # topic
            + b"e"  # user_event
            + metadata  # metadata
            + b"{}"  # user_payload
        )
        with pytest.raises(MalformedMessage, match=match):
            V2.decode_binary(data)

    @pytest.mark.parametrize("encoding", [2, 3, 255])
    def test_unknown_encoding_is_malformed(self, encoding: int) -> None:
        data = KIND3_BINARY[:6] + bytes([encoding]) + KIND3_BINARY[7:]
        with pytest.raises(MalformedMessage, match="unknown encoding"):
            V2.decode_binary(data)

    def test_invalid_utf8_topic_is_malformed(self) -> None:
        data = bytes([3, 0, 0, 1, 1, 0, 0]) + b"\xff" + b"e"  # topic is a lone 0xff byte
        with pytest.raises(MalformedMessage, match="topic"):
            V2.decode_binary(data)


class TestDecodePush:
    """Binary kind 0 from the client: the payload stays raw bytes (docs/protocol.md §2.3)."""

    def test_push_payload_is_raw_bytes(self) -> None:
        msg = V2.decode_binary(KIND0)
        assert msg == Message(topic=TOPIC, event="upload", payload=b"\x00\x01\xfe\xff", ref="3", join_ref="1")

    def test_empty_payload(self) -> None:
        assert V2.decode_binary(KIND0[:KIND0_FIELDS_END]).payload == b""

    @pytest.mark.parametrize("cut", range(KIND0_FIELDS_END))
    def test_truncated_push_is_malformed(self, cut: int) -> None:
        with pytest.raises(MalformedMessage):
            V2.decode_binary(KIND0[:cut])

    def test_invalid_utf8_event_is_malformed(self) -> None:
        data = bytes([0, 0, 0, 1, 1]) + b"t" + b"\xc3"  # event is a truncated 2-byte sequence
        with pytest.raises(MalformedMessage, match="event"):
            V2.decode_binary(data)


class TestDecodeOtherKinds:
    """Kinds 1, 2 and 4 are server → client only; others do not exist."""

    @pytest.mark.parametrize("kind", [1, 2, 4, 5, 255])
    def test_unknown_kind_is_malformed(self, kind: int) -> None:
        with pytest.raises(MalformedMessage, match=f"kind {kind}"):
            V2.decode_binary(bytes([kind]) + KIND3_JSON[1:])

    def test_empty_frame_is_malformed(self) -> None:
        with pytest.raises(MalformedMessage, match="empty"):
            V2.decode_binary(b"")


class TestEncodeText:
    """Server text frames and their refs (docs/protocol.md §2.2, §2.4)."""

    def test_reply_echoes_join_ref_and_ref(self) -> None:
        frame = V2.reply("1", "2", TOPIC, "ok", {"postgres_changes": []})
        assert decode(frame) == [
            "1",
            "2",
            TOPIC,
            "phx_reply",
            {"status": "ok", "response": {"postgres_changes": []}},
        ]

    def test_unmatched_topic_reply_has_null_join_ref(self) -> None:
        # docs/protocol.md §2.4: the reply to an unjoined topic carries the ref and join_ref null
        frame = V2.reply(None, "3", "realtime", "error", {"reason": "unmatched topic"})
        assert decode(frame) == [
            None,
            "3",
            "realtime",
            "phx_reply",
            {"status": "error", "response": {"reason": "unmatched topic"}},
        ]

    def test_push_carries_join_ref_and_null_ref(self) -> None:
        frame = V2.push("1", TOPIC, "presence_state", {})
        assert decode(frame) == ["1", None, TOPIC, "presence_state", {}]

    @pytest.mark.parametrize("event", ["phx_close", "phx_error"])
    def test_control_has_ref_equal_to_join_ref(self, event: str) -> None:
        frame = V2.control("4", TOPIC, event)
        assert decode(frame) == ["4", "4", TOPIC, event, {}]

    def test_broadcast_has_null_refs(self) -> None:
        payload = {"type": "broadcast", "event": "msg", "payload": {"n": 1}}
        frame = V2.broadcast(TOPIC, "broadcast", payload)
        assert decode(frame) == [None, None, TOPIC, "broadcast", payload]

    def test_broadcast_json_splices_payload_bytes(self) -> None:
        frame = V2.broadcast_json(TOPIC, "postgres_changes", b'{"ids": [1, 2]}')
        assert server_frame(frame).data == b'[null,null,"realtime:room1","postgres_changes",{"ids": [1, 2]}]'

    def test_broadcast_json_escapes_topic_and_event(self) -> None:
        frame = V2.broadcast_json('realtime:"q"', "é\n", b"[]")
        assert decode(frame) == [None, None, 'realtime:"q"', "é\n", []]


class TestEncodeUserBroadcast:
    """Binary kind 4, the only binary kind realtime-js decodes (docs/protocol.md §2.3)."""

    def test_json_payload_bytes(self) -> None:
        frame = V2.user_broadcast(TOPIC, UserBroadcast(event="msg", data=b'{"n": 1}', encoding=JSON))
        assert server_frame(frame).data == (
            b"\x04"  # kind: 4 user_broadcast
            b"\x0e"  # topic_len: 14
            b"\x03"  # user_event_len: 3
            b"\x00"  # metadata_len: 0
            b"\x01"  # encoding: 1 JSON
            b"realtime:room1"  # topic
            b"msg"  # user_event
            b'{"n": 1}'  # user_payload, as the sender wrote it
        )

    def test_binary_payload_with_metadata(self) -> None:
        metadata = {"replayed": True, "id": "a1"}
        message = UserBroadcast(event="file", data=b"\x00\xff", encoding=BINARY, metadata=metadata)
        fields = parse_kind4(V2.user_broadcast(TOPIC, message))
        assert fields.topic == TOPIC
        assert fields.user_event == "file"
        assert orjson.loads(fields.metadata) == metadata
        assert fields.encoding == BINARY
        assert fields.payload == b"\x00\xff"

    def test_empty_metadata_object_is_sent(self) -> None:
        message = UserBroadcast(event="e", data=b"{}", encoding=JSON, metadata={})
        assert parse_kind4(V2.user_broadcast(TOPIC, message)).metadata == b"{}"

    @pytest.mark.parametrize("encoding", [BINARY, JSON])
    def test_is_always_kind_4(self, encoding: int) -> None:
        frame = V2.user_broadcast(TOPIC, UserBroadcast(event="e", data=b"1", encoding=encoding))
        parsed = server_frame(frame)
        assert parsed.opcode is Opcode.BINARY
        assert parsed.data[0] == 4

    @pytest.mark.parametrize(
        "frame",
        [
            V2.reply("1", "2", TOPIC, "ok", {}),
            V2.push("1", TOPIC, "system", {}),
            V2.control("1", TOPIC, "phx_close"),
            V2.broadcast(TOPIC, "broadcast", {}),
            V2.broadcast_json(TOPIC, "broadcast", b"{}"),
        ],
    )
    def test_other_output_is_text(self, frame: bytes) -> None:
        # docs/protocol.md §2.3: kinds 0/1/2 would reach realtime-js as `undefined`
        assert server_frame(frame).opcode is Opcode.TEXT

    @pytest.mark.parametrize(
        ("topic", "event", "metadata"),
        [
            ("t" * 256, "e", None),
            ("t", "e" * 256, None),
            ("t", "e", {"k": "v" * 250}),  # 258 bytes of JSON
            ("é" * 128, "e", None),  # 128 characters but 256 bytes
            ("t", "✓" * 86, None),  # 258 bytes
        ],
    )
    def test_field_over_255_bytes_raises_value_error(
        self, topic: str, event: str, metadata: dict[str, Any] | None
    ) -> None:
        message = UserBroadcast(event=event, data=b"{}", encoding=JSON, metadata=metadata)
        with pytest.raises(ValueError, match="at most 255 bytes"):
            V2.user_broadcast(topic, message)

    def test_fields_of_exactly_255_bytes_are_framed(self) -> None:
        metadata = {"k": "v" * (MAX_FIELD_BYTES - len(b'{"k":""}'))}
        message = UserBroadcast(event="e" * 255, data=b"{}", encoding=JSON, metadata=metadata)
        fields = parse_kind4(V2.user_broadcast("t" * 255, message))
        assert (len(fields.topic), len(fields.user_event), len(fields.metadata)) == (255, 255, 255)

    def test_unknown_encoding_raises_value_error(self) -> None:
        with pytest.raises(ValueError, match="encoding"):
            V2.user_broadcast(TOPIC, UserBroadcast(event="e", data=b"{}", encoding=7))


class TestRoundTrip:
    """A kind 3 from one client reaches the others as kind 4, unchanged (docs/protocol.md §2.3, §4.1)."""

    @pytest.mark.parametrize("push", [KIND3_JSON, KIND3_JSON_WITH_METADATA, KIND3_BINARY])
    def test_kind3_in_kind4_out(self, push: bytes) -> None:
        msg = V2.decode_binary(push)
        sent = msg.payload
        fields = parse_kind4(V2.user_broadcast(msg.topic, sent))
        assert fields.topic == msg.topic
        assert fields.user_event == sent.event
        assert fields.encoding == sent.encoding
        assert fields.payload == sent.data  # same bytes, never re-encoded
        assert (orjson.loads(fields.metadata) if fields.metadata else None) == sent.metadata

    def test_kind4_decodes_like_realtime_js(self) -> None:
        # JS serializer.ts _decodeUserBroadcast builds {type, event, payload, meta?}
        msg = V2.decode_binary(KIND3_JSON_WITH_METADATA)
        fields = parse_kind4(V2.user_broadcast(msg.topic, msg.payload))
        js_payload: dict[str, Any] = {
            "type": "broadcast",
            "event": fields.user_event,
            "payload": orjson.loads(fields.payload) if fields.encoding == JSON else fields.payload,
        }
        if fields.metadata:
            js_payload["meta"] = orjson.loads(fields.metadata)
        assert js_payload == {
            "type": "broadcast",
            "event": "msg",
            "payload": [1, 2, 3],
            "meta": {"replayed": 1},
        }
