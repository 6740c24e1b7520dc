"""Live Postgres Changes subscriptions: in memory for dispatch, in realtime.subscription for the record.

cdc.PostgresChanges adds a channel's subscriptions once their rows are written
and removes them when the channel closes. The dispatcher asks for_relation()
for each decoded change. Wildcard subscriptions (schema or table `*`) match any
table of the publication, including tables added to it later."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

from .filters.conditions import Condition
from .filters.elixir import elixir_inspect
from .filters.parsing import SubscriptionParams

if TYPE_CHECKING:
    from ..hub import Subscriber

__all__ = ["Registry", "Subscription", "describe_params"]


@dataclass(slots=True, eq=False)
class Subscription:
    """One postgres_changes entry of one joined channel."""

    channel: Subscriber
    id: int  # the integer the client pairs with its binding (docs/protocol.md §3.4, §6.6)
    subscription_id: uuid.UUID
    params: SubscriptionParams
    legacy: bool = False  # joined without `config` (docs/protocol.md §6.7)
    # WAL insert position when the subscription went live: only transactions
    # committed at or after it are delivered, so a stream re-reading older WAL
    # (after a restart) never hands a new subscriber what came before its
    # `Subscribed to PostgreSQL` message.
    start_lsn: int = 0
    raw_params: dict[str, Any] | None = None  # as the client sent them; kept in a cluster only (peers.py)
    _group_claims: dict[str, Any] | None = field(default=None, repr=False)
    _group_key: str = field(default="", repr=False)

    def wants(self, change_type: str) -> bool:
        """Whether this subscription's event takes `change_type`."""
        event = self.params.event
        return event == "*" or event == change_type

    def live_at(self, commit_lsn: int) -> bool:
        """Whether a transaction committed at `commit_lsn` came after this subscription went live."""
        return commit_lsn >= self.start_lsn

    @property
    def claims(self) -> dict[str, Any]:
        return self.channel.claims

    @property
    def group_key(self) -> str:
        """Subscriptions with the same role and claims see the same rows (RLS is checked per group).

        Cached until the channel's claims change (an access_token refresh replaces them)."""
        claims = self.channel.claims
        if self._group_claims is not claims:
            self._group_claims = claims
            self._group_key = self.role + "\0" + orjson.dumps(claims, option=orjson.OPT_SORT_KEYS).decode()
        return self._group_key

    @property
    def role(self) -> str:
        role = self.channel.claims.get("role")
        return role if isinstance(role, str) else ""


class Registry:
    """Subscriptions of one database, indexed by (schema, table)."""

    __slots__ = ("_by_channel", "_by_id", "_exact", "_wildcard")

    def __init__(self) -> None:
        self._exact: dict[tuple[str, str], list[Subscription]] = {}
        self._wildcard: list[Subscription] = []
        self._by_channel: dict[Subscriber, list[Subscription]] = {}
        self._by_id: dict[str, Subscription] = {}  # by subscription_id text (a cluster leader names them so)

    def __len__(self) -> int:
        return sum(len(subs) for subs in self._by_channel.values())

    def channels(self) -> int:
        return len(self._by_channel)

    def add(self, subscriptions: Iterable[Subscription]) -> None:
        for sub in subscriptions:
            p = sub.params
            if p.schema == "*" or p.table == "*":
                self._wildcard.append(sub)
            else:
                self._exact.setdefault((p.schema, p.table), []).append(sub)
            self._by_channel.setdefault(sub.channel, []).append(sub)
            self._by_id[str(sub.subscription_id)] = sub

    def remove_channel(self, channel: Subscriber) -> list[Subscription]:
        """Forget every subscription of `channel`; return them (their rows are to be deleted)."""
        subs = self._by_channel.pop(channel, [])
        if not subs:
            return subs
        gone = {id(s) for s in subs}
        for sub in subs:
            self._by_id.pop(str(sub.subscription_id), None)
            p = sub.params
            if p.schema == "*" or p.table == "*":
                continue
            key = (p.schema, p.table)
            remaining = [s for s in self._exact.get(key, ()) if id(s) not in gone]
            if remaining:
                self._exact[key] = remaining
            else:
                self._exact.pop(key, None)
        if any(s.params.schema == "*" or s.params.table == "*" for s in subs):
            self._wildcard = [s for s in self._wildcard if id(s) not in gone]
        return subs

    def get(self, subscription_id: str) -> Subscription | None:
        """The live subscription with this subscription_id (its text), if any."""
        return self._by_id.get(subscription_id)

    def by_channel(self) -> list[list[Subscription]]:
        """The subscriptions of each channel."""
        return list(self._by_channel.values())

    def for_channel(self, channel: Subscriber) -> list[Subscription]:
        return list(self._by_channel.get(channel, ()))

    def for_relation(self, schema: str, table: str) -> list[Subscription]:
        """Every subscription that may want changes of schema.table."""
        exact = self._exact.get((schema, table))
        if not self._wildcard:
            return exact or []
        wild = [
            s
            for s in self._wildcard
            if (s.params.schema == "*" or s.params.schema == schema)
            and (s.params.table == "*" or s.params.table == table)
        ]
        return (exact or []) + wild if wild else exact or []


def _condition_term(c: Condition) -> tuple[str, str, str]:
    return (c.column, f"not.{c.op}" if c.negate else c.op, c.stored_value)


def describe_params(p: SubscriptionParams) -> str:
    """The params as upstream logs them in its error texts (an Elixir keyword list)."""
    # Lists go through inspect/1 upstream, so their strings are escaped ("a\"b").
    filters = elixir_inspect([_condition_term(c) for c in p.filters])
    select = "nil" if p.select is None else elixir_inspect(list(p.select))
    return f"[event: {p.event}, schema: {p.schema}, table: {p.table}, filters: {filters}, select: {select}]"
