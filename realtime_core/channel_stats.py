"""Per-stream message statistics: messages accepted and deliveries queued, by kind, with their
rate over the last minute, for the admin API's channel views (admin/channels.py) and the time
series (timeseries.py).

app.py appends one ChannelStats to `hub.observers`. The hub calls accepted() once per message
a sender got accepted and delivered() once per publication after its fan-out: each does a
few dictionary increments, nothing per receiver. A stream's statistics are created at its
first message and dropped by prune() once it has had no subscriber and no message for a
while, so memory follows the streams in use."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from typing import TYPE_CHECKING

from .hub import KINDS, Clock, Publication, StreamKey, Subscriber

if TYPE_CHECKING:
    from .tenants import Tenant

__all__ = ["ChannelStats", "StreamStats"]

WINDOW_S = 60  # the rates are over the last minute
IDLE_DROP_S = 300  # a stream without subscribers or messages this long loses its statistics
_PREFIX_LEN = len("realtime:")


class StreamStats:
    """One stream's totals by kind, and per-second buckets of the last minute."""

    __slots__ = ("_bucket_in", "_bucket_out", "accepted", "delivered", "history", "last_at", "publications")

    def __init__(self, second: int) -> None:
        self.accepted: dict[str, int] = {}  # kind → messages accepted from senders
        self.delivered: dict[str, int] = {}  # kind → frames queued on receivers
        self.publications = 0  # publications fanned out (a fan-out's denominator)
        self.last_at = second  # the second the current buckets count (the stream's last message)
        self._bucket_in: dict[str, int] = {}
        self._bucket_out: dict[str, int] = {}
        # Completed seconds, oldest first: (second, accepted by kind, delivered by kind).
        self.history: deque[tuple[int, dict[str, int], dict[str, int]]] = deque(maxlen=WINDOW_S)

    def _roll(self, second: int) -> None:
        """Close the current second's buckets (when they hold anything) and start `second`'s."""
        if self._bucket_in or self._bucket_out:
            self.history.append((self.last_at, self._bucket_in, self._bucket_out))
            self._bucket_in, self._bucket_out = {}, {}
        self.last_at = second

    def add_in(self, kind: str, count: int, second: int) -> None:
        if second != self.last_at:
            self._roll(second)
        self.accepted[kind] = self.accepted.get(kind, 0) + count
        self._bucket_in[kind] = self._bucket_in.get(kind, 0) + count

    def add_out(self, kind: str, count: int, second: int) -> None:
        if second != self.last_at:
            self._roll(second)
        self.publications += 1
        self.delivered[kind] = self.delivered.get(kind, 0) + count
        self._bucket_out[kind] = self._bucket_out.get(kind, 0) + count

    def rates(self, second: int) -> tuple[dict[str, float], dict[str, float]]:
        """(accepted, delivered) per second by kind, averaged over the last WINDOW_S seconds."""
        ins = dict.fromkeys(KINDS, 0.0)
        outs = dict.fromkeys(KINDS, 0.0)
        since = second - WINDOW_S
        buckets = [*self.history, (self.last_at, self._bucket_in, self._bucket_out)]
        for at, bucket_in, bucket_out in buckets:
            if at <= since or at > second:
                continue
            for kind, n in bucket_in.items():
                ins[kind] = ins.get(kind, 0.0) + n
            for kind, n in bucket_out.items():
                outs[kind] = outs.get(kind, 0.0) + n
        return (
            {k: round(v / WINDOW_S, 3) for k, v in ins.items()},
            {k: round(v / WINDOW_S, 3) for k, v in outs.items()},
        )


class ChannelStats:
    """A hub DeliveryObserver counting per stream, plus per-tenant totals by kind."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.streams: dict[StreamKey, StreamStats] = {}
        # The same statistics by (tenant id, private, wire topic): delivered() finds a stream
        # without making a StreamKey (a NamedTuple took ~0.4 µs to make, a tuple ~0.05 µs).
        self._by_topic: dict[tuple[str, bool, str], StreamStats] = {}
        # tenant → kind → total (what the time series sample every second)
        self.accepted_totals: dict[str, dict[str, int]] = {}
        self.delivered_totals: dict[str, dict[str, int]] = {}

    def _new(self, key: StreamKey, second: int) -> StreamStats:
        stats = self.streams[key] = StreamStats(second)
        self._by_topic[(key.tenant, key.private, "realtime:" + key.sub_topic)] = stats
        return stats

    def accepted(self, tenant: Tenant, kind: str, key: StreamKey, count: int) -> None:
        second = int(self.clock())
        stats = self.streams.get(key) or self._new(key, second)
        stats.add_in(kind, count, second)
        totals = self.accepted_totals.get(key.tenant)
        if totals is None:
            totals = self.accepted_totals[key.tenant] = {}
        totals[kind] = totals.get(kind, 0) + count

    def delivered(
        self, tenant: Tenant, publication: Publication, subs: Iterable[Subscriber], count: int, nbytes: int
    ) -> None:
        # The stream from the topic and one receiver's private flag: every receiver of one
        # publication has the same topic; public and private receivers of a topic are offered
        # separate publications except by Postgres Changes, which are counted under the first.
        private = False
        for sub in subs:
            private = sub.private
            break
        tid = tenant.external_id
        second = int(self.clock())
        stats = self._by_topic.get((tid, private, publication.topic))
        if stats is None:
            stats = self._new(StreamKey(tid, private, publication.topic[_PREFIX_LEN:]), second)
        kind = publication.kind
        stats.add_out(kind, count, second)
        totals = self.delivered_totals.get(tid)
        if totals is None:
            totals = self.delivered_totals[tid] = {}
        totals[kind] = totals.get(kind, 0) + count

    def sent(self, tenant: Tenant, kind: str, key: StreamKey, subscriber: Subscriber, count: int, nbytes: int) -> None:
        """Frames sent to one subscriber outside a fan-out (a join's presence_state, a replay):
        deliveries of the stream like any other."""
        second = int(self.clock())
        stats = self.streams.get(key) or self._new(key, second)
        stats.add_out(kind, count, second)
        totals = self.delivered_totals.get(key.tenant)
        if totals is None:
            totals = self.delivered_totals[key.tenant] = {}
        totals[kind] = totals.get(kind, 0) + count

    def of(self, key: StreamKey) -> StreamStats | None:
        return self.streams.get(key)

    def prune(self, live: Iterable[StreamKey]) -> None:
        """Drop the statistics of streams not in `live` that had no message for IDLE_DROP_S."""
        keep = set(live)
        limit = int(self.clock()) - IDLE_DROP_S
        for key in [k for k, s in self.streams.items() if s.last_at < limit and k not in keep]:
            self._drop(key)

    def forget_tenant(self, tenant: str) -> None:
        self.accepted_totals.pop(tenant, None)
        self.delivered_totals.pop(tenant, None)
        for key in [k for k in self.streams if k.tenant == tenant]:
            self._drop(key)

    def _drop(self, key: StreamKey) -> None:
        del self.streams[key]
        del self._by_topic[(key.tenant, key.private, "realtime:" + key.sub_topic)]
