"""The live introspection routes of the admin API, and its operator actions on connections:
the node, tenants, connections, presence, recent errors, a test broadcast and test tokens.

admin/__init__.py calls routes() with the AdminApi and the App. Every answer is read from
memory when it is asked for (the sockets, the hub, incidents.py, runtime.py): nothing here
runs on a message's path, and nothing is kept between requests. Secrets never leave: a
tenant's settings say whether it has an HS secret or JWKS, never what they are, and a
minted token is not written to the audit log."""

from __future__ import annotations

import dataclasses
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import orjson
from pydantic import BaseModel, ConfigDict, Field
from websockets.frames import CloseCode

from .. import __version__, broadcast
from ..attribution import client_library
from ..hub import REST_KIND, StreamKey
from ..jwt import sign
from ..runtime import process_stats
from .endpoints import AdminApi, Call, ListQuery, Model, Page, invalid, not_found, paginate, tenant_of

if TYPE_CHECKING:
    from ..app import App
    from ..socket import RealtimeSocket
    from ..tenants import Tenant

__all__ = ["CONNECTION_SORTS", "Connection", "Incident", "client_library", "connection_row", "routes"]

_TOKEN_MAX_TTL = 30 * 24 * 3600  # seconds: test tokens are for testing
# The fields a connections list sorts by.
CONNECTION_SORTS = (
    "id",
    "connected_at",
    "remote_address",
    "client_library",
    "role",
    "sub",
    "channels",
    "bytes_in",
    "bytes_out",
    "messages_in",
    "messages_out",
    "write_backlog_bytes",
)


def iso(seconds: float) -> str:
    """A Unix time as an ISO 8601 UTC string (the admin API's timestamps)."""
    return datetime.fromtimestamp(seconds, UTC).isoformat().replace("+00:00", "Z")


# Models: the answers' shapes, for /admin/v1/openapi.json.


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class LoopLagMs(BaseModel):
    p50: float | None
    p99: float | None
    max: float | None


class Node(_Open):
    version: str
    started_at: str
    uptime_ms: int
    pid: int
    python: str
    event_loop_lag_ms: LoopLagMs
    rss_bytes: int
    cpu: dict[str, float | None]
    open_fds: int | None
    connections: int
    http_connections: int
    tenants: int
    background_tasks: dict[str, Any]


class TenantCounts(BaseModel):
    connections: int
    users: int
    channels: int
    streams: int
    presence_keys: int
    services_running: bool
    replication_connected: bool


class TenantView(_Open):
    id: str
    name: str
    settings: dict[str, Any]
    plan: dict[str, Any]
    limits: dict[str, dict[str, int]]
    quota: dict[str, dict[str, Any]]
    counts: TenantCounts


class Connection(BaseModel):
    id: str
    connected_at: str
    remote_address: str
    vsn: str | None
    client_library: str | None
    client_version: str | None
    client_info: str | None
    user_agent: str | None
    role: str | None
    sub: str | None
    topics: list[dict[str, Any]]
    channels: int
    bytes_in: int
    bytes_out: int
    messages_in: int
    messages_out: int
    write_backlog_bytes: int


class Disconnected(BaseModel):
    id: str
    close_code: int
    message: str
    node: str = Field(description="the node the connection was on (GET /admin/v1/nodes)")


class Presence(BaseModel):
    data: dict[str, list[dict[str, Any]]]


class Incident(BaseModel):
    at: str
    code: str
    reason: str
    topic: str | None
    connection: str | None


class Errors(BaseModel):
    data: list[Incident]
    next_cursor: str | None = None
    counts: dict[str, int]
    per_minute: list[dict[str, Any]]


class StreamQuery(BaseModel):
    model_config = ConfigDict(extra="ignore")

    private: bool = False


class TestBroadcast(Model):
    topic: str = Field(min_length=1, max_length=255)
    event: str = Field(min_length=1, max_length=255)
    payload: dict[str, Any]
    private: bool = False


class Delivered(BaseModel):
    delivered: int


class TokenRequest(Model):
    role: str = Field("authenticated", min_length=1, max_length=255)
    sub: str | None = Field(None, max_length=255)
    claims: dict[str, Any] = Field(default_factory=dict)
    ttl_seconds: int = Field(3600, ge=1, le=_TOKEN_MAX_TTL)


class Token(BaseModel):
    token: str
    expires_at: str


# What the routes read.


def _sockets(app: App, tenant: Tenant) -> list[RealtimeSocket]:
    return [s for s in app.sockets if s.tenant is tenant and not s.closed]


def _tenant_view(app: App, tenant: Tenant, sockets: list[RealtimeSocket]) -> dict[str, Any]:
    keys = tenant.keys
    jwks = keys.jwks.get("keys") if isinstance(keys.jwks, dict) else None
    webhook = tenant.alert_webhook_url
    plan = tenant.plan
    streams = {channel.key for socket in sockets for channel in socket.channels.values()}
    presence_keys = sum(
        len(topic.state()) for key, topic in app.hub.presences.items() if key.tenant == tenant.external_id
    )
    return {
        "id": tenant.external_id,
        "name": tenant.name,
        "settings": {
            "private_only": tenant.private_only,
            "suspend": tenant.suspend,
            "presence_enabled": tenant.presence_enabled,
            "organization": tenant.organization,
            "billing_cycle_day": tenant.billing_cycle_day,
            "enforce_quota": tenant.enforce_quota,
            # A webhook URL may carry a token in its path or query: only where it points.
            "alert_webhook": f"{urlsplit(webhook).scheme}://{urlsplit(webhook).hostname}" if webhook else None,
            "extensions": [e.get("type") for e in tenant.extensions],
            "jwt": {"hs_secret": keys.secret is not None, "jwks_keys": len(jwks) if isinstance(jwks, list) else 0},
        },
        "plan": {
            "name": plan.name,
            "title": plan.title,
            "base_fee_usd": plan.base_fee_usd,
            "included_messages": plan.included_messages,
            "included_peak_connections": plan.included_peak_connections,
            "included_egress_bytes": plan.included_egress_bytes,
            "egress_usd_per_gb": plan.egress_usd_per_gb,
            "hard_quota": plan.hard_quota,
        },
        "limits": {"effective": dataclasses.asdict(tenant.limits), "explicit": dict(tenant.explicit_limits)},
        # This billing cycle's use of the plan's quotas (usage.py), counts not yet flushed included.
        "quota": app.usage.quota(tenant),
        "counts": {
            "connections": len(sockets),
            "users": tenant.users,
            "channels": sum(len(s.channels) for s in sockets),
            "streams": len(streams),
            "presence_keys": presence_keys,
            "services_running": tenant.external_id in app.services,
            "replication_connected": app.replication_connected(tenant),
        },
    }


def connection_row(socket: RealtimeSocket) -> dict[str, Any]:
    """One connection as the connections list shows it (Connection)."""
    conn = socket.conn
    library, version = client_library(socket.client_info, socket.user_agent)
    claims = socket.claims
    role, sub = claims.get("role"), claims.get("sub")
    return {
        "id": socket.id,
        "connected_at": iso(socket.connected_at),
        "remote_address": socket.remote,
        "vsn": socket.vsn,
        "client_library": library,
        "client_version": version,
        "client_info": socket.client_info,
        "user_agent": socket.user_agent,
        "role": role if isinstance(role, str) else None,
        "sub": sub if isinstance(sub, str) else None,
        "topics": [{"topic": c.sub_topic, "private": c.private} for c in socket.channels.values()],
        "channels": len(socket.channels),
        "bytes_in": conn.bytes_in,
        "bytes_out": conn.bytes_out,
        "messages_in": conn.messages_in,
        "messages_out": conn.messages_out,
        "write_backlog_bytes": conn.write_backlog,
    }


def _client_meta(meta: dict[str, Any]) -> dict[str, Any]:
    """A presence meta as realtime-js's presenceState() shows it: phx_ref as presence_ref,
    without phx_ref_prev (docs/protocol.md §5.4)."""
    shown = {k: v for k, v in meta.items() if k not in ("phx_ref", "phx_ref_prev")}
    shown["presence_ref"] = meta.get("phx_ref")
    return shown


def routes(api: AdminApi, app: App) -> None:
    """Add the introspection routes over `app` to `api`."""

    @api.route("GET", "/admin/v1/node", response=Node)
    async def node(call: Call) -> dict[str, Any]:
        """This server process: version, uptime, event-loop lag, memory, CPU, sockets, tasks."""
        stats = process_stats()
        now = app.now()
        tasks = app.tasks.names()
        by_kind: dict[str, int] = {}  # "join realtime:room" counts as "join"
        for name in tasks:
            kind = name.split(" ", 1)[0]
            by_kind[kind] = by_kind.get(kind, 0) + 1
        server = app.server
        return {
            "version": __version__,
            "started_at": iso(app.started_at),
            "uptime_ms": int((time.time() - app.started_at) * 1000),
            "pid": stats["pid"],
            "python": f"{stats['implementation']} {stats['python']}",
            "event_loop_lag_ms": app.loop_lag.percentiles(now),
            "rss_bytes": stats["rss_bytes"],
            "cpu": {
                "user_seconds": stats["cpu_user_seconds"],
                "system_seconds": stats["cpu_system_seconds"],
                "percent_last_minute": app.loop_lag.cpu_percent(now),
                "cpus": stats["cpus"],
            },
            "open_fds": stats["open_fds"],
            "connections": len(app.sockets),
            "http_connections": len(server.http_connections) if server is not None else 0,
            "tenants": len(app.tenants),
            "background_tasks": {"count": len(tasks), "by_name": by_kind},
        }

    @api.route("GET", "/admin/v1/tenants", query=ListQuery, response=Page[TenantView])
    async def tenants(call: Call) -> dict[str, Any]:
        """Every tenant served: settings (no secrets), plan, limits and live counts."""
        by_tenant: dict[str, list[RealtimeSocket]] = {}
        for socket in app.sockets:
            if not socket.closed:
                by_tenant.setdefault(socket.tenant.external_id, []).append(socket)
        rows = [_tenant_view(app, t, by_tenant.get(t.external_id, [])) for t in app.tenants]
        for row in rows:
            row["connections"] = row["counts"]["connections"]  # a sortable top-level field
        return paginate(rows, call.query, sortable=("id", "name", "connections"), default="id")

    @api.route("GET", "/admin/v1/tenants/:id", response=TenantView)
    async def tenant(call: Call) -> dict[str, Any]:
        """One tenant: settings (no secrets), plan, limits and live counts."""
        found = tenant_of(app.tenants, call)
        return _tenant_view(app, found, _sockets(app, found))

    @api.route("GET", "/admin/v1/tenants/:id/connections", query=ListQuery, response=Page[Connection])
    async def connections(call: Call) -> dict[str, Any]:
        """The tenant's open WebSocket connections, with their client, identity and traffic."""
        rows = [connection_row(s) for s in _sockets(app, tenant_of(app.tenants, call))]
        return paginate(rows, call.query, sortable=CONNECTION_SORTS, default="connected_at")

    @api.route(
        "DELETE",
        "/admin/v1/tenants/:id/connections/:conn",
        response=Disconnected,
        action="connection.disconnect",
    )
    async def disconnect(call: Call) -> dict[str, Any]:
        """Disconnect one connection as upstream drains a tenant: `Server requested disconnect`
        on each of its channels, then close 1012. In a cluster, on whichever node it is (`node`)."""
        tenant = tenant_of(app.tenants, call)
        conn_id = call.params["conn"]
        call.target = f"{tenant.external_id}/{conn_id}"
        args = {"tenant": tenant.external_id, "connection": conn_id}
        done = disconnect_here(args)
        if done is None and app.nodes is not None:
            # Not here: the node that holds it disconnects it (Cluster.ask(); the others answer null).
            answers = await app.nodes.ask("disconnect", args)
            done = next((answer for answer in answers.values() if answer is not None), None)
        if done is None:
            raise not_found()
        call.detail = {"node": done["node"]}
        return done

    def disconnect_here(args: dict[str, Any]) -> dict[str, Any] | None:
        """Disconnect the connection if it is in this process (Disconnected), else None."""
        tenant = app.tenants.get(str(args.get("tenant")))
        found = [s for s in _sockets(app, tenant) if s.id == args.get("connection")] if tenant is not None else []
        if not found:
            return None
        text = app.disconnect_socket(found[0])
        return {"id": found[0].id, "close_code": int(CloseCode.SERVICE_RESTART), "message": text, "node": app.node_id}

    app.node_queries["disconnect"] = disconnect_here

    @api.route("GET", "/admin/v1/tenants/:id/channels/:topic/presence", query=StreamQuery, response=Presence)
    async def presence(call: Call) -> dict[str, Any]:
        """Who is present on a stream, as realtime-js's presenceState() shows it (in a cluster:
        on every node, as a joining channel would get it)."""
        tenant = tenant_of(app.tenants, call)
        key = StreamKey(tenant.external_id, call.query.private, call.params["topic"])
        state = app.broker.presence_state(key)
        if not state and not app.hub.subscribers(key):
            raise not_found()
        return {"data": {name: [_client_meta(m) for m in entry["metas"]] for name, entry in state.items()}}

    @api.route("GET", "/admin/v1/tenants/:id/errors", query=ListQuery, response=Errors)
    async def errors(call: Call) -> dict[str, Any]:
        """The tenant's recent errors (newest first, a bounded ring), with counts per code
        since start and per minute over the last hour."""
        tenant = tenant_of(app.tenants, call)
        rows = [{**item, "at": iso(item["at"])} for item in app.incidents.recent(tenant.external_id)]
        page = paginate(rows, call.query, sortable=("at", "code", "topic", "connection"))
        totals, minutes = app.incidents.counts(tenant.external_id)
        page["counts"] = totals
        page["per_minute"] = [{"at": iso(minute * 60), "counts": counts} for minute, counts in minutes]
        return page

    @api.route(
        "POST", "/admin/v1/tenants/:id/broadcast", body=TestBroadcast, response=Delivered, action="tenant.broadcast"
    )
    async def test_broadcast(call: Call) -> dict[str, Any]:
        """A test broadcast, delivered and counted as a REST message; answers how many sockets got it."""
        tenant = tenant_of(app.tenants, call)
        body: TestBroadcast = call.body
        call.detail = {"topic": body.topic, "event": body.event, "private": body.private}
        encoded = orjson.dumps(body.payload)
        if tenant.payload_too_large(len(encoded)):
            raise invalid("payload", "Payload size exceeds tenant limit")
        now = app.now()
        tenant.events.add(1, now)
        # Accepted, then delivered, as rest_api.py's batch endpoint does: metered as `rest`.
        app.hub.accepted(tenant, REST_KIND, StreamKey(tenant.external_id, body.private, body.topic), 1)
        delivered = broadcast.publish_json(
            app.broker, tenant, body.topic, body.private, body.event, orjson.Fragment(encoded), None, now
        )
        return {"delivered": delivered}

    @api.route("POST", "/admin/v1/tenants/:id/tokens", body=TokenRequest, response=Token, action="tenant.token")
    async def tokens(call: Call) -> dict[str, Any]:
        """A JWT signed with the tenant's own HS secret, for testing policies."""
        tenant = tenant_of(app.tenants, call)
        body: TokenRequest = call.body
        call.detail = {"role": body.role, "sub": body.sub, "ttl_seconds": body.ttl_seconds}  # never the token
        secret = tenant.keys.secret
        if not secret:
            raise invalid(
                "tenant",
                "has no HS secret, only JWKS keys: the server cannot sign its tokens; sign them with the"
                " tenant's own private key",
            )
        now = int(time.time())
        claims = {**body.claims, "role": body.role, "iat": now, "exp": now + body.ttl_seconds}
        if body.sub is not None:
            claims["sub"] = body.sub
        return {"token": sign(claims, secret), "expires_at": iso(claims["exp"])}
