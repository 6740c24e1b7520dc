"""Tests for realtime_core.protocol.v1: the vsn 1.0.0 JSON object codec (docs/protocol.md §2.1)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from fakes import decode, server_frame
from websockets.frames import Opcode

from realtime_core.errors import MalformedMessage
from realtime_core.protocol import V1, codec_for
from realtime_core.protocol.message import BINARY, JSON, Message, UserBroadcast
from realtime_core.protocol.v1 import V1Codec

TOPIC = "realtime:room1"


def text(frame: bytes) -> bytes:
    """Return the payload of a server text frame."""
    parsed = server_frame(frame)
    assert parsed.opcode is Opcode.TEXT
    return parsed.data


def test_codec_identity() -> None:
    assert isinstance(V1, V1Codec)
    assert V1.vsn == "1.0.0"
    assert codec_for("1.0.0") is V1
    assert codec_for(None) is V1  # docs/protocol.md §1.2: a missing vsn means 1.0.0


class TestDecodeText:
    """Client → server: {"topic", "event", "payload", "ref", "join_ref"?} (docs/protocol.md §2.1)."""

    def test_full_message(self) -> None:
        msg = V1.decode_text(
            b'{"topic":"realtime:room1","event":"phx_join","payload":{"config":{}},"ref":"1","join_ref":"1"}'
        )
        assert msg == Message(topic=TOPIC, event="phx_join", payload={"config": {}}, ref="1", join_ref="1")

    def test_join_ref_is_optional(self) -> None:
        msg = V1.decode_text(b'{"topic":"phoenix","event":"heartbeat","payload":{},"ref":"7"}')
        assert msg == Message(topic="phoenix", event="heartbeat", payload={}, ref="7", join_ref=None)

    def test_null_ref_is_accepted(self) -> None:
        msg = V1.decode_text(b'{"topic":"realtime:room1","event":"broadcast","payload":{},"ref":null}')
        assert msg.ref is None

    def test_str_input_is_accepted(self) -> None:
        msg = V1.decode_text('{"topic":"t","event":"e","payload":[1,"ü"],"ref":null}')
        assert (msg.topic, msg.event, msg.payload) == ("t", "e", [1, "ü"])

    def test_integer_refs_become_strings(self) -> None:
        msg = V1.decode_text(b'{"topic":"t","event":"e","payload":{},"ref":12,"join_ref":3}')
        assert (msg.ref, msg.join_ref) == ("12", "3")

    def test_payload_may_be_any_json_value(self) -> None:
        msg = V1.decode_text(b'{"topic":"t","event":"e","payload":null,"ref":null}')
        assert msg.payload is None

    def test_unknown_keys_are_ignored(self) -> None:
        msg = V1.decode_text(b'{"topic":"t","event":"e","payload":{},"ref":"1","extra":true}')
        assert msg == Message(topic="t", event="e", payload={}, ref="1")

    @pytest.mark.parametrize("missing", ["topic", "event", "payload", "ref"])
    def test_missing_required_key_is_malformed(self, missing: str) -> None:
        obj = {"topic": "t", "event": "e", "payload": {}, "ref": None}
        del obj[missing]
        with pytest.raises(MalformedMessage, match=missing):
            V1.decode_text(orjson.dumps(obj))

    @pytest.mark.parametrize(
        "data",
        [
            b"",  # empty frame
            b"{",  # truncated JSON
            b"not json",
            b'{"topic":"t",}',  # trailing comma
            b"\xff\xfe",  # not UTF-8
        ],
    )
    def test_invalid_json_is_malformed(self, data: bytes) -> None:
        with pytest.raises(MalformedMessage, match="invalid JSON"):
            V1.decode_text(data)

    @pytest.mark.parametrize("data", [b'[null,"1","t","e",{}]', b'"t"', b"42", b"null"])
    def test_non_object_is_malformed(self, data: bytes) -> None:
        with pytest.raises(MalformedMessage, match="JSON object"):
            V1.decode_text(data)

    @pytest.mark.parametrize(
        ("key", "value"),
        [("topic", None), ("topic", 1), ("event", None), ("event", ["phx_join"])],
    )
    def test_topic_and_event_must_be_strings(self, key: str, value: Any) -> None:
        obj = {"topic": "t", "event": "e", "payload": {}, "ref": None, key: value}
        with pytest.raises(MalformedMessage, match=key):
            V1.decode_text(orjson.dumps(obj))

    @pytest.mark.parametrize("key", ["ref", "join_ref"])
    @pytest.mark.parametrize("value", [1.5, True, [], {}])
    def test_refs_must_be_strings_numbers_or_null(self, key: str, value: Any) -> None:
        obj = {"topic": "t", "event": "e", "payload": {}, "ref": None, key: value}
        with pytest.raises(MalformedMessage, match=key):
            V1.decode_text(orjson.dumps(obj))


class TestDecodeBinary:
    """vsn 1.0.0 has no binary frames."""

    @pytest.mark.parametrize("data", [b"", b"\x03\x01\x01\x01\x01\x00\x01", b"\x00\x00\x00\x01\x01te"])
    def test_binary_frame_is_malformed(self, data: bytes) -> None:
        with pytest.raises(MalformedMessage, match=r"vsn=2\.0\.0"):
            V1.decode_binary(data)


class TestEncode:
    """Server → client: {"topic", "event", "payload", "ref"} without join_ref (docs/protocol.md §2.1)."""

    def test_reply_carries_request_ref_and_no_join_ref(self) -> None:
        frame = V1.reply("1", "2", TOPIC, "ok", {"postgres_changes": []})
        assert decode(frame) == {
            "topic": TOPIC,
            "event": "phx_reply",
            "payload": {"status": "ok", "response": {"postgres_changes": []}},
            "ref": "2",
        }

    def test_reply_matches_spec_example_bytes(self) -> None:
        # docs/protocol.md §2.1 example, byte for byte (key order topic, event, payload, ref)
        frame = V1.reply(None, "1", TOPIC, "ok", {"postgres_changes": []})
        assert text(frame) == (
            b'{"topic":"realtime:room1","event":"phx_reply",'
            b'"payload":{"status":"ok","response":{"postgres_changes":[]}},"ref":"1"}'
        )

    def test_error_reply_may_carry_a_bare_string(self) -> None:
        # docs/protocol.md §4.1: an oversize ack answers {"status":"error","response":"payload_size_exceeded"}
        frame = V1.reply("1", "5", TOPIC, "error", "payload_size_exceeded")
        assert decode(frame)["payload"] == {"status": "error", "response": "payload_size_exceeded"}

    def test_push_has_null_ref(self) -> None:
        payload = {"extension": "system", "status": "ok", "message": "hi", "channel": "room1"}
        frame = V1.push("1", TOPIC, "system", payload)
        assert decode(frame) == {"topic": TOPIC, "event": "system", "payload": payload, "ref": None}

    @pytest.mark.parametrize("event", ["phx_close", "phx_error"])
    def test_control_has_ref_equal_to_join_ref_and_empty_payload(self, event: str) -> None:
        frame = V1.control("4", TOPIC, event)
        assert decode(frame) == {"topic": TOPIC, "event": event, "payload": {}, "ref": "4"}

    def test_broadcast_has_null_ref(self) -> None:
        payload = {"type": "broadcast", "event": "msg", "payload": {"n": 1}}
        frame = V1.broadcast(TOPIC, "broadcast", payload)
        assert decode(frame) == {"topic": TOPIC, "event": "broadcast", "payload": payload, "ref": None}

    def test_broadcast_json_splices_payload_bytes(self) -> None:
        # the spacing survives: the payload is not re-encoded
        frame = V1.broadcast_json(TOPIC, "presence_diff", b'{"joins": {}, "leaves": {}}')
        assert text(frame) == (
            b'{"topic":"realtime:room1","event":"presence_diff","payload":{"joins": {}, "leaves": {}},"ref":null}'
        )

    def test_broadcast_json_escapes_topic_and_event(self) -> None:
        frame = V1.broadcast_json('realtime:"q"', "é\n", b"[]")
        assert decode(frame) == {"topic": 'realtime:"q"', "event": "é\n", "payload": [], "ref": None}

    @pytest.mark.parametrize(
        "frame",
        [
            V1.reply("1", "2", TOPIC, "ok", {}),
            V1.push("1", TOPIC, "system", {}),
            V1.control("1", TOPIC, "phx_close"),
            V1.broadcast(TOPIC, "broadcast", {}),
            V1.broadcast_json(TOPIC, "broadcast", b"{}"),
            V1.user_broadcast(TOPIC, UserBroadcast(event="e", data=b"{}", encoding=JSON, metadata={"a": 1})),
        ],
    )
    def test_output_never_has_join_ref(self, frame: bytes | None) -> None:
        assert frame is not None
        assert set(decode(frame)) == {"topic", "event", "payload", "ref"}


class TestUserBroadcast:
    """A user broadcast for V1 receivers: JSON only (docs/protocol.md §2.3, RT user_broadcast.ex)."""

    def test_json_payload_becomes_a_broadcast_with_type(self) -> None:
        frame = V1.user_broadcast(TOPIC, UserBroadcast(event="msg", data=b'{"n":1}', encoding=JSON))
        assert frame is not None
        assert decode(frame) == {
            "topic": TOPIC,
            "event": "broadcast",
            "payload": {"event": "msg", "payload": {"n": 1}, "type": "broadcast"},
            "ref": None,
        }

    def test_metadata_becomes_meta(self) -> None:
        metadata = {"replayed": True, "id": "6e018938-5c27-4f3c-aa2a-de9f43f712e1"}
        message = UserBroadcast(event="msg", data=b"[1,2]", encoding=JSON, metadata=metadata)
        frame = V1.user_broadcast(TOPIC, message)
        assert frame is not None
        assert decode(frame)["payload"] == {
            "event": "msg",
            "payload": [1, 2],
            "type": "broadcast",
            "meta": metadata,
        }

    def test_empty_metadata_is_still_sent(self) -> None:
        frame = V1.user_broadcast(TOPIC, UserBroadcast(event="msg", data=b"1", encoding=JSON, metadata={}))
        assert frame is not None
        assert decode(frame)["payload"]["meta"] == {}

    def test_payload_bytes_are_spliced_not_reencoded(self) -> None:
        data = b'{ "n" : 1.50, "s": "\\u00e9" }'  # orjson would write {"n":1.5,"s":"é"}
        frame = V1.user_broadcast(TOPIC, UserBroadcast(event="msg", data=data, encoding=JSON))
        assert frame is not None
        assert b',"payload":' + data + b',"type":"broadcast"}' in text(frame)

    def test_binary_payload_is_dropped(self) -> None:
        message = UserBroadcast(event="msg", data=b"\x00\xff", encoding=BINARY, metadata={"a": 1})
        assert V1.user_broadcast(TOPIC, message) is None

    def test_unknown_encoding_cannot_be_delivered(self) -> None:
        with pytest.raises(ValueError, match="encoding"):
            V1.user_broadcast(TOPIC, UserBroadcast(event="msg", data=b"{}", encoding=2))
