"""Tests for realtime_core.payloads: the lenient phx_join payload of docs/protocol.md §3.1 and the ids
of docs/protocol.md §3.4."""

from __future__ import annotations

from typing import Any

import pytest

from realtime_core.payloads import JoinPayload, Replay, flexible_bool, postgres_change_id


def parse_config(config: Any, **top: Any) -> JoinPayload:
    """Parse a join payload {"config": config, **top}."""
    return JoinPayload.parse({"config": config, **top})


def assert_no_problems(parsed: JoinPayload) -> None:
    assert parsed.problems == [], f"unexpected InvalidJoinPayload problems: {parsed.problems}"


def assert_problem_about(parsed: JoinPayload, field: str) -> None:
    assert any(field in problem for problem in parsed.problems), (
        f"expected a problem about {field!r}, got {parsed.problems}"
    )


class TestFlexibleBoolean:
    """docs/protocol.md §3.1: true/false, or the strings "true"/"false" in any letter case."""

    @pytest.mark.parametrize(
        ("value", "expected"),
        [
            (True, True),
            (False, False),
            ("true", True),
            ("false", False),
            ("TRUE", True),
            ("False", False),
            ("tRuE", True),
        ],
    )
    def test_accepted_values(self, value, expected):
        assert flexible_bool(value, default=not expected) == (expected, True)

    @pytest.mark.parametrize("value", ["yes", "1", "", 1, 0, [], {}, "true "])
    def test_invalid_values_give_the_default_and_are_flagged(self, value):
        assert flexible_bool(value, default=False) == (False, False)
        assert flexible_bool(value, default=True) == (True, False)

    def test_a_missing_value_gives_the_default_without_a_problem(self):
        assert flexible_bool(None, default=True) == (True, True)

    def test_string_booleans_apply_in_a_join_payload(self):
        parsed = parse_config({"private": "TRUE", "broadcast": {"ack": "true", "self": "False"}})
        assert (parsed.private, parsed.ack, parsed.self_broadcast) == (True, True, False)
        assert_no_problems(parsed)

    def test_an_invalid_boolean_falls_back_to_the_default_and_is_reported(self):
        parsed = parse_config({"broadcast": {"ack": "yes", "self": True}, "presence": {"enabled": 1}})
        assert parsed.ack is False
        assert parsed.self_broadcast is True, "the valid parts still apply"
        assert parsed.presence_enabled is False
        assert_problem_about(parsed, "broadcast.ack")
        assert_problem_about(parsed, "presence.enabled")

    def test_replication_ready_is_a_flexible_boolean(self):
        assert parse_config({"broadcast": {"replication_ready": "true"}}).replication_ready is True

    @pytest.mark.parametrize(("value", "opted_in"), [(True, True), ("false", True), (1, True), (False, False)])
    def test_any_replication_ready_but_false_opts_in_as_upstream(self, value, opted_in):
        assert parse_config({"broadcast": {"replication_ready": value}}).replication_ready is opted_in
        assert parse_config({"broadcast": {}}).replication_ready is False


class TestConfigAndLegacy:
    """docs/protocol.md §3.1: "New API" means the payload has a `config` key."""

    def test_a_payload_with_config_is_the_new_api(self):
        parsed = parse_config({})
        assert parsed.new_api is True
        assert_no_problems(parsed)

    def test_a_payload_without_config_is_legacy(self):
        parsed = JoinPayload.parse({"access_token": "t"})
        assert parsed.new_api is False
        assert_no_problems(parsed)

    def test_a_null_config_is_still_the_new_api_with_defaults(self):
        parsed = parse_config(None)
        assert parsed.new_api is True
        assert (parsed.private, parsed.ack, parsed.presence_enabled, parsed.postgres_changes) == (
            False,
            False,
            False,
            [],
        )
        assert_no_problems(parsed)

    def test_defaults_of_an_empty_config(self):
        parsed = parse_config({})
        assert parsed == JoinPayload(new_api=True)

    def test_a_config_that_is_not_an_object_is_reported_not_fatal(self):
        parsed = parse_config("private")
        assert parsed.new_api is True
        assert parsed.private is False
        assert_problem_about(parsed, "config")

    def test_a_broadcast_section_that_is_not_an_object_is_ignored(self):
        parsed = parse_config({"broadcast": [], "private": True})
        assert parsed.private is True
        assert parsed.ack is False
        assert_problem_about(parsed, "broadcast")

    @pytest.mark.parametrize("payload", [None, {}])
    def test_an_empty_payload_is_legacy_without_problems(self, payload):
        parsed = JoinPayload.parse(payload)
        assert parsed.new_api is False
        assert_no_problems(parsed)

    @pytest.mark.parametrize("payload", ["x", 3, []])
    def test_a_payload_that_is_not_an_object_is_reported(self, payload):
        parsed = JoinPayload.parse(payload)
        assert parsed.new_api is False
        assert_problem_about(parsed, "payload")


class TestPresenceKey:
    """docs/protocol.md §5.1: config.presence.key; "" when missing (the channel then makes a UUID v1)."""

    def test_a_string_key_is_kept(self):
        parsed = parse_config({"presence": {"key": "user-1"}})
        assert parsed.presence_key == "user-1"

    @pytest.mark.parametrize("presence", [{}, {"key": ""}, {"key": None}, {"enabled": True}])
    def test_a_missing_or_empty_key_is_left_empty(self, presence):
        parsed = parse_config({"presence": presence})
        assert parsed.presence_key == ""
        assert_no_problems(parsed)

    @pytest.mark.parametrize(
        ("key", "expected"),
        [(123, "123"), (1.5, "1.5"), (True, "true"), ({"id": 1}, '{"id":1}'), (["a"], '["a"]')],
    )
    def test_a_non_string_json_key_becomes_its_json_text(self, key, expected):
        parsed = parse_config({"presence": {"key": key}})
        assert parsed.presence_key == expected
        assert_no_problems(parsed)

    def test_presence_enabled(self):
        assert parse_config({"presence": {"enabled": True}}).presence_enabled is True


class TestPostgresChanges:
    """docs/protocol.md §3.1: null entries are removed and `postgres_changes: null` is []."""

    def test_a_list_of_params_is_kept_in_order(self):
        changes = [{"event": "INSERT", "schema": "public", "table": "a"}, {"event": "*", "schema": "s"}]
        parsed = parse_config({"postgres_changes": changes})
        assert parsed.postgres_changes == changes
        assert_no_problems(parsed)

    def test_null_is_an_empty_list(self):
        parsed = parse_config({"postgres_changes": None})
        assert parsed.postgres_changes == []
        assert_no_problems(parsed)

    def test_null_entries_are_removed_silently(self):
        parsed = parse_config({"postgres_changes": [None, {"event": "*"}, None]})
        assert parsed.postgres_changes == [{"event": "*"}]
        assert_no_problems(parsed)

    def test_entries_that_are_not_objects_are_dropped_and_reported(self):
        parsed = parse_config({"postgres_changes": [{"event": "*"}, "x", 3]})
        assert parsed.postgres_changes == [{"event": "*"}]
        assert_problem_about(parsed, "postgres_changes")

    def test_a_value_that_is_not_a_list_is_reported(self):
        parsed = parse_config({"postgres_changes": {"event": "*"}})
        assert parsed.postgres_changes == []
        assert_problem_about(parsed, "postgres_changes")


class TestReplay:
    """docs/protocol.md §4.6: limit defaults to 25 and is clamped to 1..25; non-integer params are invalid."""

    @staticmethod
    def replay(value: Any) -> JoinPayload:
        return parse_config({"broadcast": {"replay": value}})

    def test_since_and_limit(self):
        parsed = self.replay({"since": 1_700_000_000_000, "limit": 10})
        assert parsed.replay == Replay(since=1_700_000_000_000, limit=10)
        assert parsed.replay_invalid is False

    def test_limit_defaults_to_25(self):
        assert self.replay({"since": 0}).replay == Replay(since=0, limit=25)

    @pytest.mark.parametrize(("limit", "clamped"), [(0, 1), (-5, 1), (1, 1), (25, 25), (26, 25), (10_000, 25)])
    def test_limit_is_clamped_to_1_through_25(self, limit, clamped):
        assert self.replay({"since": 0, "limit": limit}).replay == Replay(since=0, limit=clamped)

    @pytest.mark.parametrize(
        "value",
        [
            {},  # since is required
            {"since": "0"},
            {"since": 1.5},
            {"since": True},
            {"since": 0, "limit": "10"},
            {"since": 0, "limit": 2.0},
            {"since": 0, "limit": False},
            "since=0",
            [0, 10],
        ],
    )
    def test_invalid_params_are_flagged_for_the_join_to_refuse(self, value):
        parsed = self.replay(value)
        assert parsed.replay is None
        assert parsed.replay_invalid is True

    def test_a_null_replay_means_no_replay(self):
        parsed = self.replay(None)
        assert (parsed.replay, parsed.replay_invalid) == (None, False)


class TestTokens:
    """docs/protocol.md §3.2: access_token and user_token are read from the top level, with or without config."""

    def test_access_token_and_user_token(self):
        parsed = parse_config({}, access_token="a.b.c", user_token="u.v.w")
        assert (parsed.access_token, parsed.user_token) == ("a.b.c", "u.v.w")

    def test_tokens_in_a_legacy_payload(self):
        parsed = JoinPayload.parse({"access_token": "a.b.c"})
        assert (parsed.access_token, parsed.user_token) == ("a.b.c", None)

    def test_tokens_are_kept_as_sent_for_the_join_to_judge(self):
        parsed = JoinPayload.parse({"access_token": 42})
        assert parsed.access_token == 42

    def test_tokens_are_read_even_when_config_is_invalid(self):
        parsed = parse_config(7, access_token="a.b.c")
        assert parsed.access_token == "a.b.c"


class TestPostgresChangeId:
    """docs/protocol.md §3.4: a non-negative integer that depends only on the params map."""

    PARAMS = {"event": "UPDATE", "schema": "public", "table": "todos", "filter": "id=eq.1"}

    def test_is_a_non_negative_int(self):
        change_id = postgres_change_id(self.PARAMS)
        assert type(change_id) is int
        assert change_id >= 0

    def test_fits_in_27_bits_like_phash2(self):
        assert postgres_change_id(self.PARAMS) < 2**27

    def test_is_stable_for_equal_maps(self):
        assert postgres_change_id(self.PARAMS) == postgres_change_id(dict(self.PARAMS))

    def test_does_not_depend_on_key_order(self):
        reordered = dict(reversed(list(self.PARAMS.items())))
        assert list(reordered) != list(self.PARAMS)
        assert postgres_change_id(reordered) == postgres_change_id(self.PARAMS)

    def test_does_not_depend_on_nested_key_order(self):
        a = {"event": "*", "extra": {"x": 1, "y": 2}}
        b = {"extra": {"y": 2, "x": 1}, "event": "*"}
        assert postgres_change_id(a) == postgres_change_id(b)

    @pytest.mark.parametrize(
        "other",
        [
            {"event": "INSERT", "schema": "public", "table": "todos", "filter": "id=eq.1"},
            {"event": "UPDATE", "schema": "public", "table": "todos", "filter": "id=eq.2"},
            {"event": "UPDATE", "schema": "public", "table": "todos"},
            {"event": "UPDATE", "schema": "public", "table": "todos", "filter": "id=eq.1", "select": ["id"]},
        ],
    )
    def test_differs_for_different_maps(self, other):
        assert postgres_change_id(other) != postgres_change_id(self.PARAMS)
