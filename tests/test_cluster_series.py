"""The cluster's time series (admin/nodes.py _merge_series): the nodes' windows on one time axis."""

from __future__ import annotations

from realtime_core.admin.nodes import _merge_series


def window(end: int, series: dict[str, list[float]]) -> dict:
    count = len(next(iter(series.values())))
    return {"step_seconds": 1, "end": end, "count": count, "series": series}


def test_nodes_sampled_on_different_seconds_are_summed_per_second():
    answers = {
        "a": window(102, {"connections": [1, 2, 3]}),  # seconds 100..102
        "b": window(103, {"connections": [10, 20, 30]}),  # seconds 101..103
    }
    merged = _merge_series(answers, ["connections"], 60)
    assert merged["series"]["connections"] == [1, 12, 23, 30]
    assert merged["timestamps"][0] == "1970-01-01T00:01:40Z"


def test_replication_figures_are_the_highest_and_the_window_is_cut_to_its_points():
    answers = {
        "a": window(101, {"replication_lag_ms": [5, 50], "joins": [1, 1]}),
        "b": window(101, {"replication_lag_ms": [7, 0], "joins": [2, 2]}),
        "c": {"step_seconds": 1, "end": None, "count": 0, "series": {"replication_lag_ms": [], "joins": []}},
    }
    merged = _merge_series(answers, ["replication_lag_ms", "joins"], 1)
    assert merged["series"] == {"replication_lag_ms": [50], "joins": [3]}
