"""runtime.py: event-loop lag sampling and the process's figures."""

from __future__ import annotations

import asyncio
import os
import time

from conftest import MS

from realtime_core.admin.introspect import client_library
from realtime_core.runtime import SAMPLE_INTERVAL, LoopLag, process_stats


async def test_loop_lag_sees_a_blocked_loop():
    lag = LoopLag()
    loop = asyncio.get_running_loop()
    assert lag.percentiles(loop.time()) == {"p50": None, "p99": None, "max": None}
    task = asyncio.create_task(lag.run())
    try:
        await asyncio.sleep(SAMPLE_INTERVAL / 2)
        time.sleep(300 * MS)  # block the loop through a sample
        while lag.percentiles(loop.time())["max"] is None:
            await asyncio.sleep(SAMPLE_INTERVAL / 4)
    finally:
        task.cancel()
    figures = lag.percentiles(loop.time())
    assert figures["max"] >= 300 * MS * 1000 - SAMPLE_INTERVAL * 1000


def test_process_stats_describe_this_process():
    stats = process_stats()
    assert stats["pid"] == os.getpid()
    assert stats["rss_bytes"] > 1024 * 1024
    assert stats["open_fds"] is None or stats["open_fds"] > 2


def test_client_library_from_what_the_client_tells():
    assert client_library("realtime-js/2.119.1", "Mozilla/5.0") == ("realtime-js", "2.119.1")
    assert client_library("supabase-py/2.0.0 extra", None) == ("supabase-py", "2.0.0")
    assert client_library(None, "Python/3.11 websockets/15.0.1") == ("websockets", "15.0.1")
    assert client_library(None, "node") == ("node", None)
    assert client_library(None, None) == (None, None)
