"""incidents.py: the bounded ring of recent errors per tenant and the counts per code per minute."""

from __future__ import annotations

from realtime_core.incidents import MINUTES, RING_SIZE, Incidents, shutdown_code


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_recent_is_newest_first_and_per_tenant():
    clock = Clock()
    incidents = Incidents(clock)
    incidents.record("a", "Unauthorized", "Unauthorized: no", "realtime:room", "conn1")
    clock.now += 1
    incidents.record("a", "ChannelShutdown", "bye")
    incidents.record("b", "MissingAPIKey", "API key is missing")
    assert [i["code"] for i in incidents.recent("a")] == ["ChannelShutdown", "Unauthorized"]
    assert incidents.recent("a")[1] == {
        "at": 1_000_000.0,
        "code": "Unauthorized",
        "reason": "Unauthorized: no",
        "topic": "realtime:room",
        "connection": "conn1",
    }
    assert [i["code"] for i in incidents.recent("b")] == ["MissingAPIKey"]
    assert incidents.recent("c") == [] and incidents.counts("c") == ({}, [])


def test_the_ring_is_bounded_and_totals_count_everything():
    incidents = Incidents(Clock())
    for i in range(RING_SIZE + 5):
        incidents.record("a", "X", str(i))
    recent = incidents.recent("a")
    assert len(recent) == RING_SIZE and recent[0]["reason"] == str(RING_SIZE + 4)
    assert incidents.counts("a")[0] == {"X": RING_SIZE + 5}


def test_counts_per_minute_cover_the_last_hour():
    clock = Clock(60 * 1000)
    incidents = Incidents(clock)
    incidents.record("a", "X", "")
    incidents.record("a", "Y", "")
    clock.now += 60
    incidents.record("a", "X", "")
    totals, minutes = incidents.counts("a")
    assert totals == {"X": 2, "Y": 1}
    assert minutes == [(1000, {"X": 1, "Y": 1}), (1001, {"X": 1})]
    clock.now += 60 * MINUTES
    assert incidents.counts("a")[1] == []  # older than an hour
    incidents.forget("a")
    assert incidents.recent("a") == []


def test_shutdown_texts_map_to_upstreams_rate_limit_codes():
    assert shutdown_code("Too many messages per second") == "MessagePerSecondRateLimitReached"
    assert shutdown_code("Client presence rate limit exceeded") == "ClientPresenceRateLimitReached"
    assert shutdown_code("Too many presence messages per second") == "PresenceRateLimitReached"
    assert shutdown_code("Track message size exceeded") == "ChannelShutdown"
