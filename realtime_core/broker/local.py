"""The broker of a single node: publishing is delivering to the local hub."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..hub import Hub, Publication, StreamKey, Subscriber
from ..presence import Diff

if TYPE_CHECKING:
    from ..tenants import Tenant

__all__ = ["InProcessBroker"]


class InProcessBroker:
    """A Broker (broker/__init__.py) whose only node is this process."""

    __slots__ = ("hub",)

    def __init__(self, hub: Hub) -> None:
        self.hub = hub

    def publish(
        self, tenant: Tenant, key: StreamKey, publication: Publication, now: float, exclude: Subscriber | None = None
    ) -> int:
        return self.hub.publish(tenant, key, publication, now, exclude)

    def accepted(self, tenant: Tenant, kind: str, key: StreamKey, count: int = 1) -> None:
        self.hub.accepted(tenant, kind, key, count)

    def subscribe(self, key: StreamKey, subscriber: Subscriber) -> None:
        self.hub.subscribe(key, subscriber)

    def unsubscribe(self, key: StreamKey, subscriber: Subscriber) -> None:
        self.hub.unsubscribe(key, subscriber)

    async def ready(self, key: StreamKey) -> None:
        """At once: every publisher is in this process."""

    def presence_join(self, key: StreamKey, owner: Subscriber, presence_key: str, meta: dict[str, Any]) -> Diff | None:
        diff = self.hub.presence_topic(key).track(owner, presence_key, meta)
        if diff is not None:
            self._count(key.tenant, diff)
        return diff

    def presence_leave(self, key: StreamKey, owner: Subscriber) -> Diff | None:
        hub = self.hub
        topic = hub.presences.get(key)
        if topic is None:
            return None
        diff = topic.untrack(owner)
        hub.forget_presence_topic(key)
        if diff is not None:
            self._count(key.tenant, diff)
        return diff

    def _count(self, tenant: str, diff: Diff) -> None:
        hub = self.hub
        if diff["joins"]:
            hub.presence_joins[tenant] = hub.presence_joins.get(tenant, 0) + len(diff["joins"])
        if diff["leaves"]:
            hub.presence_leaves[tenant] = hub.presence_leaves.get(tenant, 0) + len(diff["leaves"])

    def presence_state(self, key: StreamKey) -> dict[str, dict[str, list[dict[str, Any]]]]:
        topic = self.hub.presences.get(key)
        return topic.state() if topic is not None else {}
