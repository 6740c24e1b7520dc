"""Broadcast from the REST API (docs/protocol.md §4.2–4.3).

rest_api.py calls publish_json() / publish_user() for each accepted message;
they publish through the Broker, which ends in Hub.deliver() (frames built once
per codec), as a client's broadcast over its socket does (channel.py)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson

from .hub import REST_KIND, Publication, StreamKey
from .protocol import UserBroadcast

if TYPE_CHECKING:
    from .broker import Broker
    from .tenants import Tenant

__all__ = ["publish_json", "publish_user"]


def publish_json(
    broker: Broker,
    tenant: Tenant,
    sub_topic: str,
    private: bool,
    event: str,
    payload: Any,
    message_id: str | None,
    now: float,
) -> int:
    """Deliver a REST batch message as event `broadcast` {payload, event, type, meta?} (docs/protocol.md §4.2)."""
    body: dict[str, Any] = {"payload": payload, "event": event, "type": "broadcast"}
    if message_id is not None:
        body["meta"] = {"id": message_id}
    publication = Publication(f"realtime:{sub_topic}", "broadcast", orjson.dumps(body), kind=REST_KIND)
    key = StreamKey(tenant.external_id, private, sub_topic)
    return broker.publish(tenant, key, publication, now)


def publish_user(
    broker: Broker, tenant: Tenant, sub_topic: str, private: bool, message: UserBroadcast, now: float
) -> int:
    """Deliver a user broadcast (the REST single-event endpoint, docs/protocol.md §4.3)."""
    publication = Publication(f"realtime:{sub_topic}", "broadcast", user=message, kind=REST_KIND)
    key = StreamKey(tenant.external_id, private, sub_topic)
    return broker.publish(tenant, key, publication, now)
