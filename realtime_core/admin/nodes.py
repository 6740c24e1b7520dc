"""The cluster routes of the admin API: the nodes, and the cluster's channels, connections and
errors summed over them (README, "Presence, limits and usage across nodes").

Every node rewrites its record in Redis at each liveness beat (cluster/nodes.py), so the
nodes and the cluster's totals cost one HGETALL and are at most a beat old; the cluster's
connection counts are Redis's exact totals (cluster/counters.py). A tenant's connections,
streams, recent errors and time series are asked of every live node (Cluster.ask(), one
question over Redis pub/sub, answered from each node's memory) and say which node each row is
on. Without REDIS_URL the cluster is this process, and each view answers what the process's
own view does (admin/introspect.py, admin/channels.py), plus the node."""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field

from .. import __version__
from ..hub import KINDS, StreamKey
from ..timeseries import SERIES, WINDOWS
from .channels import (
    SORTABLE,
    ChannelListQuery,
    ChannelQuery,
    ChannelRow,
    Subscriber,
    TimeSeriesQuery,
    channel_row,
    streams,
    subscriber_list,
)
from .endpoints import AdminApi, Call, ListQuery, Page, invalid, not_found, paginate, tenant_of
from .introspect import CONNECTION_SORTS, Connection, Incident, connection_row, iso

if TYPE_CHECKING:
    from ..app import App

__all__ = ["ask_every_node", "routes"]


class NodeRow(BaseModel):
    id: str
    address: str | None
    pid: int
    started_at: str
    last_seen: str
    connections: int
    channels: int
    version: str
    alive: bool
    died_at: str | None = None
    tenants: dict[str, dict[str, Any]]
    pubsub_lag_ms: list[tuple[int, float | None]]


class Nodes(BaseModel):
    data: list[NodeRow]


class TenantTotals(BaseModel):
    connections: int
    channels: int
    users: int
    errors: dict[str, int]
    by_node: dict[str, dict[str, Any]]


class ClusterView(BaseModel):
    name: str | None
    nodes: int
    connections: int
    channels: int
    tenants: dict[str, TenantTotals]


class ClusterConnection(Connection):
    node: str


class ClusterIncident(Incident):
    node: str


class ClusterErrors(BaseModel):
    data: list[ClusterIncident]
    next_cursor: str | None = None
    counts: dict[str, int]
    per_minute: list[dict[str, Any]] = Field(description="counts by code per minute over the last hour, summed")
    by_node: dict[str, dict[str, int]]


class ClusterChannel(ChannelRow):
    by_node: dict[str, int] = Field(description="subscribers on each node")


class ClusterSubscriber(Subscriber):
    node: str


class ClusterChannelDetail(ClusterChannel):
    subscriber_list: list[ClusterSubscriber]


class ClusterTimeSeries(BaseModel):
    window: str
    step_seconds: int
    timestamps: list[str]
    series: dict[str, list[float]]
    series_names: list[str] = Field(description="every series of the tenant on any node (errors.<code> included)")
    nodes: list[str]


# Series that are one process's reading rather than a share of a total (replication runs on one
# node): the cluster's value is the highest; every other series is summed over the nodes.
_HIGHEST = ("replication_lag_bytes", "replication_lag_ms", "commit_to_dispatch_ms")


def _merge_series(answers: dict[str, dict[str, Any]], names: list[str], points: int) -> dict[str, Any]:
    """The nodes' window() answers on one time axis (each node samples on its own clock's seconds)."""
    step = next(iter(answers.values()))["step_seconds"] if answers else 1
    at: dict[int, dict[str, float]] = {}
    for answer in answers.values():
        end, count = answer["end"], answer["count"]
        if end is None:
            continue
        for name in names:
            for i, value in enumerate(answer["series"].get(name, [])):
                slot = at.setdefault(end - step * (count - 1 - i), {})
                slot[name] = max(slot.get(name, 0.0), value) if name in _HIGHEST else slot.get(name, 0.0) + value
    stamps = sorted(at)[-points:]
    return {
        "step_seconds": step,
        "timestamps": [iso(t) for t in stamps],
        "series": {name: [round(at[t].get(name, 0.0), 3) for t in stamps] for name in names},
    }


_BY_KIND = ("messages", "deliveries", "messages_per_second", "deliveries_per_second")


def _merge_channels(answers: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """The nodes' channel_row()s of each stream as one: counts and rates summed (by kind too),
    presence keys the highest (every node holds them all). Each publication is fanned out on
    every node with subscribers: the cluster's fan-out is the deliveries over the most
    publications one node fanned out."""
    merged: dict[tuple[str, bool], dict[str, Any]] = {}
    for node, rows in answers.items():
        for row in rows:
            into = merged.get((row["topic"], row["private"]))
            if into is None:
                into = merged[(row["topic"], row["private"])] = {
                    "topic": row["topic"],
                    "private": row["private"],
                    "subscribers": 0,
                    "presence": 0,
                    **{name: dict.fromkeys(KINDS, 0) for name in _BY_KIND},
                    "messages_total": 0,
                    "deliveries_total": 0,
                    "publications": 0,
                    "by_node": {},
                }
            into["subscribers"] += row["subscribers"]
            into["by_node"][node] = row["subscribers"]
            into["presence"] = max(into["presence"], row["presence"])
            for name in _BY_KIND:
                for kind, value in row[name].items():
                    into[name][kind] = into[name].get(kind, 0) + value
            into["messages_total"] += row["messages_total"]
            into["deliveries_total"] += row["deliveries_total"]
            into["publications"] = max(into["publications"], row["publications"])
    for into in merged.values():
        for name in ("messages_per_second", "deliveries_per_second"):
            into[name] = {kind: round(value, 3) for kind, value in into[name].items()}
        into["messages_rate"] = round(sum(into["messages_per_second"].values()), 3)
        into["deliveries_rate"] = round(sum(into["deliveries_per_second"].values()), 3)
        publications = into["publications"]
        into["fan_out"] = round(into["deliveries_total"] / publications, 3) if publications else None
    return list(merged.values())


def _row(record: dict[str, Any]) -> dict[str, Any]:
    died = record.get("died_at")
    return {
        **record,
        "started_at": iso(record["started_at"]),
        "last_seen": iso(record["last_seen"]),
        "died_at": iso(died) if died is not None else None,
    }


async def ask_every_node(app: App, name: str, args: dict[str, Any]) -> dict[str, Any]:
    """Every live node's answer to the node query `name` by node id (Cluster.ask()); this
    node's alone without a cluster."""
    if app.nodes is not None:
        return await app.nodes.ask(name, args)
    return {app.node_id: app.node_queries[name](args)}


def routes(api: AdminApi, app: App) -> None:
    """Add the cluster routes over `app` to `api`."""

    async def records() -> list[dict[str, Any]]:
        if app.nodes is not None:
            return await app.nodes.records()
        sockets = [s for s in app.sockets if not s.closed]
        tenants: dict[str, dict[str, Any]] = {}
        for socket in sockets:
            counts = tenants.setdefault(socket.tenant.external_id, {"connections": 0, "channels": 0})
            counts["connections"] += 1
            counts["channels"] += len(socket.channels)
        return [
            {
                "id": app.node_id,
                "address": f"{app.settings.host}:{app.port}" if app.port is not None else None,
                "pid": os.getpid(),
                "started_at": app.started_at,
                "version": __version__,
                "last_seen": time.time(),
                "connections": len(sockets),
                "channels": sum(len(s.channels) for s in sockets),
                "tenants": tenants,
                "pubsub_lag_ms": [],
                "alive": True,
            }
        ]

    def connections_here(args: dict[str, Any]) -> list[dict[str, Any]]:
        tenant = app.tenants.get(str(args.get("tenant")))
        if tenant is None:
            return []
        return [connection_row(s) for s in app.sockets if s.tenant is tenant and not s.closed]

    def errors_here(args: dict[str, Any]) -> dict[str, Any]:
        tenant_id = str(args.get("tenant"))
        totals, minutes = app.incidents.counts(tenant_id)
        return {"recent": app.incidents.recent(tenant_id), "counts": totals, "per_minute": minutes}

    def timeseries_here(args: dict[str, Any]) -> dict[str, Any]:
        """The window of the named series (or all of the tenant's here), and their names here."""
        tid = str(args.get("tenant"))
        names = app.timeseries.names(tid)
        answer = app.timeseries.window(tid, list(args.get("names") or names), str(args.get("window")))
        return {**answer, "names": names}

    def stream(args: dict[str, Any]) -> StreamKey:
        return StreamKey(str(args.get("tenant")), bool(args.get("private")), str(args.get("topic")))

    def channels_here(args: dict[str, Any]) -> list[dict[str, Any]]:
        private = args.get("private")
        second = int(app.now())
        keys = streams(app, str(args.get("tenant")), None if private is None else bool(private))
        return [{**channel_row(app, k, second), "presence": len(app.broker.presence_state(k))} for k in keys]

    def channel_here(args: dict[str, Any]) -> dict[str, Any] | None:
        key = stream(args)
        if not app.hub.subscribers(key) and app.channel_stats.of(key) is None:
            return None
        row = channel_row(app, key, int(app.now()))
        return {**row, "presence": len(app.broker.presence_state(key)), "subscriber_list": subscriber_list(app, key)}

    app.node_queries["channels"] = channels_here
    app.node_queries["channel"] = channel_here
    app.node_queries["connections"] = connections_here
    app.node_queries["errors"] = errors_here
    app.node_queries["timeseries"] = timeseries_here

    def tenant_id(call: Call) -> str:
        return tenant_of(app.tenants, call).external_id

    @api.route("GET", "/admin/v1/cluster/tenants/:id/connections", query=ListQuery, response=Page[ClusterConnection])
    async def cluster_connections(call: Call) -> dict[str, Any]:
        """The tenant's open connections on every live node, each with the node it is on."""
        answers = await ask_every_node(app, "connections", {"tenant": tenant_id(call)})
        rows = [{**row, "node": node} for node, answer in answers.items() for row in answer]
        return paginate(rows, call.query, sortable=(*CONNECTION_SORTS, "node"), default="connected_at")

    @api.route("GET", "/admin/v1/cluster/tenants/:id/channels", query=ChannelListQuery, response=Page[ClusterChannel])
    async def cluster_channels(call: Call) -> dict[str, Any]:
        """The tenant's streams on every live node (those idle but recently used too):
        subscribers (and by node), presence keys, messages accepted, deliveries and their rates
        summed, fan-out."""
        private = call.query.private
        answers = await ask_every_node(app, "channels", {"tenant": tenant_id(call), "private": private})
        rows = sorted(_merge_channels(answers), key=lambda r: (r["topic"], r["private"]))
        return paginate(rows, call.query, sortable=SORTABLE, default="-subscribers")

    @api.route(
        "GET", "/admin/v1/cluster/tenants/:id/channels/:topic", query=ChannelQuery, response=ClusterChannelDetail
    )
    async def cluster_channel(call: Call) -> dict[str, Any]:
        """One stream (`?private=true` for the private one) on every live node, with its
        subscribers and the node each is on."""
        args = {"tenant": tenant_id(call), "topic": call.params["topic"], "private": call.query.private}
        answers = {node: row for node, row in (await ask_every_node(app, "channel", args)).items() if row is not None}
        if not answers:
            raise not_found()
        detail = _merge_channels({node: [row] for node, row in answers.items()})[0]
        detail["subscriber_list"] = [
            {**sub, "node": node} for node, row in sorted(answers.items()) for sub in row["subscriber_list"]
        ]
        return detail

    @api.route("GET", "/admin/v1/cluster/tenants/:id/errors", query=ListQuery, response=ClusterErrors)
    async def cluster_errors(call: Call) -> dict[str, Any]:
        """The tenant's recent errors on every live node (newest first), each with its node, the
        counts per code since each node started, summed and by node, and per minute over the
        last hour, summed."""
        answers = await ask_every_node(app, "errors", {"tenant": tenant_id(call)})
        rows = [{**item, "node": node} for node, answer in answers.items() for item in answer["recent"]]
        rows.sort(key=lambda r: r["at"], reverse=True)
        page = paginate(
            [{**r, "at": iso(r["at"])} for r in rows],
            call.query,
            sortable=("at", "code", "topic", "connection", "node"),
        )
        counts: dict[str, int] = {}
        for answer in answers.values():
            for code, n in answer["counts"].items():
                counts[code] = counts.get(code, 0) + n
        minutes: dict[int, dict[str, int]] = {}
        for answer in answers.values():
            for minute, by_code in answer.get("per_minute", []):
                into = minutes.setdefault(minute, {})
                for code, n in by_code.items():
                    into[code] = into.get(code, 0) + n
        page["counts"] = counts
        page["per_minute"] = [{"at": iso(minute * 60), "counts": minutes[minute]} for minute in sorted(minutes)]
        page["by_node"] = {node: answer["counts"] for node, answer in answers.items()}
        return page

    @api.route("GET", "/admin/v1/cluster/tenants/:id/timeseries", query=TimeSeriesQuery, response=ClusterTimeSeries)
    async def cluster_timeseries(call: Call) -> dict[str, Any]:
        """The tenant's time series (default: every one on any node) summed over the live nodes
        (the replication figures: their highest), on one time axis; `nodes`: the nodes that
        answered."""
        tid = tenant_id(call)
        query: TimeSeriesQuery = call.query
        if query.window not in WINDOWS:
            raise invalid("window", f"must be one of {', '.join(WINDOWS)}")
        names = [n.strip() for n in query.series.split(",") if n.strip()] if query.series else None
        unknown = [n for n in names or [] if n not in SERIES and not n.startswith("errors.")]
        if unknown or names == []:
            raise invalid("series", f"unknown series {', '.join(unknown) or '(none)'}: known are {', '.join(SERIES)}")
        answers = await ask_every_node(app, "timeseries", {"tenant": tid, "names": names, "window": query.window})
        every = list(SERIES)
        for answer in answers.values():
            every += [name for name in answer.get("names", []) if name not in every]
        span, step = WINDOWS[query.window]
        merged = _merge_series(answers, names or every, span // step)
        return {"window": query.window, **merged, "series_names": every, "nodes": sorted(answers)}

    @api.route("GET", "/admin/v1/nodes", response=Nodes)
    async def nodes(call: Call) -> dict[str, Any]:
        """The cluster's nodes (live, and dead ones for 10 minutes), each as of its last beat."""
        rows = sorted(await records(), key=lambda r: (not r["alive"], r["started_at"], r["id"]))
        return {"data": [_row(r) for r in rows]}

    @api.route("GET", "/admin/v1/cluster", response=ClusterView)
    async def cluster(call: Call) -> dict[str, Any]:
        """The live nodes' channels, connections, users and errors by tenant, with each node's
        share; connections are the cluster's exact totals."""
        live = [r for r in await records() if r["alive"]]
        exact = await app.nodes.counters.connections() if app.nodes is not None else None
        tenants: dict[str, dict[str, Any]] = {}
        for record in live:
            for tenant_id, counts in record["tenants"].items():
                into = tenants.setdefault(
                    tenant_id, {"connections": 0, "channels": 0, "users": 0, "errors": {}, "by_node": {}}
                )
                into["connections"] += counts.get("connections", 0)
                into["channels"] += counts.get("channels", 0)
                into["users"] += counts.get("users", 0)
                for code, n in counts.get("errors", {}).items():
                    into["errors"][code] = into["errors"].get(code, 0) + n
                into["by_node"][record["id"]] = counts
        if exact is not None:
            for tenant_id, total in exact.items():
                tenants.setdefault(
                    tenant_id, {"connections": 0, "channels": 0, "users": 0, "errors": {}, "by_node": {}}
                )["connections"] = total
        return {
            "name": app.settings.cluster_name if app.nodes is not None else None,
            "nodes": len(live),
            "connections": sum(t["connections"] for t in tenants.values()),
            "channels": sum(t["channels"] for t in tenants.values()),
            "tenants": tenants,
        }
