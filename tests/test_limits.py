"""Tests for realtime_core.limits: rate counters of docs/protocol.md §9.2 and the presence window
of docs/protocol.md §5.3.

Every test passes `now` explicitly: the counters never read a clock."""

from __future__ import annotations

from realtime_core.limits import BUCKET_SECONDS, WINDOW_BUCKETS, RateCounter, WindowCounter

START = 1_000.0  # an arbitrary monotonic time, far from zero


def tick(n: int) -> float:
    """The time `n` whole buckets after START."""
    return START + n * BUCKET_SECONDS


class TestRateCounterAverage:
    """docs/protocol.md §9.2: counters tick every 5 s; avg = sum of buckets / number of buckets / 5."""

    def test_buckets_are_five_seconds_and_the_window_twelve(self):
        assert BUCKET_SECONDS == 5.0
        assert WINDOW_BUCKETS == 12

    def test_no_average_before_the_first_tick(self):
        counter = RateCounter(START)
        counter.add(100, START)
        counter.add(100, START + 4.9)
        assert counter.average(START + 4.9) == 0.0

    def test_the_first_tick_publishes_the_current_bucket(self):
        counter = RateCounter(START)
        counter.add(50, START + 1)
        assert counter.average(tick(1)) == 50 / 1 / 5

    def test_average_divides_by_the_buckets_seen_so_far(self):
        counter = RateCounter(START)
        counter.add(10, START)
        counter.add(20, tick(1))
        counter.add(30, tick(2))
        assert counter.average(tick(3)) == (10 + 20 + 30) / 3 / 5

    def test_events_in_the_current_bucket_do_not_count_until_it_ends(self):
        counter = RateCounter(START)
        counter.add(10, START)
        counter.add(1_000, tick(1) + 1)
        assert counter.average(tick(1) + 4) == 10 / 1 / 5
        assert counter.average(tick(2)) == (10 + 1_000) / 2 / 5

    def test_empty_buckets_lower_the_average(self):
        counter = RateCounter(START)
        counter.add(60, START)
        assert counter.average(tick(1)) == 12.0
        assert counter.average(tick(3)) == 60 / 3 / 5

    def test_reading_the_average_twice_does_not_change_it(self):
        counter = RateCounter(START)
        counter.add(25, START)
        assert counter.average(tick(1)) == counter.average(tick(1) + 2) == 5.0


class TestRateCounterWindow:
    """docs/protocol.md §9.2: 12 buckets, i.e. events per second over up to the last 60 s."""

    def test_a_bucket_stays_in_the_window_for_twelve_ticks(self):
        counter = RateCounter(START)
        counter.add(120, START)
        assert counter.average(tick(12)) == 120 / 12 / 5

    def test_the_oldest_bucket_leaves_at_the_thirteenth_tick(self):
        counter = RateCounter(START)
        counter.add(120, START)
        counter.add(60, tick(1))
        assert counter.average(tick(13)) == 60 / 12 / 5

    def test_the_window_slides_one_bucket_per_tick(self):
        counter = RateCounter(START)
        for n in range(20):
            counter.add(n, tick(n))  # bucket n holds n events
        # At tick 20 the finished buckets are 8..19.
        assert counter.average(tick(20)) == sum(range(8, 20)) / 12 / 5

    def test_a_long_idle_gap_resets_the_average(self):
        counter = RateCounter(START)
        for n in range(12):
            counter.add(1_000, tick(n))
        assert counter.average(tick(12)) == 200.0
        assert counter.average(tick(12) + 3_600) == 0.0

    def test_a_gap_of_exactly_the_window_keeps_only_empty_buckets(self):
        counter = RateCounter(START)
        counter.add(500, START)
        counter.add(500, tick(1))
        assert counter.average(tick(14)) == 0.0

    def test_counting_resumes_after_an_idle_gap(self):
        counter = RateCounter(START)
        counter.add(1_000, START)
        counter.add(60, tick(100))
        assert counter.average(tick(101)) == 60 / 12 / 5

    def test_a_gap_that_is_not_a_whole_number_of_buckets_keeps_the_bucket_grid(self):
        counter = RateCounter(START)
        counter.add(5, START + 7.5)  # in the bucket [tick(1), tick(2))
        assert counter.average(tick(2) - 0.1) == 0.0
        assert counter.average(tick(2)) == 5 / 2 / 5


class TestRateCounterReached:
    """docs/protocol.md §9.2: a limit triggers when avg ≥ value and clears when avg < value."""

    def test_not_reached_below_the_limit(self):
        counter = RateCounter(START)
        counter.add(49, START)  # 9.8 events/s
        assert not counter.reached(10, tick(1))

    def test_reached_at_exactly_the_limit(self):
        counter = RateCounter(START)
        counter.add(50, START)  # 10 events/s
        assert counter.reached(10, tick(1))

    def test_reached_above_the_limit(self):
        counter = RateCounter(START)
        counter.add(500, START)
        assert counter.reached(10, tick(1))

    def test_clears_once_the_average_falls_below(self):
        counter = RateCounter(START)
        counter.add(100, START)  # 20/s over one bucket
        assert counter.reached(10, tick(1))
        assert counter.reached(10, tick(2))  # 100 / 2 / 5 = 10
        assert not counter.reached(10, tick(3))  # 100 / 3 / 5 ≈ 6.7

    def test_never_reached_before_the_first_tick(self):
        counter = RateCounter(START)
        counter.add(1_000_000, START)
        assert not counter.reached(1, START + 4)


class TestWindowCounter:
    """docs/protocol.md §5.3: at most N calls per window; the window starts at the first call."""

    def test_n_calls_are_allowed_and_the_next_is_refused(self):
        window = WindowCounter()
        assert [window.allow(5, 30.0, START + n) for n in range(6)] == [True] * 5 + [False]

    def test_the_window_starts_at_the_first_call_not_at_creation(self):
        window = WindowCounter()
        assert window.allow(1, 30.0, START + 100)
        # 30 s after creation would be a new window if it started at creation.
        assert not window.allow(1, 30.0, START + 129)

    def test_a_new_window_starts_once_the_old_one_expires(self):
        window = WindowCounter()
        for n in range(3):
            window.allow(3, 30.0, START + n)
        assert not window.allow(3, 30.0, START + 29.9)
        assert window.allow(3, 30.0, START + 30)
        assert window.allow(3, 30.0, START + 31)
        assert window.allow(3, 30.0, START + 32)
        assert not window.allow(3, 30.0, START + 33)

    def test_the_new_window_starts_at_the_call_that_opened_it(self):
        window = WindowCounter()
        window.allow(1, 10.0, START)
        assert window.allow(1, 10.0, START + 25)  # opens the window [25, 35)
        assert not window.allow(1, 10.0, START + 34)
        assert window.allow(1, 10.0, START + 35)

    def test_a_zero_limit_refuses_everything(self):
        window = WindowCounter()
        assert not window.allow(0, 30.0, START)
