"""`/admin/v1` cost attribution and advice: which topics, client libraries and roles drive a
tenant's bill, and what would cut it, computed from the counters.

Attribution is usage.UsageMeter.attribution (attribution.py), read live: the open sockets' own
counters are added at read time. It is kept in memory by this process, from its start
(`counted_since`): a cycle's answer covers the days this process saw.

Advice names the channel (or socket) and the figures it rests on; a saving is given only where
the counters measure it:
- presence: a channel whose presence traffic is most of its egress. Broadcast of the changed
  state carries the same diffs, but not the full presence_state each joiner receives: the saving
  is the presence_state frames measured on the channel.
- binary broadcasts: an open socket on vsn 1.0.0. A 2.0.0 socket gets user broadcasts as binary
  frames; the saving per message is the difference between the two codecs' frames for the same
  message on its channel, computed with the codecs, times the messages it received (an upper
  bound: presence and Postgres Changes messages are JSON in both versions).
- Postgres Changes: a channel subscribed to every event (`*`) of a table without a server-side
  `filter`. What its client then drops (an `.on()` callback that ignores rows) is not visible
  here: the figure is the changes delivered, the saving is unknown (null)."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ..attribution import (
    EXACT_TOPICS,
    POSTGRES_CHANGES_SLOT,
    PRESENCE_SLOT,
    PRESENCE_STATE_SLOT,
    REST_TOPIC,
    SOCKET_TOPIC,
    usd,
    weight_usd,
)
from ..protocol import JSON, V1, V2, UserBroadcast
from ..usage import hour_of
from .endpoints import AdminApi, Call, tenant_of

if TYPE_CHECKING:
    from ..app import App
    from ..plans import Plan
    from ..socket import RealtimeSocket
    from ..tenants import Tenant

__all__ = ["routes"]

# A channel's presence "dominates" from this share of its egress, and is worth advice from this many messages.
PRESENCE_SHARE = 0.5
MIN_MESSAGES = 10
# The message advice's envelope comparison is computed for: an empty JSON object under this event name.
SAMPLE_EVENT = "event"


class PeriodQuery(BaseModel):
    model_config = ConfigDict(extra="ignore")

    period: Literal["day", "cycle"] = Field("day", description="today (UTC), or the tenant's current billing cycle")
    limit: int = Field(100, ge=1, le=EXACT_TOPICS, description="rows per list at most (the rest is in `other`)")


class TopicRow(BaseModel):
    topic: str
    private: bool
    messages: int
    egress_bytes: int
    usd: float
    error_usd: float = Field(description="what this topic may have cost before it entered the table (0 if exact)")


class ClientRow(BaseModel):
    client: str | None
    version: str | None
    connections: int
    messages: int
    egress_bytes: int
    usd: float


class RoleRow(BaseModel):
    role: str | None
    connections: int
    messages: int
    egress_bytes: int
    usd: float


class Amount(BaseModel):
    messages: int
    egress_bytes: int
    usd: float


class ErrorBound(BaseModel):
    usd: float = Field(description="the most any topic's usd may be below its true cost")
    threshold_usd: float = Field(description="every topic that cost more than this is listed")


class AttributionAnswer(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    tenant: str
    period: Literal["day", "cycle"]
    from_: date = Field(alias="from")
    to: date
    counted_since: datetime = Field(description="attribution is kept by this process from its start")
    topics: list[TopicRow]
    clients: list[ClientRow]
    roles: list[RoleRow]
    exact: bool
    error_bound: ErrorBound
    other: Amount = Field(description="topics replaced in the table or past `limit`")
    total: Amount


class Saving(BaseModel):
    messages: int
    egress_bytes: int
    usd: float


class Advice(BaseModel):
    kind: Literal["presence_state", "binary_broadcast", "postgres_changes_filter"]
    channel: str
    private: bool
    socket: str | None = None
    advice: str
    based_on: dict[str, Any]
    saving: Saving | None = Field(description="null where the counters cannot measure it")


class AdviceAnswer(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    tenant: str
    period: Literal["day", "cycle"]
    from_: date = Field(alias="from")
    to: date
    advice: list[Advice]
    not_detectable: list[str]


NOT_DETECTABLE = [
    "Events a client ignores after delivery (an .on() callback that drops rows or broadcast events) are "
    "filtered in the client: the server only sees what it sent.",
    "Overlapping subscriptions on one socket (the same table under two channels) are counted as sent; "
    "whether the client needed both is not visible.",
]


def routes(api: AdminApi, app: App) -> None:
    usage = app.usage

    def period_days(tenant: Tenant, period: str) -> tuple[date, date]:
        today = datetime.fromtimestamp(usage.clock(), UTC).date()
        return (today if period == "day" else usage.cycle(tenant).start), today

    def read(tenant: Tenant, first: date, last: date) -> dict[str, Any]:
        usage.settle()  # the hub's tallies of this second too
        usage.roll_attribution()
        epoch = date(1970, 1, 1).toordinal()
        days = range(first.toordinal() - epoch, last.toordinal() - epoch + 1)
        today = hour_of(usage.clock()) // 24
        return usage.attribution.usage(tenant.external_id, days, list(app.sockets), today)

    @api.route("GET", "/admin/v1/tenants/:id/attribution", query=PeriodQuery, response=AttributionAnswer)
    async def attribution(call: Call) -> dict[str, Any]:
        """Messages, egress bytes and their marginal cost at overage prices per topic, client
        library and version, and role, sorted by cost."""
        tenant = tenant_of(app.tenants, call)
        query: PeriodQuery = call.query
        first, last = period_days(tenant, query.period)
        found = read(tenant, first, last)
        plan = tenant.plan
        topics = sorted(
            (
                {
                    "topic": topic,
                    "private": private,
                    "messages": row[0],
                    "egress_bytes": row[1],
                    "usd": usd(plan, row[0], row[1]),
                    "error_usd": weight_usd(row[3]),
                }
                for (topic, private), row in found["topics"].items()
            ),
            key=_by_cost,
        )
        other_messages, other_bytes = found["other"]
        for row in topics[query.limit :]:
            other_messages += row["messages"]
            other_bytes += row["egress_bytes"]
        clients = sorted(
            (
                _usage_row(plan, {"client": library, "version": version}, row)
                for (library, version), row in found["clients"].items()
            ),
            key=_by_cost,
        )
        roles = sorted(
            (_usage_row(plan, {"role": role}, row) for (role, _), row in found["roles"].items()), key=_by_cost
        )
        total_messages = sum(r[0] for r in found["topics"].values()) + found["other"][0]
        total_bytes = sum(r[1] for r in found["topics"].values()) + found["other"][1]
        return {
            "tenant": tenant.external_id,
            "period": query.period,
            "from": first.isoformat(),
            "to": last.isoformat(),
            "counted_since": datetime.fromtimestamp(app.started_at, UTC).isoformat().replace("+00:00", "Z"),
            "topics": topics[: query.limit],
            "clients": clients[: query.limit],
            "roles": roles[: query.limit],
            "exact": found["exact"],
            "error_bound": {
                "usd": weight_usd(found["error_weight"]),
                "threshold_usd": weight_usd(found["total_weight"]) / EXACT_TOPICS if not found["exact"] else 0.0,
            },
            "other": _amount(plan, other_messages, other_bytes),
            "total": _amount(plan, total_messages, total_bytes),
        }

    @api.route("GET", "/admin/v1/tenants/:id/advice", query=PeriodQuery, response=AdviceAnswer)
    async def advice(call: Call) -> dict[str, Any]:
        """What would cut the tenant's bill, from its measured traffic: each piece names the
        channel and the figures it is based on, with the saving where the counters measure it."""
        tenant = tenant_of(app.tenants, call)
        query: PeriodQuery = call.query
        first, last = period_days(tenant, query.period)
        found = read(tenant, first, last)
        plan = tenant.plan
        items = [
            *_presence_advice(plan, found["topics"]),
            *_binary_advice(plan, [s for s in app.sockets if s.tenant.external_id == tenant.external_id]),
            *_filter_advice(found["topics"], [s for s in app.sockets if s.tenant.external_id == tenant.external_id]),
        ]
        items.sort(key=lambda item: -(item["saving"]["usd"] if item["saving"] else 0.0))
        return {
            "tenant": tenant.external_id,
            "period": query.period,
            "from": first.isoformat(),
            "to": last.isoformat(),
            "advice": items[: query.limit],
            "not_detectable": NOT_DETECTABLE,
        }


def _by_cost(row: dict[str, Any]) -> tuple[float, int]:
    return -row["usd"], -row["egress_bytes"]


def _amount(plan: Plan, messages: int, nbytes: int) -> dict[str, Any]:
    return {"messages": messages, "egress_bytes": nbytes, "usd": usd(plan, messages, nbytes)}


def _usage_row(plan: Plan, key: dict[str, Any], row: list[int]) -> dict[str, Any]:
    connections, messages, nbytes = row
    return {**key, "connections": connections, "messages": messages, "egress_bytes": nbytes, **_cost(plan, row)}


def _cost(plan: Plan, row: list[int]) -> dict[str, float]:
    return {"usd": usd(plan, row[1], row[2])}


def _presence_advice(plan: Plan, topics: dict[tuple[str, bool], list[int]]) -> list[dict[str, Any]]:
    items = []
    for (topic, private), row in topics.items():
        if topic in (SOCKET_TOPIC, REST_TOPIC) or not row[1]:
            continue
        presence_messages = row[PRESENCE_SLOT] + row[PRESENCE_STATE_SLOT]
        presence_bytes = row[PRESENCE_SLOT + 1] + row[PRESENCE_STATE_SLOT + 1]
        if presence_messages < MIN_MESSAGES or presence_bytes < PRESENCE_SHARE * row[1]:
            continue
        state_messages, state_bytes = row[PRESENCE_STATE_SLOT], row[PRESENCE_STATE_SLOT + 1]
        share = presence_bytes / row[1]
        items.append(
            {
                "kind": "presence_state",
                "channel": topic,
                "private": private,
                "advice": (
                    f"Presence is {share:.0%} of channel {topic}'s egress ({presence_bytes} of {row[1]} bytes). "
                    "For high-frequency state, send the changes with Broadcast: the diffs cost the same, "
                    f"but the {state_messages} presence_state frames sent to joiners ({state_bytes} bytes) go."
                ),
                "based_on": {
                    "channel_messages": row[0],
                    "channel_egress_bytes": row[1],
                    "presence_messages": presence_messages,
                    "presence_egress_bytes": presence_bytes,
                    "presence_state_messages": state_messages,
                    "presence_state_egress_bytes": state_bytes,
                },
                "saving": {
                    "messages": state_messages,
                    "egress_bytes": state_bytes,
                    "usd": usd(plan, state_messages, state_bytes),
                },
            }
        )
    return items


def envelope_saving(topic: str) -> int:
    """Bytes a 2.0.0 binary user broadcast saves over the 1.0.0 JSON frame of the same message on
    wire topic `topic` (the payload is the same bytes in both: the difference is the envelope)."""
    sample = UserBroadcast(event=SAMPLE_EVENT, data=b"{}", encoding=JSON)
    json_frame = V1.user_broadcast(topic, sample)
    binary_frame = V2.user_broadcast(topic, sample)
    if json_frame is None or binary_frame is None:
        return 0
    return len(json_frame) - len(binary_frame)


def _binary_advice(plan: Plan, sockets: list[RealtimeSocket]) -> list[dict[str, Any]]:
    items = []
    for socket in sockets:
        if socket.codec is not V1 or not socket.channels:
            continue
        nbytes, frames = socket.traffic()
        messages = frames - socket.control_frames
        if messages < MIN_MESSAGES:
            continue
        # The channel whose frames save the least: a lower bound per message for the socket.
        channel = min(socket.channels.values(), key=lambda c: envelope_saving(c.topic))
        per_message = envelope_saving(channel.topic)
        saved = messages * per_message
        items.append(
            {
                "kind": "binary_broadcast",
                "channel": channel.sub_topic,
                "private": channel.private,
                "socket": socket.id,
                "advice": (
                    f"Socket {socket.id} uses vsn 1.0.0 and received {messages} messages ({nbytes} bytes) on "
                    f"{', '.join(sorted(c.sub_topic for c in socket.channels.values()))}. With vsn 2.0.0, "
                    f"broadcasts arrive as binary frames, {per_message} bytes smaller each on {channel.sub_topic}: "
                    f"up to {saved} bytes if all were broadcasts."
                ),
                "based_on": {
                    "messages_received": messages,
                    "egress_bytes": nbytes,
                    "bytes_saved_per_message": per_message,
                },
                "saving": {"messages": 0, "egress_bytes": saved, "usd": usd(plan, 0, saved)},
            }
        )
    return items


def _filter_advice(topics: dict[tuple[str, bool], list[int]], sockets: list[RealtimeSocket]) -> list[dict[str, Any]]:
    items = []
    seen: set[tuple[str, bool, str]] = set()
    for socket in sockets:
        for channel in socket.channels.values():
            for _, params in channel.postgres_changes or ():
                if params.get("event", "*") != "*" or params.get("filter"):
                    continue
                table = f"{params.get('schema', 'public')}.{params.get('table', '*')}"
                key = (channel.sub_topic, channel.private, table)
                if key in seen:
                    continue
                seen.add(key)
                row = topics.get((channel.sub_topic, channel.private))
                delivered = row[POSTGRES_CHANGES_SLOT] if row else 0
                delivered_bytes = row[POSTGRES_CHANGES_SLOT + 1] if row else 0
                if delivered < MIN_MESSAGES:
                    continue
                items.append(
                    {
                        "kind": "postgres_changes_filter",
                        "channel": channel.sub_topic,
                        "private": channel.private,
                        "advice": (
                            f"Channel {channel.sub_topic} takes every event of {table} without a filter and "
                            f"received {delivered} changes ({delivered_bytes} bytes). If its clients keep only "
                            "some rows or events, subscribe with `event` and a server-side `filter` "
                            "(column=eq.value): the rest would not be sent. How many they drop is not visible "
                            "to the server."
                        ),
                        "based_on": {
                            "table": table,
                            "postgres_changes_messages": delivered,
                            "postgres_changes_egress_bytes": delivered_bytes,
                        },
                        "saving": None,
                    }
                )
    return items
