"""Property tests of the frame decoders: realtime_core.protocol.v1 and v2 (text and binary kinds).

For any input, decode_text()/decode_binary() either return a Message whose
fields have the documented types, or raise MalformedMessage with a bounded
text (socket.py logs it, drops the frame and keeps the socket). A decoded
JSON payload can be sent back inside any server frame (replies echo join
params, presence_state wraps metas, broadcasts re-encode the payload)."""

from __future__ import annotations

import struct
from typing import Any

from hypothesis import example, given
from hypothesis import strategies as st

from realtime_core.errors import MalformedMessage
from realtime_core.protocol import V1, V2, Message, UserBroadcast, codec_for
from realtime_core.protocol.message import BINARY, JSON

from .strategies import awkward_text, deep_depths, json_bytes, json_values, mutated, nested, scalars

MAX_ERROR_TEXT = 1024  # MalformedMessage texts quote a bounded preview of the frame


def check_message(msg: Message) -> None:
    assert type(msg.topic) is str
    assert type(msg.event) is str
    assert msg.ref is None or type(msg.ref) is str
    assert msg.join_ref is None or type(msg.join_ref) is str
    payload = msg.payload
    if isinstance(payload, UserBroadcast):
        assert payload.encoding in (BINARY, JSON)
        assert payload.metadata is None or type(payload.metadata) is dict
        for codec in (V1, V2):
            try:
                codec.user_broadcast(msg.topic, payload)
            except ValueError as exc:  # V2's documented refusal of fields over 255 bytes
                assert codec is V2 and "at most 255 bytes" in str(exc)
        return
    if isinstance(payload, bytes):
        return
    # The server sends client values back wrapped a few levels deep.
    for codec in (V1, V2):
        codec.reply(msg.join_ref, msg.ref, msg.topic, "ok", {"postgres_changes": [{"echo": payload, "id": 1}]})
        codec.push(msg.join_ref, msg.topic, "presence_state", {"key": {"metas": [{"phx_ref": "x", "p": payload}]}})
        codec.broadcast(msg.topic, msg.event, {"type": "broadcast", "event": "e", "payload": payload})


def decode_or_refuse(decode: Any, data: bytes) -> None:
    try:
        msg = decode(data)
    except MalformedMessage as exc:
        assert 0 < len(str(exc)) <= MAX_ERROR_TEXT, str(exc)[:300]
        return
    check_message(msg)


# -- text frames --

refs = st.one_of(st.none(), st.text(max_size=8), st.integers(-(2**70), 2**70), scalars, json_values)
topics = st.one_of(st.just("realtime:room"), st.just("phoenix"), awkward_text, scalars)
events = st.one_of(st.sampled_from(["phx_join", "broadcast", "heartbeat", "presence", "access_token"]), scalars)


@st.composite
def v1_objects(draw: st.DrawFn) -> Any:
    obj: dict[str, Any] = {
        "topic": draw(topics),
        "event": draw(events),
        "payload": draw(json_values),
        "ref": draw(refs),
        "join_ref": draw(refs),
    }
    for key in draw(st.sets(st.sampled_from(list(obj)), max_size=2)):
        del obj[key]
    obj.update(draw(st.dictionaries(awkward_text, json_values, max_size=2)))
    return obj


@st.composite
def v2_arrays(draw: st.DrawFn) -> Any:
    arr = [draw(refs), draw(refs), draw(topics), draw(events), draw(json_values)]
    return arr[: draw(st.integers(0, 5))] + draw(st.lists(json_values, max_size=2))


@st.composite
def deep_frames(draw: st.DrawFn, vsn: str) -> bytes:
    """A well-formed frame whose payload (or the whole frame) nests very deeply."""
    payload = nested(draw(scalars), draw(deep_depths), draw(st.sampled_from(["list", "dict"])))
    frame: Any = {"topic": "realtime:room", "event": "broadcast", "payload": payload, "ref": "1"}
    if vsn == "2.0.0":
        frame = ["1", "2", "realtime:room", "broadcast", payload]
    if draw(st.booleans()):
        frame = payload
    return json_bytes(frame, ascii_only=True)


def text_frames(values: st.SearchStrategy[Any], vsn: str) -> st.SearchStrategy[bytes]:
    encoded = st.builds(json_bytes, values, st.booleans())
    return st.one_of(
        encoded,
        encoded.flatmap(mutated),
        deep_frames(vsn),
        st.binary(max_size=64),
    )


DEEP_LIST_1000 = b"[" * 1000 + b"]" * 1000
DEEP_PAYLOAD_300 = b'{"topic":"realtime:r","event":"broadcast","payload":' + b"[" * 300 + b"]" * 300 + b',"ref":"1"}'
DEEP_PAYLOAD_300_V2 = b'["1","2","realtime:r","broadcast",' + b"[" * 300 + b"]" * 300 + b"]"


@given(text_frames(v1_objects(), "1.0.0"))
@example(DEEP_LIST_1000)  # repr() of a 1000-deep value hit RecursionError
@example(DEEP_PAYLOAD_300)  # orjson encodes only 254 levels: the broadcast could not be sent on
@example(b'{"topic":"t","event":"e","payload":{},"ref":18446744073709551616}')  # an integer ref past u64
def test_v1_text(data: bytes) -> None:
    decode_or_refuse(V1.decode_text, data)


@given(text_frames(v2_arrays(), "2.0.0"))
@example(DEEP_LIST_1000)
@example(DEEP_PAYLOAD_300_V2)
def test_v2_text(data: bytes) -> None:
    decode_or_refuse(V2.decode_text, data)


@given(st.binary(max_size=300))
def test_v1_binary_is_always_refused(data: bytes) -> None:
    try:
        V1.decode_binary(data)
    except MalformedMessage:
        return
    raise AssertionError("V1 decoded a binary frame")


# -- binary frames (vsn 2.0.0) --

fields = st.one_of(st.text(max_size=12), awkward_text).map(lambda s: s.encode("utf-8", "surrogatepass")) | st.binary(
    max_size=12
)


@st.composite
def kind0(draw: st.DrawFn) -> bytes:
    """Kind 0 push: 0, four u8 lengths, join_ref, ref, topic, event, payload; lengths may lie."""
    parts = [draw(fields) for _ in range(4)]
    lengths = [len(p) if draw(st.booleans()) else draw(st.integers(0, 255)) for p in parts]
    return bytes([0, *lengths]) + b"".join(parts) + draw(st.binary(max_size=32))


@st.composite
def kind3(draw: st.DrawFn) -> bytes:
    """Kind 3 user broadcast push: 0..1 encoding, metadata and payload JSON or not."""
    join_ref, ref, topic, event = (draw(fields) for _ in range(4))
    metadata = draw(
        st.one_of(
            st.just(b""),
            st.builds(json_bytes, json_values).filter(lambda b: len(b) <= 255),
            st.builds(json_bytes, st.builds(nested, scalars, st.integers(1, 127), st.sampled_from(["list", "dict"]))),
            fields,
        )
    )[:255]
    payload = draw(
        st.one_of(
            st.builds(json_bytes, json_values, st.booleans()),
            st.builds(json_bytes, st.builds(nested, scalars, deep_depths, st.just("list"))),
            st.binary(max_size=32),
        )
    )
    encoding = draw(st.sampled_from([BINARY, JSON]) | st.integers(0, 255))
    parts = [join_ref, ref, topic, event, metadata]
    lengths = [len(p) if draw(st.booleans()) else draw(st.integers(0, 255)) for p in parts]
    head = struct.pack("!7B", 3, *lengths, encoding)
    return head + b"".join(parts) + payload


binary_frames = st.one_of(
    kind0(),
    kind3(),
    kind0().flatmap(mutated),
    kind3().flatmap(mutated),
    st.binary(max_size=64),
    st.integers(0, 255).flatmap(lambda k: st.binary(max_size=16).map(lambda b: bytes([k]) + b)),
)


@given(binary_frames)
@example(b"")
@example(bytes([3, 0, 0, 1, 1, 0, 1]) + b"te" + b"[" * 300 + b"]" * 300)  # deep JSON payload: spliced, not re-encoded
def test_v2_binary(data: bytes) -> None:
    decode_or_refuse(V2.decode_binary, data)


# -- the vsn query value --

vsns = st.one_of(
    st.none(),
    awkward_text,
    st.from_regex(r"\A(0|[1-9][0-9]{0,5000})\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)(-[0-9A-Za-z.-]+)?(\+[0-9A-Za-z.-]+)?\Z"),
)


@given(vsns)
@example("9" * 5000 + ".0.0")  # int() refuses more than 4300 digits: the upgrade task raised ValueError
def test_codec_for(vsn: str | None) -> None:
    codec = codec_for(vsn)
    assert codec is None or codec in (V1, V2)
