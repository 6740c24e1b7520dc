"""Attribution's topic table (attribution.TopicTable): exact up to its capacity, then a
Space-Saving table whose rows and `other` add up to the totals, with its stated error bound
holding, in bounded memory; client names from what clients tell."""

from __future__ import annotations

import random
import sys

from realtime_core.attribution import (
    EXACT_TOPICS,
    MAX_CLIENT_ROWS,
    OTHER,
    PRESENCE_SLOT,
    Attribution,
    TopicTable,
    client_library,
    usd,
)
from realtime_core.plans import PLANS

MESSAGE, BYTE = 250_000, 9  # the table's cost weights (10^-11 USD)


def test_exact_below_the_capacity_and_the_slots_keep_their_share():
    table = TopicTable()
    table.add("room", False, 3, 300, PRESENCE_SLOT)
    table.add("room", False, 1, 50)
    table.add("room", True, 2, 10)
    assert table.exact
    assert table.rows[("room", False)][:2] == [4, 350]
    assert table.rows[("room", False)][PRESENCE_SLOT : PRESENCE_SLOT + 2] == [3, 300]
    assert table.rows[("room", True)][:2] == [2, 10]
    assert table.other == [0, 0] and table.error_bound() == 0


def test_100000_topics_stay_within_the_capacity_sum_exactly_and_respect_the_error_bound():
    rng = random.Random(15)
    table = TopicTable()
    truth: dict[str, list[int]] = {}
    # 100 heavy topics among 100,000 light ones, interleaved at random.
    events = [(f"heavy-{i}", 50, 5_000) for i in range(100) for _ in range(40)]
    events += [(f"light-{i}", 1, 100) for i in range(100_000)]
    rng.shuffle(events)
    for topic, messages, nbytes in events:
        table.add(topic, False, messages, nbytes)
        into = truth.setdefault(topic, [0, 0])
        into[0] += messages
        into[1] += nbytes
    assert len(table.rows) == EXACT_TOPICS
    assert len(table._heap or ()) == EXACT_TOPICS  # one heap entry per row: memory bounded
    assert not table.exact
    # Rows and `other` add up to the totals exactly.
    assert sum(r[0] for r in table.rows.values()) + table.other[0] == sum(m for m, _ in truth.values())
    assert sum(r[1] for r in table.rows.values()) + table.other[1] == sum(b for _, b in truth.values())
    total_weight = sum(m * MESSAGE + b * BYTE for m, b in truth.values())
    assert table.total_weight == total_weight
    bound = table.error_bound()
    assert bound <= total_weight / EXACT_TOPICS  # Space-Saving's guarantee
    for (topic, _), row in table.rows.items():
        m, b = truth[topic]
        true_weight = m * MESSAGE + b * BYTE
        counted = row[0] * MESSAGE + row[1] * BYTE
        assert counted <= true_weight <= counted + row[3] <= counted + bound
    # Every topic that cost more than the bound is listed: all the heavy ones.
    for topic, (m, b) in truth.items():
        if m * MESSAGE + b * BYTE > total_weight / EXACT_TOPICS:
            assert (topic, False) in table.rows
    assert all((f"heavy-{i}", False) in table.rows for i in range(100))
    # Each row is a fixed-size list: the table's size does not grow with the topics seen.
    assert sys.getsizeof(table.rows) < 2 * sys.getsizeof({i: i for i in range(EXACT_TOPICS)})


def test_usd_is_the_marginal_cost_at_overage_prices():
    pro = PLANS["pro"]
    assert usd(pro, 1_000_000, 0) == 2.5
    assert round(usd(pro, 0, 10**9), 9) == 0.09
    assert round(usd(PLANS["free"], 2_000_000, 2 * 10**9), 9) == 5.18


def test_client_library_from_what_the_client_tells():
    assert client_library("realtime-js/2.119.1", "Mozilla/5.0") == ("realtime-js", "2.119.1")
    assert client_library(None, "Python/3.11 websockets/15.0.1") == ("websockets", "15.0.1")
    assert client_library(None, None) == (None, None)
    assert client_library("   ", None) == (None, None)


def test_client_rows_are_bounded_whatever_clients_call_themselves():
    attribution = Attribution()
    for i in range(MAX_CLIENT_ROWS + 50):
        attribution.rest("t1", 0, f"lib-{i}/1.0", None, "anon", 1, 10)
    rows = attribution.clients[("t1", 0)]
    assert len(rows) == MAX_CLIENT_ROWS + 1
    assert rows[(OTHER, None)] == [0, 50, 500]
    assert sum(row[2] for row in rows.values()) == (MAX_CLIENT_ROWS + 50) * 10
    assert attribution.roles[("t1", 0)] == {("anon", None): [0, MAX_CLIENT_ROWS + 50, (MAX_CLIENT_ROWS + 50) * 10]}


class Socket:
    """What attribution reads of a socket: its own counters."""

    def __init__(self) -> None:
        self.claims = {"role": "authenticated"}
        self.client_info = "realtime-js/2.1.0"
        self.user_agent = None
        self.accepted = 0
        self.control_frames = 0
        self.attributed = [0, 0, 0]
        self.tenant_id = "t1"
        self.bytes_out = self.frames = 0

    def traffic(self) -> tuple[int, int]:
        return self.bytes_out, self.frames


def test_a_connection_open_across_midnight_leaves_each_day_its_own_traffic():
    attribution = Attribution()
    socket = Socket()
    attribution.start(socket, 100)
    socket.bytes_out, socket.frames, socket.control_frames, socket.accepted = 1_000, 12, 2, 3
    live = attribution.usage("t1", [100], [socket], 100)
    assert live["clients"] == {("realtime-js", "2.1.0"): [1, 12 - 2 + 3, 1_000]}
    attribution.roll([socket], 101)  # midnight: day 100 keeps what happened so far
    socket.bytes_out, socket.frames = 1_500, 20
    attribution.closed(socket)
    assert attribution.usage("t1", [100], [], 101)["clients"] == {("realtime-js", "2.1.0"): [1, 13, 1_000]}
    assert attribution.usage("t1", [101], [], 101)["roles"] == {("authenticated", None): [1, 8, 500]}
    both = attribution.usage("t1", [100, 101], [], 101)["clients"]
    assert both == {("realtime-js", "2.1.0"): [2, 21, 1_500]}  # a connection counts on each day it was open
