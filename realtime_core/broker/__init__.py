"""Publishing to topics between nodes: the Broker seam.

Sessions and services publish through a Broker, never to the hub directly, so
that a broker between nodes can be added without touching them. InProcessBroker
(local.py) serves one node. cluster/broker.py's RedisBroker keeps the same
contract between processes: publish() sends each message once (one Redis
publish) and delivers it to this node's hub at once; each other node that has
subscribed the stream hands what it receives to its hub's publish(), which
builds the frame once per codec there. subscribe()/unsubscribe() tell it when
this node gains its first or loses its last local subscriber of a stream (Redis
SUBSCRIBE/UNSUBSCRIBE), and a join awaits ready() before its reply;
presence_join()/presence_leave() would replicate presences the same way."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from ..hub import Publication, StreamKey, Subscriber
from ..presence import Diff

if TYPE_CHECKING:
    from ..tenants import Tenant

__all__ = ["Broker", "InProcessBroker"]


class Broker(Protocol):
    """Pub/sub of topics between nodes, and their presences."""

    def publish(
        self, tenant: Tenant, key: StreamKey, publication: Publication, now: float, exclude: Subscriber | None = None
    ) -> int:
        """Deliver `publication` to every subscriber of `key` but `exclude`; return how many
        subscribers of this node got it (Hub.deliver's rules apply)."""
        ...

    def accepted(self, tenant: Tenant, kind: str, key: StreamKey, count: int = 1) -> None:
        """Record `count` messages of `kind` accepted from a sender for `key` (Hub.accepted)."""
        ...

    def subscribe(self, key: StreamKey, subscriber: Subscriber) -> None:
        """`subscriber` of this node listens on `key` from now on."""
        ...

    async def ready(self, key: StreamKey) -> None:
        """Return once what any node publishes on `key` reaches this node (awaited before a join's
        reply, so that a client that is told it joined misses nothing published after; the
        subscribe() that follows must come before the next await)."""
        ...

    def unsubscribe(self, key: StreamKey, subscriber: Subscriber) -> None: ...

    def presence_join(self, key: StreamKey, owner: Subscriber, presence_key: str, meta: dict[str, Any]) -> Diff | None:
        """Track or update `owner`'s presence on `key`; the diff to publish, None when unchanged."""
        ...

    def presence_leave(self, key: StreamKey, owner: Subscriber) -> Diff | None:
        """Remove `owner`'s presence on `key`; the diff to publish, None when it had none."""
        ...

    def presence_state(self, key: StreamKey) -> dict[str, dict[str, list[dict[str, Any]]]]:
        """Every presence on `key`, grouped by presence key (what a joining channel receives)."""
        ...


from .local import InProcessBroker  # noqa: E402  (local.py implements the Protocol above)
