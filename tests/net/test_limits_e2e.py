"""End to end: HTTP request limits of a real `realtime-core serve` under attack (loopback only).

Attackers send a never-ending header as fast as they can, or a request head a
byte at a time; meanwhile a well-behaved client pings. The attackers must get
their 431 / 408 and be closed, the server's memory must stay flat and the
pings fast. Before the limits a 64 MB header was accepted whole, memory grew
with it and, at 234 MB, pings took seconds."""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.pg, pytest.mark.slow]

HEAD_TIMEOUT = 1.5  # REALTIME_REQUEST_HEAD_TIMEOUT_MS, shortened for the test
ATTACK_SECONDS = 4.0
FLOODERS = 3  # connections sending a never-ending header at once
TRICKLERS = 3
FLOOD_CAP = 32 * 1024 * 1024  # what one flooding connection sends at most before giving up
# Sent before the answer arrives: the header block limit (64 KB), socket buffers, one more read.
FLOOD_SENT_MAX = 8 * 1024 * 1024
RSS_GROWTH_MAX = 40 * 1024 * 1024
PING_MAX = 1.0  # seconds, for any one ping during the attack

FLOOD_HEAD = b"GET /api/ping HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Endless: "
TRICKLE_HEAD = b"GET /api/ping HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"s" * 10_000


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


async def read_answer(reader: asyncio.StreamReader, timeout: float) -> tuple[bytes, bool]:
    """What the server sent before closing (or before `timeout`), and whether it closed."""
    data = b""
    with contextlib.suppress(TimeoutError, ConnectionError):
        async with asyncio.timeout(timeout):
            while chunk := await reader.read(65536):
                data += chunk
            return data, True
    return data, False


async def flood(port: int) -> dict[str, object]:
    """One connection sending a header value that never ends, until the server answers and closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    answered = asyncio.create_task(read_answer(reader, 30.0))
    sent = 0
    chunk = b"a" * 65536
    with contextlib.suppress(ConnectionError):
        writer.write(FLOOD_HEAD)
        while sent < FLOOD_CAP and not answered.done():
            writer.write(chunk)
            await writer.drain()
            sent += len(chunk)
            await asyncio.sleep(0)  # let the answer be read
    if sent >= FLOOD_CAP:
        writer.transport.abort()  # given up: no answer
    answer, closed = await answered
    writer.transport.abort()
    return {"sent": sent, "answer": answer, "closed": closed}


async def trickle(port: int) -> dict[str, object]:
    """One connection sending a request head a byte every 50 ms, until the server closes it."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    started = time.monotonic()
    answered = asyncio.create_task(read_answer(reader, HEAD_TIMEOUT + 10.0))
    with contextlib.suppress(ConnectionError):
        for byte in TRICKLE_HEAD:
            if answered.done():
                break
            writer.write(bytes([byte]))
            await writer.drain()
            await asyncio.sleep(0.05)
    answer, closed = await answered
    writer.transport.abort()
    return {"elapsed": time.monotonic() - started, "answer": answer, "closed": closed}


async def ping(port: int) -> float:
    started = time.monotonic()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"GET /api/ping HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        async with asyncio.timeout(10):
            answer = await reader.read()
    finally:
        writer.close()
    assert answer.startswith(b"HTTP/1.1 200 "), answer[:200]
    return time.monotonic() - started


def status_of(answer: bytes) -> int | None:
    return int(answer[9:12]) if answer.startswith(b"HTTP/1.1 ") else None


async def test_attackers_are_answered_and_closed_while_others_are_served(server_factory):
    srv = server_factory({"REALTIME_REQUEST_HEAD_TIMEOUT_MS": str(int(HEAD_TIMEOUT * 1000))})
    pid, port = srv.proc.pid, srv.port
    for _ in range(20):  # warm up: the first requests allocate what every request needs
        await ping(port)
    rss_before = rss_bytes(pid)
    rss_max = rss_before
    pings: list[float] = []
    floods: list[dict[str, object]] = []
    trickles: list[dict[str, object]] = []
    deadline = time.monotonic() + ATTACK_SECONDS

    async def keep_flooding() -> None:
        while time.monotonic() < deadline:
            floods.append(await flood(port))

    async def keep_trickling() -> None:
        while time.monotonic() < deadline:
            trickles.append(await trickle(port))

    async def keep_pinging() -> None:
        nonlocal rss_max
        while time.monotonic() < deadline:
            pings.append(await ping(port))
            rss_max = max(rss_max, rss_bytes(pid))
            await asyncio.sleep(0.05)

    await asyncio.gather(
        *(keep_flooding() for _ in range(FLOODERS)), *(keep_trickling() for _ in range(TRICKLERS)), keep_pinging()
    )
    rss_max = max(rss_max, rss_bytes(pid))

    assert floods and trickles
    for result in floods:
        assert status_of(result["answer"]) == 431, result["answer"][:300]
        assert result["closed"]
        assert result["sent"] < FLOOD_SENT_MAX, "the answer came late"
    for result in trickles:
        assert status_of(result["answer"]) == 408, result["answer"][:300]
        assert result["closed"]
        assert HEAD_TIMEOUT - 0.1 <= result["elapsed"] <= HEAD_TIMEOUT + 1.5
    growth = rss_max - rss_before
    assert growth < RSS_GROWTH_MAX, f"RSS grew {growth / 2**20:.1f} MB under attack"
    assert len(pings) >= 10
    assert max(pings) < PING_MAX, f"pings during the attack: max {max(pings):.3f} s"
    print(
        f"\n{len(floods)} floods (431 after at most {max(r['sent'] for r in floods) / 2**20:.1f} MB sent),"
        f" {len(trickles)} trickles (408 after {min(r['elapsed'] for r in trickles):.2f}"
        f"-{max(r['elapsed'] for r in trickles):.2f} s), RSS growth {growth / 2**20:.1f} MB,"
        f" {len(pings)} pings p50 {sorted(pings)[len(pings) // 2] * 1000:.1f} ms max {max(pings) * 1000:.1f} ms"
    )
