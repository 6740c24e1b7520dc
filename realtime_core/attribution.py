"""Cost attribution: messages and egress bytes per topic, per client library and version, and
per role, by tenant and UTC day, with what each costs at overage prices.

Topics are counted where usage is metered (usage.UsageMeter calls topic() once per publication,
never per receiver). Clients and roles are read from the connections' own counters
(net/websocket.py's bytes_out and messages_out, the socket's protocol frames and accepted
messages): an open connection contributes what it did since the start of the day (or its
connect), a closed one what it had done when it closed (closed()), and at each new day the
open ones leave what they did on the day before (roll()). REST requests count under the client
and role of their request (rest()).

Exact up to EXACT_TOPICS distinct topics per tenant and day. Past that, a topic table keeps the
EXACT_TOPICS topics of highest cost by the Space-Saving algorithm (Metwally, Agrawal and El
Abbadi, "Efficient computation of frequent and top-k elements in data streams", 2005), weighted by
cost: a topic entering the table replaces the one of lowest cost, whose counts move to `other`,
so the rows and `other` always add up to the tenant's totals exactly. Each row carries its
error: what its topic may have cost before it entered the table, at most the lowest cost in the
table when it entered, never more than total cost / EXACT_TOPICS; every topic that cost more
than that bound is in the table. Memory: at most EXACT_TOPICS rows per tenant and day, for
DAYS_KEPT days. Written here rather than taken from a library: the sketches on PyPI
(datasketches' frequent_strings_sketch, bounter) keep one weight per item, and each row needs
two counts (messages and bytes) that move to `other` whole when the row is replaced."""

from __future__ import annotations

import heapq
from collections.abc import Iterable
from typing import Any, Protocol

from .plans import Plan

__all__ = [
    "DAYS_KEPT",
    "EXACT_TOPICS",
    "MAX_CLIENT_ROWS",
    "OTHER",
    "POSTGRES_CHANGES_SLOT",
    "PRESENCE_SLOT",
    "PRESENCE_STATE_SLOT",
    "REST_TOPIC",
    "SOCKET_TOPIC",
    "AttributedSocket",
    "Attribution",
    "TopicTable",
    "client_library",
    "usd",
    "weight_usd",
]

EXACT_TOPICS = 10_000
# Client names and roles come from what clients send: past this many per tenant and day, a new
# one is counted under OTHER, so memory stays bounded.
MAX_CLIENT_ROWS = 1_000
OTHER = "(other)"
_NAME_MAX = 100  # characters kept of a client's library name or version
DAYS_KEPT = 32  # a billing cycle's days and today
# The rows of egress that is not a channel's: the socket's own frames outside any channel
# (heartbeat replies, the HTTP 101, pongs, close frames, replies to unjoined topics), REST responses.
SOCKET_TOPIC = "phoenix"
REST_TOPIC = "(rest responses)"
# Cost weights in units of 10^-11 USD, integers so a weight is exact: a message at $2.50 per
# million is 250,000 units, a byte at $0.09 per 10^9 is 9.
_MESSAGE_WEIGHT = 250_000
_BYTE_WEIGHT = 9
_WEIGHT_USD = 1e-11


def client_library(info: str | None, user_agent: str | None) -> tuple[str | None, str | None]:
    """(library, version) from what a client tells: `x-client-info` or realtime-js's join
    `version` ("realtime-js/2.119.1": its first product token), else the User-Agent, whose
    last product token names the library ("Python/3.11 websockets/15.0.1")."""
    if info:
        product = info.split()[0] if info.split() else ""
    elif user_agent:
        product = user_agent.split()[-1] if user_agent.split() else ""
    else:
        return None, None
    name, _, version = product.partition("/")
    return name[:_NAME_MAX] or None, version[:_NAME_MAX] or None


def usd(plan: Plan, messages: int, nbytes: int) -> float:
    """The marginal cost of `messages` and `nbytes` of egress at `plan`'s overage prices."""
    per_message = plan.message_package_usd / plan.message_package_size
    per_byte = plan.egress_usd_per_gb / 1e9
    return messages * per_message + nbytes * per_byte


# Where a row keeps the part of its messages and bytes that advice looks at (admin/egress_api.py):
# presence diffs and tracks, the presence_state sent at joins, Postgres Changes.
PRESENCE_SLOT = 4
PRESENCE_STATE_SLOT = 6
POSTGRES_CHANGES_SLOT = 8
_ROW = 10


class TopicTable:
    """Messages and bytes per (topic, private) of one tenant and day; Space-Saving past `capacity`.

    A row is [messages, bytes, weight, error, then messages and bytes at each *_SLOT]: weight
    is its cost in 10^-11 USD since it entered plus `error`, the weight it was given on entering
    (Space-Saving's estimate)."""

    __slots__ = ("_by_flag", "_heap", "capacity", "other", "rows", "total_weight")

    def __init__(self, capacity: int = EXACT_TOPICS) -> None:
        self.capacity = capacity
        self.rows: dict[tuple[str, bool], list[int]] = {}
        # The same rows by private flag, then topic: add() looks a row up without making a key.
        self._by_flag: tuple[dict[str, list[int]], dict[str, list[int]]] = ({}, {})
        self.other = [0, 0]  # messages, bytes of the topics replaced
        self.total_weight = 0
        self._heap: list[tuple[int, tuple[str, bool]]] | None = None  # built when the table fills

    @property
    def exact(self) -> bool:
        """True while no topic was replaced: every row is exact, `other` is empty."""
        return self._heap is None or not (self.other[0] or self.other[1])

    def add(self, topic: str, private: bool, messages: int, nbytes: int, slot: int = 0) -> None:
        """Count `messages` and `nbytes` for the topic; also at `slot` (a *_SLOT) unless 0."""
        weight = messages * _MESSAGE_WEIGHT + nbytes * _BYTE_WEIGHT
        self.total_weight += weight
        row = self._by_flag[private].get(topic)
        if row is None:
            row = self._enter((topic, private), weight)
        row[0] += messages
        row[1] += nbytes
        row[2] += weight
        if slot:
            row[slot] += messages
            row[slot + 1] += nbytes

    def _enter(self, key: tuple[str, bool], weight: int) -> list[int]:
        """A new row for `key`, replacing the row of lowest weight when the table is full."""
        if len(self.rows) < self.capacity:
            row = self.rows[key] = self._by_flag[key[1]][key[0]] = [0] * _ROW
            return row
        heap = self._heap
        if heap is None:
            heap = self._heap = [(r[2], k) for k, r in self.rows.items()]
            heapq.heapify(heap)
        # The row of lowest weight: heap entries are lower bounds (weights only grow); one
        # that is stale goes back with its current weight, one that is current is the minimum.
        while True:
            low, low_key = heap[0]
            current = self.rows[low_key][2]
            if current == low:
                break
            heapq.heapreplace(heap, (current, low_key))
        low_row = self.rows.pop(low_key)
        del self._by_flag[low_key[1]][low_key[0]]
        self.other[0] += low_row[0]
        self.other[1] += low_row[1]
        row = self.rows[key] = self._by_flag[key[1]][key[0]] = [0] * _ROW
        row[2] = row[3] = low
        heapq.heapreplace(heap, (low + weight, key))
        return row

    def error_bound(self) -> int:
        """The most any row's counts may be below its topic's true cost, in weight units."""
        return max((row[3] for row in self.rows.values()), default=0)


class AttributedSocket(Protocol):
    """What attribution reads of a socket (socket.RealtimeSocket)."""

    claims: dict[str, Any]
    client_info: str | None
    user_agent: str | None
    accepted: int  # messages accepted from this socket (usage counts them)
    control_frames: int  # protocol frames it queued (counted in conn.messages_out, not messages)
    attributed: list[int]  # [epoch day, bytes, messages] already attributed (set by start())

    @property
    def tenant_id(self) -> str: ...

    def traffic(self) -> tuple[int, int]:
        """(bytes written, messages) since the connect."""
        ...


_Usage = dict[tuple[str | None, str | None], list[int]]  # key → [connections, messages, bytes]


class Attribution:
    """Per tenant and UTC day (epoch days): a TopicTable, and usage by client and by role."""

    def __init__(self, capacity: int = EXACT_TOPICS) -> None:
        self.capacity = capacity
        self._day = -1
        self._today: dict[str, TopicTable] = {}  # the hot path's lookup: tenant → today's table
        self.topics: dict[tuple[str, int], TopicTable] = {}
        self.clients: dict[tuple[str, int], _Usage] = {}
        self.roles: dict[tuple[str, int], _Usage] = {}

    def topic(
        self, tenant: str, topic: str, private: bool, messages: int, nbytes: int, hour: int, slot: int = 0
    ) -> None:
        """`messages` and `nbytes` for `topic` of `tenant` in epoch hour `hour` (also at `slot`)."""
        self.table(tenant, hour).add(topic, private, messages, nbytes, slot)

    def table(self, tenant: str, hour: int) -> TopicTable:
        """The topic table of `tenant` for the day of epoch hour `hour` (a caller may keep it for
        the rest of that hour)."""
        day = hour // 24
        if day != self._day:
            self._new_day(day)
        table = self._today.get(tenant)
        if table is None:
            table = self.topics.get((tenant, day))
            if table is None:
                table = self.topics[(tenant, day)] = TopicTable(self.capacity)
            self._today[tenant] = table
        return table

    def _new_day(self, day: int) -> None:
        self._day = day
        self._today = {}
        for key in [k for k in self.topics if k[1] <= day - DAYS_KEPT]:
            del self.topics[key]
        for store in (self.clients, self.roles):
            for key in [k for k in store if k[1] <= day - DAYS_KEPT]:
                del store[key]

    # Clients and roles

    def start(self, socket: AttributedSocket, day: int) -> None:
        """A socket connected on epoch day `day`: nothing of it is attributed yet."""
        socket.attributed = [day, 0, 0]

    def closed(self, socket: AttributedSocket) -> None:
        """A socket closed: what it did since it was last attributed goes to that day."""
        self._leave(socket, socket.attributed[0])

    def roll(self, sockets: Iterable[AttributedSocket], day: int) -> None:
        """A new day: each open socket's traffic so far goes to the day it was counted under."""
        for socket in sockets:
            attributed = getattr(socket, "attributed", None)
            if attributed is not None and attributed[0] < day:
                self._leave(socket, attributed[0])
                nbytes, messages = socket.traffic()
                socket.attributed = [day, nbytes, messages + socket.accepted - socket.control_frames]

    def _leave(self, socket: AttributedSocket, day: int) -> None:
        nbytes, messages = self.pending(socket)
        self._add(socket.tenant_id, day, _client_key(socket), _role(socket.claims), 1, messages, nbytes)

    def pending(self, socket: AttributedSocket) -> tuple[int, int]:
        """(bytes, messages) of `socket` not yet attributed to a day."""
        _, bytes_base, messages_base = socket.attributed
        nbytes, messages = socket.traffic()
        messages += socket.accepted - socket.control_frames
        return nbytes - bytes_base, messages - messages_base

    def rest(
        self,
        tenant: str,
        hour: int,
        client_info: str | None,
        user_agent: str | None,
        role: str | None,
        messages: int,
        nbytes: int,
    ) -> None:
        """A REST request: its accepted `messages` and its response's `nbytes`."""
        self._add(tenant, hour // 24, client_library(client_info, user_agent), role, 0, messages, nbytes)

    def _add(
        self,
        tenant: str,
        day: int,
        client: tuple[str | None, str | None],
        role: str | None,
        connections: int,
        messages: int,
        nbytes: int,
    ) -> None:
        for store, key in ((self.clients, client), (self.roles, (role, None))):
            rows = store.get((tenant, day))
            if rows is None:
                rows = store[(tenant, day)] = {}
            row = rows.get(key)
            if row is None and len(rows) >= MAX_CLIENT_ROWS:
                key = (OTHER, None)
                row = rows.get(key)
            if row is None:
                rows[key] = [connections, messages, nbytes]
            else:
                row[0] += connections
                row[1] += messages
                row[2] += nbytes

    def usage(
        self, tenant: str, days: Iterable[int], open_sockets: Iterable[AttributedSocket], today: int
    ) -> dict[str, Any]:
        """Topics, clients and roles of `tenant` over epoch `days`, with open sockets' traffic
        of `today` (when it is one of them): {"topics": {(topic, private): row (TopicTable's,
        weight summed, error the sum of the days')}, "other": [messages, bytes], "exact": bool,
        "error_weight": int, "total_weight": int, "clients": {(library, version): [connections,
        messages, bytes]}, "roles": {(role, None): [...]}}."""
        days = list(days)
        topics: dict[tuple[str, bool], list[int]] = {}
        other = [0, 0]
        exact = True
        error = total = 0
        clients: _Usage = {}
        roles: _Usage = {}
        for day in days:
            table = self.topics.get((tenant, day))
            if table is not None:
                exact = exact and table.exact
                error += table.error_bound()
                total += table.total_weight
                other[0] += table.other[0]
                other[1] += table.other[1]
                for key, row in table.rows.items():
                    into = topics.get(key)
                    if into is None:
                        topics[key] = list(row)
                    else:
                        for i in range(_ROW):
                            into[i] += row[i]
            for store, into_store in ((self.clients, clients), (self.roles, roles)):
                for key, row in store.get((tenant, day), {}).items():
                    into_row = into_store.setdefault(key, [0, 0, 0])
                    for i in range(3):
                        into_row[i] += row[i]
        if today in days:
            for socket in open_sockets:
                if socket.tenant_id != tenant:
                    continue
                nbytes, messages = self.pending(socket)
                for into_store, key in ((clients, _client_key(socket)), (roles, (_role(socket.claims), None))):
                    into_row = into_store.setdefault(key, [0, 0, 0])
                    into_row[0] += 1
                    into_row[1] += messages
                    into_row[2] += nbytes
        return {
            "topics": topics,
            "other": other,
            "exact": exact,
            "error_weight": error,
            "total_weight": total,
            "clients": clients,
            "roles": roles,
        }


def weight_usd(weight: int) -> float:
    """A cost weight (TopicTable) in USD."""
    return weight * _WEIGHT_USD


def _client_key(socket: AttributedSocket) -> tuple[str | None, str | None]:
    return client_library(socket.client_info, socket.user_agent)


def _role(claims: dict[str, Any]) -> str | None:
    role = claims.get("role")
    return role if isinstance(role, str) else None
