"""Per-stream message statistics: messages accepted and deliveries queued, by kind, with their
rate over the last minute, for the admin API's channel views (admin/channels.py) and the time
series (timeseries.py).

app.py attaches one ChannelStats to the hub (a hub.TallyReader): the hub counts per stream,
kind and second of its clock, and hands its tallies over once a second and before every read
here, so the per-second buckets hold what each second delivered. A stream's statistics are
created at its first message and dropped by prune() once it has had no subscriber and no
message for a while, so memory follows the streams in use."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable

from .hub import KINDS, Clock, StreamKey, Tallies

__all__ = ["ChannelStats", "StreamStats"]

WINDOW_S = 60  # the rates are over the last minute
IDLE_DROP_S = 300  # a stream without subscribers or messages this long loses its statistics


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

    def add_out(self, kind: str, count: int, second: int, publications: int = 1) -> None:
        if second != self.last_at:
            self._roll(second)
        self.publications += publications
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
    """A hub TallyReader counting per stream, plus per-tenant totals by kind. Frames sent to one
    subscriber outside a fan-out (a join's presence_state, a replay) are deliveries of the
    stream like any other."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.settle: Callable[[], None] = _nothing  # Hub.attach() sets it
        self._streams: dict[StreamKey, StreamStats] = {}
        # tenant → kind → total (what the time series sample every second)
        self._accepted_totals: dict[str, dict[str, int]] = {}
        self._delivered_totals: dict[str, dict[str, int]] = {}

    @property
    def streams(self) -> dict[StreamKey, StreamStats]:
        self.settle()
        return self._streams

    @property
    def accepted_totals(self) -> dict[str, dict[str, int]]:
        """tenant → kind → messages accepted from senders."""
        self.settle()
        return self._accepted_totals

    @property
    def delivered_totals(self) -> dict[str, dict[str, int]]:
        """tenant → kind → frames queued on receivers."""
        self.settle()
        return self._delivered_totals

    def absorb(self, tallies: Tallies, second: int, now: float) -> None:
        for (key, kind), tally in tallies.items():
            stats = self._streams.get(key)
            if stats is None:
                stats = self._streams[key] = StreamStats(second)
            if tally.accepted:
                stats.add_in(kind, tally.accepted, second)
                _add(self._accepted_totals, key.tenant, kind, tally.accepted)
            publications = tally.publications + tally.sends
            if publications:
                count = tally.deliveries + tally.sent
                stats.add_out(kind, count, second, publications)
                _add(self._delivered_totals, key.tenant, kind, count)

    def of(self, key: StreamKey) -> StreamStats | None:
        self.settle()
        return self._streams.get(key)

    def prune(self, live: Iterable[StreamKey]) -> None:
        """Drop the statistics of streams not in `live` that had no message for IDLE_DROP_S."""
        self.settle()
        keep = set(live)
        limit = int(self.clock()) - IDLE_DROP_S
        for key in [k for k, s in self._streams.items() if s.last_at < limit and k not in keep]:
            del self._streams[key]

    def forget_tenant(self, tenant: str) -> None:
        self.settle()
        self._accepted_totals.pop(tenant, None)
        self._delivered_totals.pop(tenant, None)
        for key in [k for k in self._streams if k.tenant == tenant]:
            del self._streams[key]


def _add(totals: dict[str, dict[str, int]], tenant: str, kind: str, count: int) -> None:
    by_kind = totals.get(tenant)
    if by_kind is None:
        by_kind = totals[tenant] = {}
    by_kind[kind] = by_kind.get(kind, 0) + count


def _nothing() -> None:
    """A reader's settle() until Hub.attach() sets it."""
