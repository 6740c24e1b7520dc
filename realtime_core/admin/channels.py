"""The admin API's channel views: the streams of a tenant with their subscribers, presence
keys and message statistics (channel_stats.py), one stream with its subscribers, an operator's
shutdown of a channel, and the tenant's time series (timeseries.py).

admin/__init__.py calls routes(). Handlers read the hub and the in-memory statistics only:
nothing here touches the database or does work per message."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

from ..hub import KINDS, StreamKey
from ..timeseries import ERRORS_PREFIX, SERIES, WINDOWS
from .endpoints import AdminApi, Call, ListQuery, Page, invalid, not_found, paginate, tenant_of

if TYPE_CHECKING:
    from ..app import App
    from ..tenants import Tenant

__all__ = [
    "SORTABLE",
    "ChannelListQuery",
    "ChannelQuery",
    "ChannelRow",
    "Subscriber",
    "channel_row",
    "routes",
    "streams",
    "subscriber_list",
]

# The text upstream's operator disconnect pushes to a channel (RT user_socket.ex disconnect/1),
# sent here as a channel shutdown: a `system` error message, then phx_close (docs/protocol.md §3.6).
SHUTDOWN_TEXT = "Server requested disconnect"
SORTABLE = (
    "topic",
    "private",
    "subscribers",
    "presence",
    "messages_total",
    "deliveries_total",
    "messages_rate",
    "deliveries_rate",
    "fan_out",
)


class ByKind(BaseModel):
    """A figure per message kind (its origin, as metered)."""

    broadcast: float = 0
    presence: float = 0
    postgres_changes: float = 0
    db_broadcast: float = 0
    rest: float = 0


class ChannelRow(BaseModel):
    """One stream of a tenant: (topic, private)."""

    topic: str = Field(description="the topic as the client named it, without `realtime:`")
    private: bool
    subscribers: int = Field(description="channels joined on this stream in this process")
    presence: int = Field(description="distinct presence keys tracked")
    messages: ByKind = Field(description="messages accepted from senders, totals by kind")
    deliveries: ByKind = Field(description="frames queued on receivers, totals by kind")
    messages_per_second: ByKind = Field(description="messages accepted per second over the last minute")
    deliveries_per_second: ByKind = Field(description="deliveries per second over the last minute")
    messages_total: int
    deliveries_total: int
    messages_rate: float = Field(description="sum of messages_per_second")
    deliveries_rate: float = Field(description="sum of deliveries_per_second")
    fan_out: float | None = Field(description="average receivers per publication (null before any)")
    publications: int = Field(description="publications fanned out to the stream's subscribers")


class Subscriber(BaseModel):
    connection: str | None = Field(description="the connection's id (as in the connections list)")
    role: str | None
    sub: str | None
    join_ref: str | None


class ChannelDetail(ChannelRow):
    subscriber_list: list[Subscriber]


class ChannelQuery(BaseModel):
    model_config = ConfigDict(extra="ignore")

    private: bool = Field(False, description="the private stream of the topic (default: the public one)")


class ChannelListQuery(ListQuery):
    private: bool | None = Field(None, description="only private (true) or only public (false) streams")


class ShutdownResult(BaseModel):
    closed: int = Field(description="subscribers that were sent the shutdown")
    message: str


class TimeSeriesQuery(BaseModel):
    model_config = ConfigDict(extra="ignore")

    series: str | None = Field(
        None,
        description=f"comma-separated series names (default: all): {', '.join(SERIES)}, errors.<code>",
    )
    window: str = Field(
        "10m", description="per second up to 10m, else per minute", json_schema_extra={"enum": list(WINDOWS)}
    )


class TimeSeriesAnswer(BaseModel):
    window: str
    step_seconds: int
    timestamps: list[str] = Field(description="the time of each value, oldest first (ISO 8601 UTC)")
    series: dict[str, list[float]]
    series_names: list[str] = Field(
        description="every series of the tenant: the fixed ones, and errors.<code> for each upstream error "
        "code of refused joins seen",
        json_schema_extra={"items": {"anyOf": [{"enum": list(SERIES)}, {"pattern": r"^errors\..+"}]}},
    )


def channel_row(app: App, key: StreamKey, second: int) -> dict[str, Any]:
    """One stream as this process sees it (ChannelRow), with `publications`: the publications it
    fanned out (fan_out's denominator; the cluster view sums its nodes' rows)."""
    subs = app.hub.subscribers(key)
    presence = app.hub.presences.get(key)
    stats = app.channel_stats.of(key)
    messages = dict.fromkeys(KINDS, 0)
    deliveries = dict.fromkeys(KINDS, 0)
    rates_in = rates_out = dict.fromkeys(KINDS, 0.0)
    fan_out = None
    publications = 0
    if stats is not None:
        messages.update(stats.accepted)
        deliveries.update(stats.delivered)
        rates_in, rates_out = stats.rates(second)
        publications = stats.publications
        if publications:
            fan_out = round(sum(stats.delivered.values()) / publications, 3)
    return {
        "topic": key.sub_topic,
        "private": key.private,
        "subscribers": len(subs),
        "presence": presence.key_count() if presence is not None else 0,
        "messages": messages,
        "deliveries": deliveries,
        "messages_per_second": rates_in,
        "deliveries_per_second": rates_out,
        "messages_total": sum(messages.values()),
        "deliveries_total": sum(deliveries.values()),
        "messages_rate": round(sum(rates_in.values()), 3),
        "deliveries_rate": round(sum(rates_out.values()), 3),
        "fan_out": fan_out,
        "publications": publications,
    }


def streams(app: App, tid: str, private: bool | None = None) -> list[StreamKey]:
    """The tenant's streams with a subscriber here, and those idle but recently used, by topic."""
    keys = {k for k in app.hub.stream_keys() if k.tenant == tid}
    keys.update(k for k in app.channel_stats.streams if k.tenant == tid)
    if private is not None:
        keys = {k for k in keys if k.private is private}
    return sorted(keys, key=lambda k: (k.sub_topic, k.private))


def subscriber_list(app: App, key: StreamKey) -> list[dict[str, Any]]:
    """The stream's subscribers in this process (Subscriber)."""
    return [
        {
            "connection": getattr(getattr(sub, "socket", None), "id", None),
            "role": _text(sub.claims.get("role")),
            "sub": _text(sub.claims.get("sub")),
            "join_ref": getattr(sub, "join_ref", None),
        }
        for sub in app.hub.subscribers(key)
    ]


def routes(api: AdminApi, app: App) -> None:
    """Add the channel and time-series routes."""

    def shutdown_here(args: dict[str, Any]) -> int:
        """Shut the stream's subscribers in this process down; how many there were."""
        subs = app.hub.subscribers(
            StreamKey(str(args.get("tenant")), bool(args.get("private")), str(args.get("topic")))
        )
        for sub in subs:
            sub.shutdown(SHUTDOWN_TEXT)
        return len(subs)

    app.node_queries["shutdown"] = shutdown_here

    def stream_of(call: Call, tenant: Tenant) -> StreamKey:
        return StreamKey(tenant.external_id, call.query.private, call.params["topic"])

    @api.route("GET", "/admin/v1/tenants/:id/channels", query=ChannelListQuery, response=Page[ChannelRow])
    async def list_channels(call: Call) -> dict[str, Any]:
        """The tenant's streams: subscribers, presence keys, messages in and deliveries out."""
        tenant = tenant_of(app.tenants, call)
        second = int(app.now())
        rows = [channel_row(app, k, second) for k in streams(app, tenant.external_id, call.query.private)]
        return paginate(rows, call.query, sortable=SORTABLE, default="-subscribers")

    @api.route("GET", "/admin/v1/tenants/:id/channels/:topic", query=ChannelQuery, response=ChannelDetail)
    async def get_channel(call: Call) -> dict[str, Any]:
        """One stream (`?private=true` for the private one), with its subscribers."""
        tenant = tenant_of(app.tenants, call)
        key = stream_of(call, tenant)
        subs = app.hub.subscribers(key)
        if not subs and app.channel_stats.of(key) is None:
            raise not_found()
        detail = channel_row(app, key, int(app.now()))
        detail["subscriber_list"] = subscriber_list(app, key)
        return detail

    @api.route(
        "DELETE",
        "/admin/v1/tenants/:id/channels/:topic",
        query=ChannelQuery,
        response=ShutdownResult,
        action="channel.shutdown",
    )
    async def shutdown_channel(call: Call) -> dict[str, Any]:
        """Shut the channel down for every subscriber (on every node of a cluster): a system
        message, then phx_close."""
        tenant = tenant_of(app.tenants, call)
        key = stream_of(call, tenant)
        call.target = f"{tenant.external_id}/{key.sub_topic}"
        call.detail = {"private": key.private}
        args = {"tenant": tenant.external_id, "topic": key.sub_topic, "private": key.private}
        # In a cluster every node shuts its own subscribers down (Cluster.ask(), this node too).
        answers = await app.nodes.ask("shutdown", args) if app.nodes is not None else {"": shutdown_here(args)}
        closed = sum(n for n in answers.values() if isinstance(n, int))
        if not closed:
            raise not_found()
        call.detail["closed"] = closed
        return {"closed": closed, "message": SHUTDOWN_TEXT}

    @api.route("GET", "/admin/v1/tenants/:id/timeseries", query=TimeSeriesQuery, response=TimeSeriesAnswer)
    async def timeseries(call: Call) -> dict[str, Any]:
        """History of the tenant's figures: per second over 10 minutes, per minute over an hour."""
        tenant = tenant_of(app.tenants, call)
        query: TimeSeriesQuery = call.query
        if query.window not in WINDOWS:
            raise invalid("window", f"must be one of {', '.join(WINDOWS)}")
        every = app.timeseries.names(tenant.external_id)
        names = [n.strip() for n in query.series.split(",") if n.strip()] if query.series else every
        unknown = [n for n in names if n not in SERIES and not _is_error_series(n)]
        if unknown or not names:
            raise invalid("series", f"unknown series {', '.join(unknown) or '(none)'}: known are {', '.join(SERIES)}")
        data = app.timeseries.window(tenant.external_id, names, query.window)
        step, count, end = data["step_seconds"], data["count"], data["end"]
        stamps = [] if end is None else [_iso(end - step * (count - 1 - i)) for i in range(count)]
        return {
            "window": query.window,
            "step_seconds": step,
            "timestamps": stamps,
            "series": data["series"],
            "series_names": app.timeseries.names(tenant.external_id),
        }


def _is_error_series(name: str) -> bool:
    return name.startswith(ERRORS_PREFIX) and len(name) > len(ERRORS_PREFIX)


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def _iso(unix: float) -> str:
    return datetime.fromtimestamp(unix, UTC).isoformat().replace("+00:00", "Z")
