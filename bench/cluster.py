"""`realtime-core bench cluster`: the fan-out bench on N nodes (default 3) of one cluster on Redis.

The nodes listen on N ports of this host and share one database and a redis-server of the
bench's own (bench/_cluster.py); the generator spreads its subscribers over the nodes and
publishes from the first, so nearly every delivery crossed Redis. One node alone runs in
the same bench, alternated with the cluster. Every run is checked as bench/fanout.py's are
(each subscriber receives exactly 1 .. sent, in order); deliveries/s, p50/p99 latency and
the CPU of the nodes and of redis-server are reported. Options are bench/fanout.py's."""

from __future__ import annotations

import sys

from bench import fanout

__all__ = ["main"]

DEFAULT_NODES = 3


def main(argv: list[str] | None = None) -> int:
    """Run `bench fanout --nodes 3` with `argv` (which may set another --nodes)."""
    rest = list(sys.argv[1:] if argv is None else argv)
    return fanout.main(
        ["--nodes", str(DEFAULT_NODES), "--json", str(fanout.DEFAULT_JSON.with_name("cluster.json")), *rest]
    )


if __name__ == "__main__":
    sys.exit(main())
