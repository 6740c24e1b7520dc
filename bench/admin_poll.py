"""Operators watching: every GET of the admin API, once a second, from several consoles.

bench/fanout.py runs this beside our server with `--admin-pollers N` (pinned with the
generator), so that a fan-out figure says what polling consoles cost the server. Each poller
is a thread with its own console.client.AdminClient that, once a second, reads the node, the
tenants, the default tenant's view, connections, channels, the busiest channel and its
presence, replication, errors, time series, usage, the bill and the audit log: what the
console's pages read. It runs until SIGTERM or SIGINT, then prints one JSON line: requests
made, failures and the slowest answer.

    python -m bench.admin_poll --url http://127.0.0.1:4000 --token $ADMIN --pollers 4
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # console/ from a checkout

from console.client import AdminApiError, AdminClient

__all__ = ["main", "poll_once"]


def poll_once(client: AdminClient, tenant: str) -> int:
    """Every read of one console refresh; returns how many requests it made."""
    calls: list[Callable[[], Any]] = [
        client.node,
        client.tenants,
        lambda: client.tenant(tenant),
        lambda: client.connections(tenant, limit=100),
        lambda: client.replication(tenant),
        lambda: client.errors(tenant),
        lambda: client.timeseries(tenant),
        lambda: client.usage(tenant),
        lambda: client.bill(tenant),
        lambda: client.audit(limit=20),
    ]
    for call in calls:
        call()
    channels = client.channels(tenant, sort="-subscribers", limit=20)
    made = len(calls) + 1
    if len(channels):
        busiest = channels[0]
        made += 2
        try:
            client.channel(tenant, busiest.topic, private=busiest.private)
            client.presence(tenant, busiest.topic, private=busiest.private)
        except AdminApiError as exc:
            if exc.status != 404:  # 404: its last subscriber left since the list was read
                raise
    return made


class Poller(threading.Thread):
    def __init__(self, url: str, token: str, tenant: str, stop: threading.Event) -> None:
        super().__init__(daemon=True)
        self.client = AdminClient(url, token, timeout=10.0)
        self.tenant = tenant
        self.stop = stop
        self.requests = 0
        self.failures: list[str] = []
        self.slowest_s = 0.0

    def run(self) -> None:
        while not self.stop.is_set():
            started = time.monotonic()
            try:
                self.requests += poll_once(self.client, self.tenant)
            except AdminApiError as exc:
                self.failures.append(str(exc))
            took = time.monotonic() - started
            self.slowest_s = max(self.slowest_s, took)
            self.stop.wait(max(0.0, 1.0 - took))
        self.client.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.admin_poll", description=__doc__.split("\n\n")[0])
    p.add_argument("--url", required=True)
    p.add_argument("--token", required=True, help="an admin token (read-only is enough)")
    p.add_argument("--pollers", type=int, default=4)
    p.add_argument("--tenant", default="realtime-dev")
    args = p.parse_args(argv)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    started = time.monotonic()
    pollers = [Poller(args.url, args.token, args.tenant, stop) for _ in range(args.pollers)]
    for poller in pollers:
        poller.start()
    while not stop.wait(0.5):
        pass
    for poller in pollers:
        poller.join(15)
    elapsed = time.monotonic() - started
    failures = [f for p in pollers for f in p.failures]
    print(
        json.dumps(
            {
                "pollers": args.pollers,
                "seconds": round(elapsed, 1),
                "requests": sum(p.requests for p in pollers),
                "requests_per_s": round(sum(p.requests for p in pollers) / elapsed, 1) if elapsed else 0,
                "failures": len(failures),
                "first_failures": failures[:5],
                "slowest_refresh_s": round(max((p.slowest_s for p in pollers), default=0.0), 3),
            }
        ),
        flush=True,
    )
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
