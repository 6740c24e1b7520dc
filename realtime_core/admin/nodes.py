"""The cluster routes of the admin API: the nodes, and the cluster's channels, connections and
errors summed over them (README, "Presence, limits and usage across nodes").

Every node rewrites its record in Redis at each liveness beat (cluster/nodes.py), so these
answers cost one HGETALL and are at most a beat old; the cluster's connection counts are
Redis's exact totals (cluster/counters.py). Without REDIS_URL the cluster is this process."""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from .. import __version__
from .endpoints import AdminApi, Call
from .introspect import iso

if TYPE_CHECKING:
    from ..app import App

__all__ = ["routes"]


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


def _row(record: dict[str, Any]) -> dict[str, Any]:
    died = record.get("died_at")
    return {
        **record,
        "started_at": iso(record["started_at"]),
        "last_seen": iso(record["last_seen"]),
        "died_at": iso(died) if died is not None else None,
    }


def routes(api: AdminApi, app: App) -> None:
    """Add the cluster routes over `app` to `api`."""

    async def records() -> list[dict[str, Any]]:
        if app.cluster is not None:
            return await app.cluster.records()
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
        exact = await app.cluster.counters.connections() if app.cluster is not None else None
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
            "name": app.settings.cluster_name if app.cluster is not None else None,
            "nodes": len(live),
            "connections": sum(t["connections"] for t in tenants.values()),
            "channels": sum(t["channels"] for t in tenants.values()),
            "tenants": tenants,
        }
