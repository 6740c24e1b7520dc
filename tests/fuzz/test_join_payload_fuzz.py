"""Property tests of the phx_join payload parser (realtime_core.payloads.JoinPayload).

The payload comes from a decoded client frame, so the inputs go through the
V1 decoder first, as in socket.py. JoinPayload.parse() never refuses: any
payload gives typed fields, with what it ignored listed in `problems`; each
postgres_changes entry gets a stable id, and the join reply that echoes the
entries can be encoded."""

from __future__ import annotations

from typing import Any

from hypothesis import example, given
from hypothesis import strategies as st

from realtime_core.errors import MalformedMessage
from realtime_core.payloads import JoinPayload, postgres_change_id
from realtime_core.postgres_changes.filters import SubscriptionParams, SubscriptionParamsError, parse_params
from realtime_core.protocol import V1, V2

from .strategies import awkward_text, huge_numbers, json_bytes, json_values, nested, scalars

deep_dicts = st.sampled_from([100, 125, 126, 127, 200, 300])  # around the decoder's 128 levels
flex_bools = st.one_of(st.booleans(), st.sampled_from(["true", "FALSE", "True", "yes", ""]), scalars)
maybe_objects = st.one_of(json_values, scalars)

join_payloads = st.one_of(
    json_values,
    st.fixed_dictionaries(
        {},
        optional={
            "access_token": st.one_of(awkward_text, st.just("sb_publishable_x"), scalars),
            "user_token": st.one_of(awkward_text, scalars),
            "config": st.one_of(
                scalars,
                st.fixed_dictionaries(
                    {},
                    optional={
                        "private": flex_bools,
                        "broadcast": st.one_of(
                            scalars,
                            st.fixed_dictionaries(
                                {},
                                optional={
                                    "ack": flex_bools,
                                    "self": flex_bools,
                                    "replication_ready": flex_bools,
                                    "replay": st.one_of(
                                        scalars,
                                        st.fixed_dictionaries(
                                            {},
                                            optional={
                                                "since": st.one_of(huge_numbers, scalars),
                                                "limit": st.one_of(huge_numbers, scalars),
                                            },
                                        ),
                                    ),
                                },
                            ),
                        ),
                        "presence": st.one_of(
                            scalars,
                            st.fixed_dictionaries({}, optional={"enabled": flex_bools, "key": maybe_objects}),
                        ),
                        "postgres_changes": st.one_of(
                            scalars,
                            st.lists(
                                st.one_of(
                                    maybe_objects,
                                    st.fixed_dictionaries(
                                        {"event": st.just("*"), "schema": st.just("public")},
                                        optional={"table": awkward_text, "filter": awkward_text},
                                    ),
                                    st.builds(nested, scalars, deep_dicts, st.just("dict")),
                                ),
                                max_size=4,
                            ),
                        ),
                    },
                ),
            ),
        },
    ),
)


def join_frame(payload: Any) -> bytes:
    return json_bytes({"topic": "realtime:room", "event": "phx_join", "payload": payload, "ref": "1", "join_ref": "1"})


DEEP_PRESENCE_KEY = {"config": {"presence": {"key": nested(0, 120, "list")}}}


@given(join_payloads)
@example(DEEP_PRESENCE_KEY)  # the deepest key the decoder lets through is still encodable
@example({"config": {"postgres_changes": [nested(0, 300, "dict")]}})  # postgres_change_id() raised TypeError
def test_join_payload(payload: Any) -> None:
    # As socket.py hands it to the join: through the V1 decoder.
    try:
        msg = V1.decode_text(join_frame(payload))
    except MalformedMessage:
        return
    config = JoinPayload.parse(msg.payload)
    assert all(type(v) is bool for v in (config.new_api, config.private, config.ack, config.self_broadcast))
    assert type(config.presence_enabled) is bool and type(config.presence_key) is str
    assert all(type(p) is str for p in config.problems)
    if config.replay is not None:
        assert 1 <= config.replay.limit <= 25 and type(config.replay.since) is int
    ids = [postgres_change_id(params) for params in config.postgres_changes]
    assert all(0 <= i < 2**27 for i in ids)
    changes = config.postgres_changes
    reply = {"postgres_changes": [{**params, "id": cid} for cid, params in zip(ids, changes, strict=True)]}
    V1.reply("1", "1", msg.topic, "ok", reply)
    V2.reply("1", "1", msg.topic, "ok", reply)
    for params in config.postgres_changes:
        try:
            parsed = parse_params(params)
        except SubscriptionParamsError as exc:
            assert str(exc)
            continue
        assert isinstance(parsed, SubscriptionParams)
