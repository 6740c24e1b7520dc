"""Tests for realtime_core.metrics.parse_samples, the one reader of /metrics text (console, bench, tests)."""

from __future__ import annotations

import pytest
from fakes import make_app

from bench.private import histogram_delta
from realtime_core.authorization import LatencyHistogram
from realtime_core.metrics import parse_samples


async def test_every_rendered_sample_reads_back_in_order():
    app = make_app()
    app.metrics.join_refused('Odd"Code\\with\nnewline')
    app.metrics.join_refused("TopicNameRequired")
    text = app.metrics.render()
    lines = [line for line in text.splitlines() if line and not line.startswith("#")]
    samples = parse_samples(text)
    names = [line.split("{")[0].split(" ")[0] for line in lines]
    # The one counter without the `_total` suffix is read under the OpenMetrics name.
    assert [s.name for s in samples] == [n + "_total" if n == "realtime_channel_global_error" else n for n in names]
    assert [float(s.value) for s in samples] == [float(line.rsplit(" ", 1)[1]) for line in lines]
    errors = {s.labels["code"]: s.value for s in samples if s.name == "realtime_channel_global_error_total"}
    assert errors == {'Odd"Code\\with\nnewline': 1, "TopicNameRequired": 1}  # escapes undone


def test_a_histogram_reads_back_as_buckets_sum_and_count():
    before, after = LatencyHistogram(), LatencyHistogram()
    for ms in (0.2, 3.0, 3.0, 40.0):
        after.observe(ms)
    before.observe(0.2)
    label = 'tenant="t"'
    read = histogram_delta(
        parse_samples("\n".join(before.render("x", label)) + "\n"),
        parse_samples("\n".join(after.render("x", label)) + "\n"),
        "x",
    )
    assert read is not None
    assert read["count"] == 3
    assert read["mean_ms"] == pytest.approx((3.0 + 3.0 + 40.0) / 3, abs=1e-3)
    assert read["cumulative"]["+Inf"] == 3


def test_text_that_is_not_the_exposition_format_is_refused():
    with pytest.raises(ValueError):
        parse_samples('x{tenant="unterminated} 1\n')
