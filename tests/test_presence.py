"""Tests for realtime_core.presence: tracking, diffs and state of docs/protocol.md §5.2 (Phoenix.Presence)."""

from __future__ import annotations

from typing import Any

from realtime_core.presence import Diff, PresenceTopic, new_ref


class Owner:
    """Stands for a channel: presence only needs a hashable identity."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"<Owner {self.name}>"


def joined(diff: Diff | None, key: str) -> list[dict[str, Any]]:
    """The metas `diff` joins under `key`; fails when the diff is None."""
    assert diff is not None, "expected a diff"
    return diff["joins"][key]["metas"]


def left(diff: Diff | None, key: str) -> list[dict[str, Any]]:
    """The metas `diff` removes under `key`; fails when the diff is None."""
    assert diff is not None, "expected a diff"
    return diff["leaves"][key]["metas"]


def assert_meta_is(meta: dict[str, Any], payload: dict[str, Any]) -> None:
    """`meta` is `payload` plus Phoenix's refs, and nothing else."""
    extra = {k: v for k, v in meta.items() if k not in payload}
    assert {k: meta[k] for k in payload} == payload
    assert set(extra) <= {"phx_ref", "phx_ref_prev"}, f"unexpected keys {set(extra)}"
    assert isinstance(meta["phx_ref"], str) and meta["phx_ref"]


class TestRefs:
    def test_refs_are_unique_non_empty_strings(self):
        refs = {new_ref() for _ in range(1_000)}
        assert len(refs) == 1_000
        assert all(isinstance(ref, str) and ref for ref in refs)


class TestTrack:
    """docs/protocol.md §5.1 `track`; docs/protocol.md §5.2 `presence_diff`."""

    def test_first_track_joins_the_payload_with_a_phx_ref(self):
        topic = PresenceTopic()
        diff = topic.track(Owner("a"), "alice", {"online_at": 1})
        assert diff is not None
        assert diff["leaves"] == {}
        [meta] = joined(diff, "alice")
        assert_meta_is(meta, {"online_at": 1})
        assert "phx_ref_prev" not in meta

    def test_the_diff_has_only_the_tracked_key(self):
        diff = PresenceTopic().track(Owner("a"), "alice", {})
        assert diff is not None
        assert list(diff["joins"]) == ["alice"]

    def test_tracking_the_same_payload_again_is_a_no_op(self):
        topic, owner = PresenceTopic(), Owner("a")
        topic.track(owner, "alice", {"status": "here"})
        assert topic.track(owner, "alice", {"status": "here"}) is None
        assert len(topic) == 1

    def test_the_payload_is_not_mutated(self):
        payload = {"status": "here"}
        PresenceTopic().track(Owner("a"), "alice", payload)
        assert payload == {"status": "here"}

    def test_an_update_leaves_the_old_meta_and_joins_the_new_one(self):
        topic, owner = PresenceTopic(), Owner("a")
        [old] = joined(topic.track(owner, "alice", {"status": "here"}), "alice")
        diff = topic.track(owner, "alice", {"status": "away"})
        assert left(diff, "alice") == [old]
        [new] = joined(diff, "alice")
        assert_meta_is(new, {"status": "away"})
        assert new["phx_ref"] != old["phx_ref"]

    def test_the_updated_meta_carries_phx_ref_prev(self):
        topic, owner = PresenceTopic(), Owner("a")
        [old] = joined(topic.track(owner, "alice", {"n": 1}), "alice")
        [new] = joined(topic.track(owner, "alice", {"n": 2}), "alice")
        assert new["phx_ref_prev"] == old["phx_ref"]

    def test_a_second_update_points_at_the_first_update(self):
        topic, owner = PresenceTopic(), Owner("a")
        topic.track(owner, "alice", {"n": 1})
        [second] = joined(topic.track(owner, "alice", {"n": 2}), "alice")
        [third] = joined(topic.track(owner, "alice", {"n": 3}), "alice")
        assert third["phx_ref_prev"] == second["phx_ref"]

    def test_a_new_key_leaves_the_old_key_without_phx_ref_prev(self):
        topic, owner = PresenceTopic(), Owner("a")
        [old] = joined(topic.track(owner, "alice", {}), "alice")
        diff = topic.track(owner, "bob", {})
        assert left(diff, "alice") == [old]
        [new] = joined(diff, "bob")
        assert "phx_ref_prev" not in new


class TestUntrack:
    """docs/protocol.md §5.1 `untrack`; docs/protocol.md §3.7 leaves when a channel ends."""

    def test_untrack_leaves_the_tracked_meta(self):
        topic, owner = PresenceTopic(), Owner("a")
        [meta] = joined(topic.track(owner, "alice", {"x": 1}), "alice")
        diff = topic.untrack(owner)
        assert diff == {"joins": {}, "leaves": {"alice": {"metas": [meta]}}}
        assert len(topic) == 0

    def test_untrack_of_the_latest_meta_after_an_update(self):
        topic, owner = PresenceTopic(), Owner("a")
        topic.track(owner, "alice", {"n": 1})
        [latest] = joined(topic.track(owner, "alice", {"n": 2}), "alice")
        assert left(topic.untrack(owner), "alice") == [latest]

    def test_untrack_without_a_presence_gives_no_diff(self):
        assert PresenceTopic().untrack(Owner("a")) is None

    def test_untrack_twice_gives_one_diff(self):
        topic, owner = PresenceTopic(), Owner("a")
        topic.track(owner, "alice", {})
        assert topic.untrack(owner) is not None
        assert topic.untrack(owner) is None

    def test_tracking_again_after_untrack_joins_afresh(self):
        topic, owner = PresenceTopic(), Owner("a")
        topic.track(owner, "alice", {"n": 1})
        topic.untrack(owner)
        diff = topic.track(owner, "alice", {"n": 1})
        assert diff is not None and diff["leaves"] == {}
        assert "phx_ref_prev" not in joined(diff, "alice")[0]


class TestState:
    """docs/protocol.md §5.2 `presence_state`: every presence grouped by key, {key: {"metas": [...]}}."""

    def test_an_empty_topic_has_an_empty_state(self):
        assert PresenceTopic().state() == {}

    def test_state_holds_the_current_meta_of_each_owner(self):
        topic = PresenceTopic()
        [a] = joined(topic.track(Owner("a"), "alice", {"n": 1}), "alice")
        [b] = joined(topic.track(Owner("b"), "bob", {"n": 2}), "bob")
        assert topic.state() == {"alice": {"metas": [a]}, "bob": {"metas": [b]}}

    def test_state_shows_the_updated_meta_only(self):
        topic, owner = PresenceTopic(), Owner("a")
        topic.track(owner, "alice", {"n": 1})
        [new] = joined(topic.track(owner, "alice", {"n": 2}), "alice")
        assert topic.state() == {"alice": {"metas": [new]}}

    def test_two_owners_with_the_same_key_share_one_entry(self):
        topic, first, second = PresenceTopic(), Owner("tab-1"), Owner("tab-2")
        [m1] = joined(topic.track(first, "alice", {"tab": 1}), "alice")
        [m2] = joined(topic.track(second, "alice", {"tab": 2}), "alice")
        assert topic.state() == {"alice": {"metas": [m1, m2]}}
        assert len(topic) == 2

    def test_the_second_owner_of_a_key_joins_without_leaving_the_first(self):
        topic = PresenceTopic()
        topic.track(Owner("tab-1"), "alice", {"tab": 1})
        diff = topic.track(Owner("tab-2"), "alice", {"tab": 2})
        assert diff is not None and diff["leaves"] == {}
        assert "phx_ref_prev" not in joined(diff, "alice")[0]

    def test_untracking_one_owner_keeps_the_other_meta_of_the_key(self):
        topic, first, second = PresenceTopic(), Owner("tab-1"), Owner("tab-2")
        [m1] = joined(topic.track(first, "alice", {"tab": 1}), "alice")
        [m2] = joined(topic.track(second, "alice", {"tab": 2}), "alice")
        assert left(topic.untrack(first), "alice") == [m1]
        assert topic.state() == {"alice": {"metas": [m2]}}

    def test_same_payload_from_two_owners_is_two_presences(self):
        topic = PresenceTopic()
        assert topic.track(Owner("a"), "alice", {"n": 1}) is not None
        assert topic.track(Owner("b"), "alice", {"n": 1}) is not None
        assert len(topic.state()["alice"]["metas"]) == 2
