"""The in-memory statistics behind the admin API's channel, time-series and replication views
(realtime_core/channel_stats.py, timeseries.py, rowstats.py), driven through a real Hub with a
clock the test sets."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from fakes import make_tenant

from realtime_core.channel_stats import IDLE_DROP_S, ChannelStats
from realtime_core.hub import BROADCAST_KIND, PRESENCE_KIND, REST_KIND, Hub, Publication, StreamKey
from realtime_core.protocol import V2
from realtime_core.rowstats import PG_EPOCH_UNIX, RowStats
from realtime_core.timeseries import SERIES, TimeSeries


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Sub:
    """A joined subscriber whose connection records frames."""

    def __init__(self, private: bool = False) -> None:
        from realtime_core.hub import ChannelState

        self.codec = V2
        self.private = private
        self.reads_broadcast = self.reads_presence = True
        self.replayed = None
        self.claims: dict[str, Any] = {"role": "anon"}
        self.state = ChannelState.JOINED
        self.frames: list[bytes] = []
        self.conn = SimpleNamespace(send=self.frames.append)


def setup(private: bool = False, receivers: int = 3) -> tuple[Hub, ChannelStats, Clock, StreamKey, Any]:
    clock = Clock()
    hub = Hub(clock)
    stats = ChannelStats(clock)
    hub.attach(stats)
    tenant = make_tenant()
    key = StreamKey(tenant.external_id, private, "room")
    for _ in range(receivers):
        hub.subscribe(key, Sub(private))  # type: ignore[arg-type]
    return hub, stats, clock, key, tenant


def test_deliveries_and_messages_are_counted_per_stream_and_kind():
    hub, stats, clock, key, tenant = setup()
    hub.accepted(tenant, BROADCAST_KIND, key, 2)
    hub.publish(tenant, key, Publication("realtime:room", "broadcast", b"{}"), clock.now)
    hub.publish(tenant, key, Publication("realtime:room", "broadcast", b"{}", kind=REST_KIND), clock.now)
    stream = stats.of(key)
    assert stream is not None
    assert stream.accepted == {BROADCAST_KIND: 2}
    assert stream.delivered == {BROADCAST_KIND: 3, REST_KIND: 3}
    assert stream.publications == 2
    assert stats.delivered_totals[key.tenant] == {BROADCAST_KIND: 3, REST_KIND: 3}
    assert stats.accepted_totals[key.tenant] == {BROADCAST_KIND: 2}


def test_a_private_stream_is_told_apart_by_its_receivers():
    hub, stats, clock, key, tenant = setup(private=True)
    hub.publish(tenant, key, Publication("realtime:room", "broadcast", b"{}"), clock.now)
    assert stats.of(key) is not None and stats.of(key._replace(private=False)) is None


def test_rates_cover_the_last_minute_only():
    hub, stats, clock, key, tenant = setup(receivers=1)
    for _ in range(30):  # one delivery a second for 30 s
        hub.publish(tenant, key, Publication("realtime:room", "presence_diff", b"{}", kind=PRESENCE_KIND), clock.now)
        clock.now += 1
    first = int(clock.now) - 30
    stream = stats.of(key)
    assert stream is not None
    _, out = stream.rates(int(clock.now))
    assert out[PRESENCE_KIND] == round(30 / 60, 3)
    clock.now = first + 74  # the minute (now - 60, now] holds seconds first+15 … first+29 of the 30
    _, out = stream.rates(int(clock.now))
    assert out[PRESENCE_KIND] == round(15 / 60, 3)
    assert stream.delivered[PRESENCE_KIND] == 30  # totals are kept


def test_idle_streams_without_subscribers_are_dropped():
    hub, stats, clock, key, tenant = setup(receivers=1)
    hub.publish(tenant, key, Publication("realtime:room", "broadcast", b"{}"), clock.now)
    clock.now += IDLE_DROP_S + 1
    stats.prune([key])  # still subscribed: kept
    assert stats.of(key) is not None
    stats.prune([])
    assert stats.of(key) is None


def test_time_series_turn_counters_into_per_second_values_and_minutes_into_averages():
    hub, stats, clock, key, tenant = setup(receivers=2)
    series = TimeSeries()
    source = SimpleNamespace(
        tenants=[tenant],
        sockets=[SimpleNamespace(tenant=tenant)],
        hub=hub,
        channel_stats=stats,
        services={},
        metrics=SimpleNamespace(),
    )
    start = 60 * 1000  # the start of a minute
    for second in range(61):
        if second < 10:
            hub.publish(tenant, key, Publication("realtime:room", "broadcast", b"{}"), clock.now)
        series.sample(source, start + second)  # type: ignore[arg-type]
    window = series.window(tenant.external_id, ["deliveries.broadcast", "joins", "connections"], "1m")
    assert window["step_seconds"] == 1 and window["count"] == 60 and window["end"] == start + 60
    values = window["series"]["deliveries.broadcast"]
    assert sum(values) == 2 * 9  # the first second of the 61 fell out of the 1m window
    assert window["series"]["connections"] == [1] * 60
    hour = series.window(tenant.external_id, list(SERIES), "1h")
    assert hour["step_seconds"] == 60 and hour["count"] == 1
    assert hour["series"]["deliveries.broadcast"] == [round(2 * 10 / 60, 3)]
    assert hour["series"]["joins"] == [round(2 / 60, 3)]


def test_row_statistics_percentiles_and_skips():
    rows = RowStats()
    assert rows.percentiles() == {"p50": None, "p99": None}
    now = PG_EPOCH_UNIX + 100.0
    for ms in range(1, 101):
        rows.dispatched_at(int((100.0 - ms / 1000) * 1_000_000), now)
    rows.skip("filtered")
    rows.skip("filtered")
    p = rows.percentiles()
    assert p["p50"] == pytest.approx(50.0, abs=0.01) and p["p99"] == pytest.approx(99.0, abs=0.01)
    assert rows.skipped == {"filtered": 2}
    assert rows.last_latency_ms == pytest.approx(100.0, abs=0.01)


def test_errors_get_a_series_per_code_from_their_first_error_on():
    hub, stats, _, _, tenant = setup()
    refused: dict[tuple[str, str], int] = {}
    source = SimpleNamespace(
        tenants=[tenant],
        sockets=[],
        hub=hub,
        channel_stats=stats,
        services={},
        metrics=SimpleNamespace(channel_errors=refused),
    )
    series = TimeSeries()
    series.sample(source, 6000)  # type: ignore[arg-type]
    refused[(tenant.external_id, "Unauthorized")] = 2
    refused[("another-tenant", "Unauthorized")] = 5
    series.sample(source, 6001)  # type: ignore[arg-type]
    refused[(tenant.external_id, "Unauthorized")] = 3
    refused[(tenant.external_id, "TooManyJoins")] = 1
    series.sample(source, 6002)  # type: ignore[arg-type]
    names = ["errors", "errors.Unauthorized", "errors.TooManyJoins", "errors.NeverSeen"]
    window = series.window(tenant.external_id, names, "1m")
    assert window["series"] == {
        "errors": [0, 2, 2],
        "errors.Unauthorized": [0, 2, 1],
        "errors.TooManyJoins": [0, 0, 1],
        "errors.NeverSeen": [0, 0, 0],
    }
    assert {"errors.Unauthorized", "errors.TooManyJoins"} <= set(series.names(tenant.external_id))
