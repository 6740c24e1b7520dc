"""Several realtime-core processes as one system, through Redis (REDIS_URL).

Every key and pub/sub channel this package uses starts with `rt:<cluster>:` (keys()), where
the cluster name is REALTIME_CLUSTER: processes of one cluster share it, and separate clusters
(or tests) on one Redis never see each other's traffic."""

from __future__ import annotations

import os
import uuid

from ..config import Settings

__all__ = ["RedisUnavailable", "keys", "new_node_id"]


class RedisUnavailable(Exception):
    """REDIS_URL does not answer at start (a configuration error: its message says which)."""


def keys(settings: Settings) -> str:
    """The prefix of every Redis key and channel of this process's cluster."""
    return f"rt:{settings.cluster_name}:"


def new_node_id() -> str:
    """A node id unique in the cluster: the host's name, the pid and a random part."""
    return f"{os.uname().nodename}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
