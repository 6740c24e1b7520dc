"""Several realtime-core processes as one system, through Redis (REDIS_URL).

Every key and pub/sub channel this package uses starts with `rt:<cluster>:` (keys()), where
the cluster name is REALTIME_CLUSTER: processes of one cluster share it, and separate clusters
(or tests) on one Redis never see each other's traffic.

broker.py shares topics between the processes; workers.py runs `serve --workers N`. Nothing
here imports redis: a process without REDIS_URL never loads it."""

from __future__ import annotations

from ..config import Settings

__all__ = ["RedisUnavailable", "keys"]


class RedisUnavailable(Exception):
    """REDIS_URL does not answer at start (a configuration error: its message says which)."""


def keys(settings: Settings) -> str:
    """The prefix of every Redis key and channel of this process's cluster."""
    return f"rt:{settings.cluster_name}:"
