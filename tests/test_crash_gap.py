"""bench/crash_gap.py's accounting: each missing row goes to the crash whose window it was committed
in; rows missing outside every window, and duplicates, are errors."""

from __future__ import annotations

import argparse
from pathlib import Path

from bench.crash_gap import Crash, CrashGap


def bench_with(subscribed_at: list[float], kills: list[float], delivered: dict[int, int]) -> CrashGap:
    bench = CrashGap(argparse.Namespace(), Path("/nonexistent"))
    bench.subscribed_at = subscribed_at
    bench.crashes = [Crash(killed_at=at) for at in kills]
    bench.delivered = delivered
    return bench


def test_missing_rows_go_to_the_crash_window_they_were_committed_in():
    # Subscribed at 0; crash 1 killed at 10, resubscribed at 12; crash 2 killed at 20, resubscribed at 21.
    committed = [1.0, 9.5, 10.5, 11.5, 12.5, 19.0, 20.5, 22.0]  # row i + 1 committed at committed[i]
    delivered = {1: 1, 5: 1, 6: 1, 8: 1}  # 2 (before kill 1), 3, 4, 7 missing
    bench = bench_with([0.0, 12.0, 21.0], [10.0, 20.0], delivered)
    bench.classify(committed)
    first, second = bench.crashes
    assert (first.missing, first.missing_before_kill, first.first_missing_id, first.last_missing_id) == (3, 1, 2, 4)
    assert (second.missing, second.missing_before_kill, second.first_missing_id, second.last_missing_id) == (1, 0, 7, 7)
    assert bench.totals == {
        "committed": 8,
        "delivered_once": 4,
        "duplicated": 0,
        "missing": 4,
        "missing_outside_crash_windows": 0,
    }
    assert bench.errors == []


def test_rows_missing_after_the_last_resubscription_and_duplicates_are_errors():
    committed = [1.0, 2.0, 13.0, 14.0]
    bench = bench_with([0.0, 12.0], [10.0], {1: 1, 2: 2, 3: 1})
    bench.classify(committed)
    assert bench.totals["missing_outside_crash_windows"] == 1
    assert bench.totals["duplicated"] == 1
    assert bench.errors == [
        "1 rows missing outside every crash window, e.g. [4]",
        "1 rows delivered more than once, e.g. [2]",
    ]
