"""Tests for realtime_core.postgres_changes.subscriptions: the in-memory registry and the logged params text.

Channels are stand-ins: the registry only hashes them and reads `claims`."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from realtime_core.postgres_changes.filters import parse_params
from realtime_core.postgres_changes.subscriptions import Registry, Subscription, describe_params


class FakeChannel:
    """What Subscription reads from a channel."""

    def __init__(self, claims: dict[str, Any] | None = None) -> None:
        self.claims = claims if claims is not None else {"role": "anon"}


def sub(channel: FakeChannel, params: dict[str, Any], id: int = 1) -> Subscription:
    return Subscription(channel, id, uuid.uuid1(), parse_params(params))  # type: ignore[arg-type]


def ids(subs: list[Subscription]) -> list[int]:
    return sorted(s.id for s in subs)


class TestRegistry:
    def test_exact_subscription_matches_only_its_table(self):
        registry = Registry()
        a = FakeChannel()
        registry.add([sub(a, {"schema": "public", "table": "todos"})])
        assert ids(registry.for_relation("public", "todos")) == [1]
        assert registry.for_relation("public", "other") == []
        assert registry.for_relation("private", "todos") == []

    def test_wildcard_table_matches_every_table_of_its_schema(self):
        registry = Registry()
        registry.add([sub(FakeChannel(), {"schema": "public"})])  # table `*`
        assert ids(registry.for_relation("public", "todos")) == [1]
        assert ids(registry.for_relation("public", "later_added")) == [1]
        assert registry.for_relation("other", "todos") == []

    def test_wildcard_schema_matches_that_table_in_every_schema(self):
        registry = Registry()
        registry.add([sub(FakeChannel(), {"schema": "*", "table": "todos"})])
        assert ids(registry.for_relation("public", "todos")) == [1]
        assert ids(registry.for_relation("other", "todos")) == [1]
        assert registry.for_relation("public", "notes") == []

    def test_wildcard_everything(self):
        registry = Registry()
        registry.add([sub(FakeChannel(), {"schema": "*", "table": "*"})])
        assert ids(registry.for_relation("any", "thing")) == [1]

    def test_exact_and_wildcard_subscriptions_are_both_returned(self):
        registry = Registry()
        channel = FakeChannel()
        registry.add(
            [
                sub(channel, {"schema": "public", "table": "todos"}, 1),
                sub(channel, {"schema": "public"}, 2),
                sub(channel, {"schema": "*", "table": "notes"}, 3),
            ]
        )
        assert ids(registry.for_relation("public", "todos")) == [1, 2]
        assert ids(registry.for_relation("public", "notes")) == [2, 3]
        assert ids(registry.for_relation("x", "notes")) == [3]

    def test_for_relation_does_not_expose_the_index(self):
        registry = Registry()
        channel = FakeChannel()
        registry.add([sub(channel, {"schema": "public", "table": "todos"}), sub(channel, {"schema": "public"}, 2)])
        registry.for_relation("public", "todos").clear()
        assert ids(registry.for_relation("public", "todos")) == [1, 2]

    def test_len_counts_subscriptions_and_channels_counts_channels(self):
        registry = Registry()
        a, b = FakeChannel(), FakeChannel()
        registry.add([sub(a, {"table": "t"}, 1), sub(a, {"table": "u"}, 2)])
        registry.add([sub(b, {"table": "t"}, 1)])
        assert len(registry) == 3
        assert registry.channels() == 2

    def test_for_channel_lists_a_channels_subscriptions_in_order(self):
        registry = Registry()
        a, b = FakeChannel(), FakeChannel()
        registry.add([sub(a, {"table": "t"}, 1), sub(a, {"schema": "public"}, 2)])
        registry.add([sub(b, {"table": "t"}, 7)])
        assert [s.id for s in registry.for_channel(a)] == [1, 2]
        assert [s.id for s in registry.for_channel(b)] == [7]
        assert registry.for_channel(FakeChannel()) == []  # type: ignore[arg-type]

    def test_removing_a_channel_returns_its_subscriptions_and_keeps_the_others(self):
        registry = Registry()
        a, b = FakeChannel(), FakeChannel()
        a_subs = [sub(a, {"table": "t"}, 1), sub(a, {"schema": "public"}, 2), sub(a, {"schema": "*", "table": "t"}, 3)]
        registry.add(a_subs)
        registry.add([sub(b, {"table": "t"}, 10), sub(b, {"schema": "public"}, 20)])
        gone = registry.remove_channel(a)  # type: ignore[arg-type]
        assert gone == a_subs
        assert ids(registry.for_relation("public", "t")) == [10, 20]
        assert ids(registry.for_relation("public", "u")) == [20]
        assert registry.for_relation("other", "t") == []
        assert registry.for_channel(a) == []  # type: ignore[arg-type]
        assert len(registry) == 2 and registry.channels() == 1

    def test_removing_the_last_channel_of_a_table_empties_it(self):
        registry = Registry()
        a = FakeChannel()
        registry.add([sub(a, {"table": "t"}), sub(a, {"schema": "*"}, 2)])
        registry.remove_channel(a)  # type: ignore[arg-type]
        assert registry.for_relation("public", "t") == []
        assert len(registry) == 0 and registry.channels() == 0

    def test_removing_an_unknown_channel_is_a_no_op(self):
        registry = Registry()
        registry.add([sub(FakeChannel(), {"table": "t"})])
        assert registry.remove_channel(FakeChannel()) == []  # type: ignore[arg-type]
        assert ids(registry.for_relation("public", "t")) == [1]

    def test_channels_with_equal_subscriptions_are_told_apart(self):
        registry = Registry()
        a, b = FakeChannel(), FakeChannel()
        registry.add([sub(a, {"table": "t"})])
        registry.add([sub(b, {"table": "t"})])
        registry.remove_channel(a)  # type: ignore[arg-type]
        [left] = registry.for_relation("public", "t")
        assert left.channel is b


class TestSubscription:
    @pytest.mark.parametrize(
        ("event", "wanted"),
        [
            ("*", {"INSERT", "UPDATE", "DELETE"}),
            ("INSERT", {"INSERT"}),
            ("update", {"UPDATE"}),  # any letter case (docs/protocol.md §6.2)
            ("DELETE", {"DELETE"}),
            ("TRUNCATE", {"INSERT", "UPDATE", "DELETE"}),  # anything else is `*`
        ],
    )
    def test_wants(self, event, wanted):
        s = sub(FakeChannel(), {"event": event, "table": "t"})
        assert {t for t in ("INSERT", "UPDATE", "DELETE") if s.wants(t)} == wanted

    def test_only_transactions_committed_after_it_went_live_are_wanted(self):
        s = sub(FakeChannel(), {"event": "*", "table": "t"})
        s.start_lsn = 0x1000
        assert not s.live_at(0x0FFF)
        assert s.live_at(0x1000)
        assert s.live_at(0x2000)

    def test_claims_and_role_are_read_live_from_the_channel(self):
        channel = FakeChannel({"role": "authenticated", "sub": "alice"})
        s = sub(channel, {"table": "t"})
        assert s.claims == {"role": "authenticated", "sub": "alice"}
        assert s.role == "authenticated"
        channel.claims = {"role": "anon"}  # an access_token refresh replaces the claims
        assert s.role == "anon" and s.claims == {"role": "anon"}

    @pytest.mark.parametrize("claims", [{}, {"role": None}, {"role": 5}])
    def test_role_is_empty_when_the_claims_have_no_role_string(self, claims):
        assert sub(FakeChannel(claims), {"table": "t"}).role == ""


class TestDescribeParams:
    """describe_params: the params as upstream's error texts show them (docs/protocol.md §6.2)."""

    @pytest.mark.parametrize(
        ("params", "text"),
        [
            (
                {"event": "*", "schema": "public", "table": "x"},
                "[event: *, schema: public, table: x, filters: [], select: nil]",
            ),
            (
                {"event": "INSERT", "schema": "public", "table": "x", "filter": "id=eq.1"},
                '[event: INSERT, schema: public, table: x, filters: [{"id", "eq", "1"}], select: nil]',
            ),
            (
                {"schema": "public", "table": "x", "filter": "id=not.eq.1"},
                '[event: *, schema: public, table: x, filters: [{"id", "not.eq", "1"}], select: nil]',
            ),
            (
                {"schema": "public", "table": "x", "filter": "id=in.(1,2,3)"},
                '[event: *, schema: public, table: x, filters: [{"id", "in", "{1,2,3}"}], select: nil]',
            ),
            (
                {"schema": "public", "table": "x", "filter": "id=gt.0,name=not.like.a%"},
                "[event: *, schema: public, table: x, "
                'filters: [{"id", "gt", "0"}, {"name", "not.like", "a%"}], select: nil]',
            ),
            (
                {"event": "UPDATE", "schema": "public", "table": "x", "select": ["a", "b"]},
                '[event: UPDATE, schema: public, table: x, filters: [], select: ["a", "b"]]',
            ),
            ({"schema": "public"}, "[event: *, schema: public, table: *, filters: [], select: nil]"),
            ({"table": "x"}, "[event: *, schema: public, table: x, filters: [], select: nil]"),
        ],
    )
    def test_keyword_list_text(self, params, text):
        assert describe_params(parse_params(params)) == text

    def test_strings_in_filters_and_select_are_inspected_as_elixir_strings(self):
        # inspect/1 escapes quotes and backslashes inside the tuple's strings.
        params = parse_params({"schema": "public", "table": "x", "filter": 'v=eq."a\\"b\\\\c"', "select": ['we"ird']})
        assert params.filters[0].value == 'a"b\\c'
        assert describe_params(params) == (
            '[event: *, schema: public, table: x, filters: [{"v", "eq", "a\\"b\\\\c"}], select: ["we\\"ird"]]'
        )
