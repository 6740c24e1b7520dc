"""The messages between the processes of a cluster (cluster/codec.py): bytes in, Publication out."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from realtime_core.cluster import codec
from realtime_core.hub import KINDS, Audience, Publication, StreamKey
from realtime_core.protocol import BINARY, JSON, UserBroadcast

texts = st.text(max_size=40)


def same(a: Publication, b: Publication) -> bool:
    fields = ("kind", "topic", "event", "payload", "user", "audience", "message_id")
    return all(getattr(a, f) == getattr(b, f) for f in fields)


@given(
    node=texts,
    sent_at=st.floats(min_value=0, max_value=2e9),
    topic=texts,
    event=texts,
    payload=st.binary(max_size=200),
    kind=st.sampled_from(KINDS),
    audience=st.sampled_from(list(Audience)),
    message_id=st.none() | texts,
)
def test_a_publication_comes_back_as_it_was_sent(node, sent_at, topic, event, payload, kind, audience, message_id):
    publication = Publication(topic, event, payload, audience=audience, message_id=message_id, kind=kind)
    got_node, got_sent_at, decoded = codec.decode(codec.encode(node, sent_at, publication))
    assert (got_node, got_sent_at) == (node, sent_at)
    assert same(decoded, publication)
    assert decoded.origin == (node, sent_at)  # what names the message on every node


@given(
    data=st.binary(max_size=200),
    encoding=st.sampled_from([BINARY, JSON]),
    metadata=st.none() | st.dictionaries(texts, st.integers(-10, 10) | texts, max_size=3),
    user_event=texts,
)
def test_a_user_broadcast_keeps_its_bytes_event_and_metadata(data, encoding, metadata, user_event):
    publication = Publication("realtime:t", "broadcast", user=UserBroadcast(user_event, data, encoding, metadata))
    node, sent_at, decoded = codec.decode(codec.encode("n1", 12.5, publication))
    assert (node, sent_at) == ("n1", 12.5)
    assert same(decoded, publication)


@pytest.mark.parametrize(
    "data",
    [b"", b"\x00\x00", b"\x00\x00\x00\x05[1,2", b"\x00\x00\x00\x02[]", b"\x00\x00\x00\x03[2]", b"\x00\x00\x00\x04nope"],
)
def test_bytes_that_are_not_a_message_raise_codec_error(data):
    with pytest.raises(codec.CodecError):
        codec.decode(data)


def test_a_message_of_another_kind_is_refused():
    message = codec.encode("n", 1.0, Publication("realtime:t", "broadcast", b"{}"))
    with pytest.raises(codec.CodecError):
        codec.decode(message.replace(b'"broadcast",', b'"unknown",', 1))


@given(a=st.tuples(texts, st.booleans(), texts), b=st.tuples(texts, st.booleans(), texts))
def test_different_streams_have_different_channels(a, b):
    assert (codec.channel("rt:c:", StreamKey(*a)) == codec.channel("rt:c:", StreamKey(*b))) == (a == b)


@given(st.lists(st.binary(max_size=3000), max_size=200))
def test_packs_give_back_every_message_in_order_and_stay_bounded(messages):
    packs = codec.pack(messages)
    assert [m for p in packs for m in codec.unpack(p)] == messages
    for data in packs:
        assert len(data) <= codec.MAX_PACK or len(codec.unpack(data)) == 1  # only a lone message is larger


def test_a_pack_cut_short_is_refused():
    data = codec.pack([b"one", b"two"])[0]
    for cut in (1, 5, len(data) - 1):
        with pytest.raises(codec.CodecError, match="cut short"):
            codec.unpack(data[:cut])
