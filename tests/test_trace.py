"""trace.Tracer's bookkeeping: Hub.tracer is set exactly while a trace runs, finished traces are
kept for a while and then forgotten, and a full trace only counts."""

from __future__ import annotations

import asyncio
import time

import pytest
from conftest import MS

from realtime_core import trace
from realtime_core.hub import Hub
from realtime_core.trace import MAX_ACTIVE, MAX_DECISIONS, MAX_KEPT, TraceLimit, Tracer


async def test_the_hub_sees_the_tracer_only_while_a_trace_runs():
    hub = Hub()
    tracer = Tracer(hub)
    assert hub.tracer is None
    first = tracer.start("t", "room", sub="a", connection=None, seconds=60)
    second = tracer.start("t", "room", sub="b", connection=None, seconds=60)
    assert hub.tracer is tracer and tracer.watching("t") == {"room"}
    tracer.stop(first)
    assert hub.tracer is tracer, "one trace still runs"
    tracer.remove(second)
    assert hub.tracer is None and tracer.watching("t") is None
    assert not first.active and first.stopped_at is not None
    assert list(tracer.traces) == [first.id], "a stopped trace stays readable, a removed one does not"


async def test_a_trace_ends_by_itself_when_it_expires():
    hub = Hub()
    tracer = Tracer(hub)
    ended = tracer.start("t", "room", sub="a", connection=None, seconds=0.01)
    async with asyncio.timeout(1000 * MS):
        while ended.active:
            await asyncio.sleep(0.005)
    assert hub.tracer is None and ended.stopped_at is not None


async def test_a_tenant_runs_at_most_max_active_traces():
    tracer = Tracer(Hub())
    for i in range(MAX_ACTIVE):
        tracer.start("t", f"room-{i}", sub="a", connection=None, seconds=60)
    tracer.start("other", "room", sub="a", connection=None, seconds=60)  # another tenant's own count
    with pytest.raises(TraceLimit, match=f"at most {MAX_ACTIVE} traces"):
        tracer.start("t", "room", sub="a", connection=None, seconds=60)


async def test_finished_traces_are_forgotten_beyond_max_kept_and_after_keep_finished():
    tracer = Tracer(Hub())
    finished = []
    for i in range(MAX_KEPT + 3):
        t = tracer.start("t", f"room-{i}", sub="a", connection=None, seconds=60)
        tracer.stop(t)
        t.stopped_at = time.time() - 100 + i  # stopped in this order
        finished.append(t)
    kept = tracer.of_tenant("t")
    assert sorted(t.id for t in kept) == sorted(t.id for t in finished[-MAX_KEPT:])
    finished[-1].stopped_at = time.time() - trace.KEEP_FINISHED - 1
    assert finished[-1] not in tracer.of_tenant("t")


def test_a_full_trace_counts_what_it_does_not_keep():
    t = trace.Trace("t", "room", "a", None, 60)
    for _ in range(MAX_DECISIONS):
        assert t.add("broadcast", "e", None, False, trace.NOT_JOINED) is not None
    assert t.add("broadcast", "e", None, False, trace.NOT_JOINED) is None
    assert len(t.decisions) == MAX_DECISIONS and t.overflow == 1
