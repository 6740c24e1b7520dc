"""Pure parts of realtime_core.postgres_changes.dispatch (the rest runs end to end in
tests/test_postgres_changes.py)."""

from __future__ import annotations

import uuid

import pytest

from realtime_core.hub import ChannelState
from realtime_core.postgres_changes.dispatch import Dispatcher, _by_frame, _visible_in
from realtime_core.postgres_changes.filters.parsing import parse_params
from realtime_core.postgres_changes.subscriptions import Registry, Subscription

EPOCH = 3 << 32  # xid8s of the third epoch


class TestVisibleIn:
    """Whether a committed transaction's 32-bit xid is visible to a pg_current_snapshot()."""

    def test_an_xid_before_xmin_is_visible(self):
        assert _visible_in(f"{EPOCH + 100}:{EPOCH + 110}:", 99)

    def test_an_xid_listed_in_progress_is_not_visible(self):
        assert not _visible_in(f"{EPOCH + 100}:{EPOCH + 110}:{EPOCH + 104},{EPOCH + 107}", 104)
        assert _visible_in(f"{EPOCH + 100}:{EPOCH + 110}:{EPOCH + 104},{EPOCH + 107}", 105)

    @pytest.mark.parametrize("xid", [110, 111, 5000])
    def test_the_newest_transaction_at_or_past_xmax_is_not_visible_yet(self, xid):
        # The commit that reached the walsender while the backend still finishes:
        # not completed, so not in xip either (the race that lost changes).
        assert not _visible_in(f"{EPOCH + 100}:{EPOCH + 110}:", xid)

    def test_an_xid_of_the_previous_epoch_is_visible(self):
        # xmax just wrapped into a new epoch; the xid is from just before the wrap.
        assert _visible_in(f"{EPOCH + 5}:{EPOCH + 10}:", 0xFFFFFFF0)

    def test_an_in_progress_xid_of_the_previous_epoch_is_not_visible(self):
        assert not _visible_in(f"{EPOCH - 20}:{EPOCH + 10}:{EPOCH - 16}", 0xFFFFFFF0)


class _Channel:
    def __init__(self, topic: str, state: ChannelState = ChannelState.JOINED) -> None:
        self.topic = topic
        self.state = state


class _Sub:
    def __init__(self, channel: _Channel, sub_id: int, legacy: bool = False) -> None:
        self.channel, self.id, self.legacy = channel, sub_id, legacy


def test_by_frame_groups_channels_whose_frames_are_the_same():
    a, b, c = _Channel("realtime:a"), _Channel("realtime:a"), _Channel("realtime:b")
    subs = [_Sub(a, 2), _Sub(a, 1), _Sub(b, 1), _Sub(b, 2), _Sub(c, 1, legacy=True)]
    assert _by_frame(subs) == [("realtime:a", (1, 2), False, [a, b]), ("realtime:b", (1,), True, [c])]  # type: ignore[arg-type]


def test_by_frame_leaves_out_channels_closed_while_the_batch_was_decided():
    """Hub.deliver takes joined subscribers only; a channel can close during the batch's awaits."""
    joined, closed = _Channel("realtime:a"), _Channel("realtime:a", ChannelState.CLOSED)
    assert _by_frame([_Sub(joined, 1), _Sub(closed, 1)]) == [("realtime:a", (1,), False, [joined])]  # type: ignore[arg-type]


class _Hub:
    """Records what Dispatcher hands to Hub.deliver: (topic, event, payload, channels)."""

    def __init__(self) -> None:
        self.frames: list[tuple[str, str, bytes, list[object]]] = []

    def deliver(self, tenant: object, batch: list, now: float) -> int:
        for channels, publication in batch:
            self.frames.append((publication.topic, publication.event, publication.payload, channels))
        return len(batch)


class TestDeliverPublished:
    """A cluster's leader publishes (commit LSN, type, [(data, subscription ids)]); each process
    builds its channels' frames and drops what it already delivered (a new leader re-reads)."""

    def setup_method(self) -> None:
        self.hub = _Hub()
        self.registry = Registry()
        self.dispatcher = Dispatcher(None, None, self.registry, self.hub, max_record_bytes=0, now=lambda: 0.0)  # type: ignore[arg-type]
        self.room = _Channel("realtime:room")
        params = parse_params({"event": "*", "schema": "public", "table": "t"})
        self.subs = [Subscription(self.room, i, uuid.uuid4(), params) for i in (7, 8)]  # type: ignore[arg-type]
        self.registry.add(self.subs)

    def ids(self, *indexes: int) -> list[str]:
        return [str(self.subs[i].subscription_id) for i in indexes]

    def test_one_frame_per_channel_with_the_ids_of_its_subscriptions_that_see_the_change(self):
        self.dispatcher.deliver_published([(100, "INSERT", [(b'{"r":1}', [*self.ids(0, 1), "unknown-id"])])])
        assert self.hub.frames == [("realtime:room", "postgres_changes", b'{"ids":[7,8],"data":{"r":1}}', [self.room])]

    def test_changes_at_or_below_the_last_delivered_commit_lsn_are_dropped(self):
        first = [(100, "INSERT", [(b"1", self.ids(0))]), (100, "UPDATE", [(b"2", self.ids(0))])]
        self.dispatcher.deliver_published(first)
        # A new leader re-reads from the confirmed LSN: the transaction at 100 again, then 200.
        self.dispatcher.deliver_published([*first, (200, "DELETE", [(b"3", self.ids(0))])])
        assert [frame[2] for frame in self.hub.frames] == [
            b'{"ids":[7],"data":1}',
            b'{"ids":[7],"data":2}',
            b'{"ids":[7],"data":3}',
        ]
        assert self.dispatcher.duplicates_dropped == 2
        assert self.dispatcher.delivered_lsn == 200
