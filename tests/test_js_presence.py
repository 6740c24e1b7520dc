"""Presence as @supabase/realtime-js sees it (docs/protocol.md §5), on vsn 2.0.0 and 1.0.0.

realtime-js builds its presence state from `presence_state` and `presence_diff`
(docs/protocol.md §5.4) and reports `sync`, `join` and `leave` events; these tests check
those events and `presenceState()`. Presence refs are opaque, so they are
compared with each other, never with fixed values."""

from __future__ import annotations

from typing import Any

import pytest
from conftest import MS
from jsclient import JsDriver

pytestmark = [pytest.mark.js, pytest.mark.pg]

VSNS = pytest.mark.parametrize("vsn", ["2.0.0", "1.0.0"])
DELIVERY = 3_000 * MS


async def join(js: JsDriver, name: str, url: str, token: str, topic: str, vsn: str) -> None:
    """A client `name` on `topic` with presence key `name`, listening to presence events,
    subscribed and synced (its first `presence_state` applied)."""
    start = js.mark()
    await js.join(name, url, token, topic, vsn=vsn, listen=("presence",), presence={"key": name})
    await presence_event(js, name, "sync", since=start)


async def presence_event(js: JsDriver, channel: str, event: str, key: str | None = None, since: int = 0) -> dict:
    """The first presence `event` (sync/join/leave) `channel` got after `since`."""
    found = await js.wait_for(
        lambda ev: (
            ev["ev"] == "presence"
            and ev["channel"] == channel
            and ev["payload"]["event"] == event
            and (key is None or ev["payload"].get("key") == key)
        ),
        timeout=DELIVERY,
        since=since,
    )
    return found


def without_refs(presences: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The metas with their presence_ref checked (a non-empty string) and dropped."""
    for meta in presences:
        assert isinstance(meta["presence_ref"], str) and meta["presence_ref"]
    return [{k: v for k, v in meta.items() if k != "presence_ref"} for meta in presences]


async def track(js: JsDriver, channel: str, payload: dict[str, Any]) -> Any:
    return await js.request({"op": "track", "channel": channel, "payload": payload})


async def presence_state(js: JsDriver, channel: str) -> dict[str, list[dict[str, Any]]]:
    return await js.request({"op": "presenceState", "channel": channel})


async def alice_online_as_bob_sees_it(js: JsDriver, url: str, token: str, topic: str, vsn: str) -> dict[str, Any]:
    """alice and bob on `topic`, then alice tracked {"status": "online"}: the `join` payload bob got for her."""
    await join(js, "alice", url, token, topic, vsn)
    await join(js, "bob", url, token, topic, vsn)
    assert await track(js, "alice", {"status": "online"}) == "ok"
    return (await presence_event(js, "bob", "join", "alice"))["payload"]


@VSNS
async def test_subscribing_with_presence_listeners_syncs_an_empty_state(server, token, topic, vsn):
    async with JsDriver() as js:
        await join(js, "alice", server.ws_url, token, topic, vsn)
        sync = await presence_event(js, "alice", "sync")
        assert sync["state"] == {}
        assert await presence_state(js, "alice") == {}


@VSNS
async def test_track_announces_a_join_to_every_subscriber_including_the_tracker(server, token, topic, vsn):
    async with JsDriver() as js:
        await join(js, "alice", server.ws_url, token, topic, vsn)
        await join(js, "bob", server.ws_url, token, topic, vsn)
        await presence_event(js, "bob", "sync")
        start = js.mark()
        assert await track(js, "alice", {"status": "online"}) == "ok"
        for channel in ("alice", "bob"):
            joined = (await presence_event(js, channel, "join", "alice", since=start))["payload"]
            assert joined["currentPresences"] == []
            assert without_refs(joined["newPresences"]) == [{"status": "online"}]
            await presence_event(js, channel, "sync", since=start)
        alice_state = await presence_state(js, "alice")
        bob_state = await presence_state(js, "bob")
        assert alice_state == bob_state
        assert {key: without_refs(metas) for key, metas in bob_state.items()} == {"alice": [{"status": "online"}]}


@VSNS
async def test_late_joiner_receives_the_current_state(server, token, topic, vsn):
    async with JsDriver() as js:
        await join(js, "alice", server.ws_url, token, topic, vsn)
        await join(js, "bob", server.ws_url, token, topic, vsn)
        assert await track(js, "alice", {"status": "online"}) == "ok"
        assert await track(js, "bob", {"status": "busy"}) == "ok"
        await presence_event(js, "alice", "join", "bob")
        start = js.mark()
        await join(js, "carol", server.ws_url, token, topic, vsn)
        sync = await presence_event(js, "carol", "sync", since=start)
        expected = {"alice": [{"status": "online"}], "bob": [{"status": "busy"}]}
        assert {key: without_refs(metas) for key, metas in sync["state"].items()} == expected
        joins = js.matching(lambda ev: ev["ev"] == "presence" and ev["channel"] == "carol", start)
        assert sorted(ev["payload"]["key"] for ev in joins if ev["payload"]["event"] == "join") == ["alice", "bob"]
        # carol sees the same refs as the others.
        assert sync["state"] == await presence_state(js, "alice")


@VSNS
async def test_untrack_announces_a_leave(server, token, topic, vsn):
    async with JsDriver() as js:
        joined = await alice_online_as_bob_sees_it(js, server.ws_url, token, topic, vsn)
        start = js.mark()
        assert await js.request({"op": "untrack", "channel": "alice"}) == "ok"
        left = (await presence_event(js, "bob", "leave", "alice", since=start))["payload"]
        assert left["leftPresences"] == joined["newPresences"]
        assert left["currentPresences"] == []
        await presence_event(js, "bob", "sync", since=start)
        assert await presence_state(js, "bob") == {}
        assert await presence_state(js, "alice") == {}


@VSNS
async def test_disconnect_of_the_tracker_announces_a_leave(server, token, topic, vsn):
    async with JsDriver() as js:
        joined = await alice_online_as_bob_sees_it(js, server.ws_url, token, topic, vsn)
        start = js.mark()
        await js.request({"op": "disconnect", "client": "alice"})
        left = (await presence_event(js, "bob", "leave", "alice", since=start))["payload"]
        assert left["leftPresences"] == joined["newPresences"]
        assert await presence_state(js, "bob") == {}


@VSNS
async def test_tracking_again_replaces_the_meta_with_a_leave_and_a_join(server, token, topic, vsn):
    async with JsDriver() as js:
        first = (await alice_online_as_bob_sees_it(js, server.ws_url, token, topic, vsn))["newPresences"]
        start = js.mark()
        assert await track(js, "alice", {"status": "away"}) == "ok"
        joined = (await presence_event(js, "bob", "join", "alice", since=start))["payload"]
        left = (await presence_event(js, "bob", "leave", "alice", since=start))["payload"]
        assert joined["currentPresences"] == first
        assert without_refs(joined["newPresences"]) == [{"status": "away"}]
        assert joined["newPresences"][0]["presence_ref"] != first[0]["presence_ref"]
        assert left["leftPresences"] == first
        assert left["currentPresences"] == joined["newPresences"]
        state = await presence_state(js, "bob")
        assert state == {"alice": joined["newPresences"]}


@VSNS
async def test_tracking_the_same_payload_again_changes_nothing(server, token, topic, vsn):
    async with JsDriver() as js:
        await join(js, "alice", server.ws_url, token, topic, vsn)
        await join(js, "bob", server.ws_url, token, topic, vsn)
        start = js.mark()
        assert await track(js, "alice", {"status": "online"}) == "ok"
        for channel in ("alice", "bob"):
            await presence_event(js, channel, "join", "alice", since=start)
            await presence_event(js, channel, "sync", since=start)
        start = js.mark()
        assert await track(js, "alice", {"status": "online"}) == "ok"
        # The marker: a real change, tracked next; its diff would follow the repeat's.
        assert await track(js, "alice", {"status": "marker"}) == "ok"
        for channel in ("alice", "bob"):
            await js.expect_nothing_before(
                lambda ev, channel=channel: (
                    ev["ev"] == "presence"
                    and ev["channel"] == channel
                    and ev["payload"]["event"] == "join"
                    and without_refs(ev["payload"]["newPresences"]) == [{"status": "marker"}]
                ),
                lambda ev, channel=channel: ev["ev"] == "presence" and ev["channel"] == channel,
                since=start,
                timeout=DELIVERY,
            )
