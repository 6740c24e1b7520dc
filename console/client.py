"""The one Python client of a running realtime-core server's admin API (`/admin/v1`).

The console's pages, the notebooks, the tests and the benchmarks call these methods; they get
typed records back, and tables (`Table`, and the records that hold rows) turn into pandas
DataFrames with `.to_frame()`. Every HTTP or connection failure raises AdminApiError. No
Streamlit here:

    >>> from console.client import AdminClient
    >>> admin = AdminClient()  # REALTIME_SERVER_URL and REALTIME_ADMIN_TOKEN, or arguments
    >>> admin.connections("realtime-dev", sort="-bytes_out").to_frame()

Records keep what the server sent beyond their named fields in `extra`, so a newer server
never breaks an older client."""

from __future__ import annotations

import contextlib
import dataclasses
import json as json_module
import os
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar
from urllib.parse import quote

import httpx
import pandas as pd

from realtime_core.metrics import Sample, parse_samples

__all__ = [
    "AdminApiError",
    "AdminClient",
    "AuditEntry",
    "AuthorizationResult",
    "Bill",
    "ChangeCheck",
    "Channel",
    "Cluster",
    "ClusterChannel",
    "ClusterConnection",
    "ClusterErrors",
    "ClusterNode",
    "Connection",
    "Disconnected",
    "Estimate",
    "Incident",
    "Node",
    "OrganizationBill",
    "Presence",
    "PricingBill",
    "Record",
    "Replication",
    "Table",
    "Tenant",
    "TimeSeries",
    "Trace",
    "Usage",
    "parse_prometheus",
]

DEFAULT_URL = "http://127.0.0.1:4000"

R = TypeVar("R", bound="Record")


class AdminApiError(Exception):
    """The admin API answered an error, or could not be reached (`status` None).

    `message` is the server's `message` (404 and others); `errors` its field errors (422,
    `{"field": ["…"]}`); `body` the decoded answer, if any."""

    def __init__(
        self,
        status: int | None,
        message: str,
        errors: dict[str, list[str]] | None = None,
        body: Any = None,
    ) -> None:
        super().__init__(f"{status} {message}" if status is not None else message)
        self.status = status
        self.message = message
        self.errors = errors or {}
        self.body = body


def parse_prometheus(text: str) -> pd.DataFrame:
    """Samples of a Prometheus text exposition as rows (metric, labels, value)."""
    rows = [{"metric": s.name, "labels": s.labels, "value": float(s.value)} for s in parse_samples(text)]
    return pd.DataFrame(rows, columns=["metric", "labels", "value"])


# Records


@dataclass
class Record:
    """An object of the API. Fields this client does not name are kept in `extra`."""

    extra: dict[str, Any] = field(default_factory=dict, kw_only=True, repr=False)

    @classmethod
    def from_json(cls: type[R], data: dict[str, Any]) -> R:
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        known = {name: data.get(_wire_name(name)) for name in names}
        extra = {k: v for k, v in data.items() if k not in {_wire_name(n) for n in names}}
        return cls(**known, extra=extra)

    def to_dict(self) -> dict[str, Any]:
        """The record as the server sent it (named fields and `extra`)."""
        out = {_wire_name(f.name): getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"}
        return {**out, **self.extra}


def _wire_name(name: str) -> str:
    return name.rstrip("_")  # `from_` is `from` on the wire


class Table(list[R], Generic[R]):
    """One page of a list: records, and the cursor of the next page (None on the last)."""

    def __init__(self, rows: list[R], next_cursor: str | None = None) -> None:
        super().__init__(rows)
        self.next_cursor = next_cursor

    def to_frame(self) -> pd.DataFrame:
        """One row per record; nested objects become dotted columns (`messages.broadcast`)."""
        return _frame([row.to_dict() for row in self])


def _frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    return pd.json_normalize(rows) if rows else pd.DataFrame()


@dataclass
class Node(Record):
    version: str
    started_at: str
    uptime_ms: int
    pid: int
    python: str
    event_loop_lag_ms: dict[str, float | None]
    rss_bytes: int
    cpu: dict[str, Any]
    open_fds: int | None
    connections: int
    http_connections: int
    tenants: int
    background_tasks: dict[str, Any]


@dataclass
class Tenant(Record):
    id: str
    name: str
    settings: dict[str, Any]
    plan: dict[str, Any]
    limits: dict[str, dict[str, int]]
    counts: dict[str, Any]


@dataclass
class Connection(Record):
    id: str
    connected_at: str
    remote_address: str
    vsn: str | None
    client_library: str | None
    client_version: str | None
    role: str | None
    sub: str | None
    topics: list[dict[str, Any]]
    bytes_in: int
    bytes_out: int
    messages_in: int
    messages_out: int
    write_backlog_bytes: int


@dataclass
class Disconnected(Record):
    id: str
    close_code: int
    message: str


@dataclass
class Channel(Record):
    """A stream (`GET …/channels`); `GET …/channels/{topic}` adds `subscriber_list`."""

    topic: str
    private: bool
    subscribers: int
    presence: int
    messages: dict[str, float]
    deliveries: dict[str, float]
    fan_out: float | None
    subscriber_list: list[dict[str, Any]] | None = None

    def subscribers_frame(self) -> pd.DataFrame:
        return _frame(self.subscriber_list or [])


@dataclass
class Presence(Record):
    """Who is present on a stream: key → metas, as realtime-js's presenceState() shows it."""

    data: dict[str, list[dict[str, Any]]]

    def to_frame(self) -> pd.DataFrame:
        return _frame([{"key": key, **meta} for key, metas in self.data.items() for meta in metas])


@dataclass
class Incident(Record):
    at: str
    code: str
    reason: str
    topic: str | None
    connection: str | None


@dataclass
class Errors(Record):
    """Recent errors (a page, newest first) and counts by code."""

    data: list[dict[str, Any]]
    next_cursor: str | None
    counts: dict[str, int]
    per_minute: list[dict[str, Any]]

    @property
    def incidents(self) -> Table[Incident]:
        return Table([Incident.from_json(row) for row in self.data], self.next_cursor)

    def to_frame(self) -> pd.DataFrame:
        return self.incidents.to_frame()

    def counts_frame(self) -> pd.DataFrame:
        """One row per minute, one column per code."""
        rows = [{"at": m["at"], **m["counts"]} for m in self.per_minute]
        return pd.DataFrame(rows).fillna(0) if rows else pd.DataFrame()


@dataclass
class ClusterConnection(Connection):
    """A connection and the node it is on."""

    node: str


@dataclass
class ClusterChannel(Channel):
    """A stream over every node: `by_node` holds the subscribers on each node; the one-stream
    view's `subscriber_list` names each subscriber's `node`."""

    by_node: dict[str, int] | None = None


@dataclass
class ClusterErrors(Errors):
    """Every node's recent errors (each row with its `node`), counts summed and `by_node`."""

    by_node: dict[str, dict[str, int]]


@dataclass
class ClusterNode(Record):
    """One server process of the cluster as of its last beat (a dead one for 10 minutes)."""

    id: str
    address: str | None
    pid: int
    started_at: str
    last_seen: str
    connections: int
    channels: int
    version: str
    alive: bool
    died_at: str | None
    tenants: dict[str, dict[str, Any]]
    pubsub_lag_ms: list[list[Any]]

    def lag_frame(self) -> pd.DataFrame:
        """The node's highest pub/sub lag (ms) at each beat, indexed by time (UTC)."""
        times = [at for at, _ in self.pubsub_lag_ms]
        values = [lag for _, lag in self.pubsub_lag_ms]
        frame = pd.DataFrame({"pubsub_lag_ms": values}, index=pd.to_datetime(times, unit="s", utc=True), dtype=float)
        frame.index.name = "at"
        return frame


@dataclass
class Cluster(Record):
    """The live nodes' totals, and per tenant (`tenants[id]`: connections, channels, users,
    errors by code, and `by_node`). `name` is None for a single process."""

    name: str | None
    nodes: int
    connections: int
    channels: int
    tenants: dict[str, dict[str, Any]]

    def to_frame(self) -> pd.DataFrame:
        """One row per tenant: connections, channels, users and errors (all codes)."""
        rows = [
            {
                "tenant": tid,
                "connections": t["connections"],
                "channels": t["channels"],
                "users": t["users"],
                "errors": sum(t["errors"].values()),
            }
            for tid, t in sorted(self.tenants.items())
        ]
        return pd.DataFrame(rows, columns=["tenant", "connections", "channels", "users", "errors"])

    def nodes_frame(self, tenant: str) -> pd.DataFrame:
        """The tenant's connections, channels and users on each node."""
        by_node = self.tenants.get(tenant, {}).get("by_node", {})
        rows = [
            {"node": node, **{k: counts.get(k, 0) for k in ("connections", "channels", "users")}}
            for node, counts in sorted(by_node.items())
        ]
        return pd.DataFrame(rows, columns=["node", "connections", "channels", "users"])


@dataclass
class Replication(Record):
    slots: list[dict[str, Any]]
    publication: dict[str, Any]
    messages: dict[str, Any]

    def to_frame(self) -> pd.DataFrame:
        """The replication slots."""
        return _frame(self.slots)

    def tables_frame(self) -> pd.DataFrame:
        """The publication's tables with their subscribers."""
        return _frame(self.publication.get("tables", []))


@dataclass
class TimeSeries(Record):
    window: str
    step_seconds: int
    timestamps: list[str]
    series: dict[str, list[float]]

    def to_frame(self) -> pd.DataFrame:
        """Indexed by time (UTC), one column per series."""
        frame = pd.DataFrame(self.series, index=pd.to_datetime(self.timestamps, utc=True))
        frame.index.name = "at"
        return frame


@dataclass
class Usage(Record):
    tenant: str
    from_: str
    to: str
    days: list[dict[str, Any]] | None
    total: dict[str, Any]

    def to_frame(self) -> pd.DataFrame:
        """One row per day (or hour, with granularity=hour): messages by kind and peak connections."""
        return _frame(self.days if self.days is not None else self.extra.get("hours", []))


@dataclass
class PricingBill(Record):
    plan: str
    total_usd: float
    base_fee_usd: float
    restricted: bool
    lines: list[dict[str, Any]]

    def to_frame(self) -> pd.DataFrame:
        return _frame(self.lines)


@dataclass
class Bill(Record):
    """A tenant's current cycle: plan, quota status, the bill so far and projected."""

    plan: Any
    quota: dict[str, Any]
    so_far: dict[str, Any]
    projected: dict[str, Any]
    window: Any

    def to_frame(self) -> pd.DataFrame:
        """The line items so far and projected."""
        rows = [{"bill": name, **line} for name in ("so_far", "projected") for line in getattr(self, name)["lines"]]
        return _frame(rows)


@dataclass
class OrganizationBill(Bill):
    tenants: list[Any] | None = None


@dataclass
class Attribution(Record):
    """What drove a tenant's cost (`GET …/attribution`): per topic, client and role, by cost."""

    tenant: str
    period: str
    topics: list[dict[str, Any]]
    clients: list[dict[str, Any]]
    roles: list[dict[str, Any]]
    exact: bool
    total: dict[str, Any]

    def to_frame(self) -> pd.DataFrame:
        """The topics, costliest first."""
        return _frame(self.topics)

    def clients_frame(self) -> pd.DataFrame:
        return _frame(self.clients)

    def roles_frame(self) -> pd.DataFrame:
        return _frame(self.roles)


@dataclass
class Advice(Record):
    """What would cut a tenant's bill (`GET …/advice`), each piece with the figures behind it."""

    tenant: str
    advice: list[dict[str, Any]]
    not_detectable: list[str]

    def to_frame(self) -> pd.DataFrame:
        return _frame(self.advice)


@dataclass
class Estimate(Record):
    messages_per_month: dict[str, int]
    peak_connections: int
    plans: list[dict[str, Any]]
    cheapest_plan: str | None
    warnings: list[str]
    assumptions: list[str]

    def to_frame(self) -> pd.DataFrame:
        """One row per plan."""
        return _frame(self.plans)


@dataclass
class AuditEntry(Record):
    at: str
    action: str
    target: str
    status: int


@dataclass
class AuthorizationResult(Record):
    """The RLS tester's answer for one (topic, action, extension) and subject."""

    allowed: bool
    policies: list[dict[str, Any]]
    duration_ms: float
    error: str | None

    def to_frame(self) -> pd.DataFrame:
        """The policies that applied."""
        return _frame(self.policies)


@dataclass
class ChangeCheck(Record):
    """The Postgres Changes visibility check: delivered or not, and why not."""

    delivered: bool
    reason: str | None
    detail: str | None
    errors: list[str]
    policies: list[dict[str, Any]]
    duration_ms: float

    def to_frame(self) -> pd.DataFrame:
        """The table's SELECT policies for the role."""
        return _frame(self.policies)


@dataclass
class Trace(Record):
    """A delivery trace: every decision the server took for its subject on its topic."""

    id: str
    topic: str
    decisions: list[dict[str, Any]]

    def to_frame(self) -> pd.DataFrame:
        return _frame(self.decisions)


# The client


class AdminClient:
    """A running realtime-core server's admin API.

    `base_url` defaults to REALTIME_SERVER_URL (else http://127.0.0.1:4000), `token` (an admin
    JWT) to REALTIME_ADMIN_TOKEN. Use as a context manager, or call close()."""

    def __init__(self, base_url: str | None = None, token: str | None = None, timeout: float = 5.0) -> None:
        self.base_url = (base_url or os.environ.get("REALTIME_SERVER_URL") or DEFAULT_URL).rstrip("/")
        self.token = token if token is not None else os.environ.get("REALTIME_ADMIN_TOKEN")
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        self._http = httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> AdminClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        # A client dropped without close() (a Streamlit session ending) closes its connections.
        http = getattr(self, "_http", None)
        if http is not None:
            http.close()

    # HTTP

    def _request(self, method: str, path: str, *, params: dict[str, Any] | None = None, json: Any = None) -> Any:
        params = {k: _query_value(v) for k, v in (params or {}).items() if v is not None}
        try:
            response = self._http.request(method, path, params=params, json=json)
        except httpx.HTTPError as exc:
            raise AdminApiError(None, f"{method} {path}: {exc}") from exc
        if response.status_code >= 400:
            raise _error(response)
        if response.status_code == 204 or not response.content:
            return None
        return response.json()

    def _get(self, path: str, **params: Any) -> Any:
        return self._request("GET", path, params=params)

    def _page(self, cls: type[R], path: str, **params: Any) -> Table[R]:
        answer = self._get(path, **params)
        return Table([cls.from_json(row) for row in answer["data"]], answer.get("next_cursor"))

    def pages(self, method: Any, *args: Any, **kwargs: Any) -> Iterator[R]:
        """Every record of a list method, following next_cursor:
        `for c in admin.pages(admin.connections, "tenant"): ...`."""
        cursor = None
        while True:
            page = method(*args, cursor=cursor, **kwargs)
            yield from page
            cursor = page.next_cursor
            if cursor is None:
                return

    # Health and metrics (no admin token needed)

    def healthy(self) -> bool:
        """True when GET /healthcheck answers `ok`."""
        try:
            response = self._http.get("/healthcheck")
        except httpx.HTTPError:
            return False
        return response.status_code == 200 and response.content.strip() == b"ok"

    def ping(self) -> dict[str, object]:
        try:
            response = self._http.get("/api/ping")
        except httpx.HTTPError as exc:
            raise AdminApiError(None, f"GET /api/ping: {exc}") from exc
        return {"status": response.status_code, **(response.json() if response.content else {})}

    def metrics(self) -> pd.DataFrame:
        """Every metric sample the server exports (GET /metrics)."""
        return parse_prometheus(self._exposition())

    def samples(self) -> list[Sample]:
        """Every sample of GET /metrics, label values unescaped (`metrics.parse_samples`)."""
        return parse_samples(self._exposition())

    def metric(self, name: str, **labels: str) -> float:
        """The one sample `name` whose labels include `labels`; AdminApiError when there is not
        exactly one (the exposition names what there is)."""
        text = self._exposition()
        found = [s.value for s in parse_samples(text) if s.name == name and labels.items() <= s.labels.items()]
        if len(found) != 1:
            raise AdminApiError(None, f"{len(found)} samples {name}{labels or ''} in /metrics:\n{text}")
        return float(found[0])

    def _exposition(self) -> str:
        """GET /metrics, with this client's token (a server with METRICS_JWT_SECRET wants one signed with it)."""
        try:
            response = self._http.get("/metrics")
        except httpx.HTTPError as exc:
            raise AdminApiError(None, f"GET /metrics: {exc}") from exc
        if response.status_code != 200:
            raise AdminApiError(response.status_code, "GET /metrics failed")
        return response.text

    # The node and tenants

    def node(self) -> Node:
        return Node.from_json(self._get("/admin/v1/node"))

    def tenants(self, *, limit: int | None = None, cursor: str | None = None, sort: str | None = None) -> Table[Tenant]:
        return self._page(Tenant, "/admin/v1/tenants", limit=limit, cursor=cursor, sort=sort)

    def tenant(self, tenant: str) -> Tenant:
        return Tenant.from_json(self._get(_tenant(tenant)))

    def update_settings(self, tenant: str, **settings: Any) -> dict[str, Any]:
        """PATCH the tenant's limits and switches (one validation with the tenant API); the
        answer lists warnings, and says that the tenant's clients were disconnected."""
        return self._request("PATCH", _tenant(tenant, "settings"), json=settings)

    # Connections

    def connections(
        self, tenant: str, *, limit: int | None = None, cursor: str | None = None, sort: str | None = None
    ) -> Table[Connection]:
        return self._page(Connection, _tenant(tenant, "connections"), limit=limit, cursor=cursor, sort=sort)

    def disconnect(self, tenant: str, connection: str) -> Disconnected:
        """Disconnect one connection, as upstream drains a tenant's sockets, on whichever node
        of a cluster it is (`extra["node"]`)."""
        return Disconnected.from_json(self._request("DELETE", _tenant(tenant, "connections", connection)))

    # Channels and presence

    def channels(
        self,
        tenant: str,
        *,
        private: bool | None = None,
        limit: int | None = None,
        cursor: str | None = None,
        sort: str | None = None,
    ) -> Table[Channel]:
        return self._page(Channel, _tenant(tenant, "channels"), private=private, limit=limit, cursor=cursor, sort=sort)

    def channel(self, tenant: str, topic: str, *, private: bool = False) -> Channel:
        """One stream, with its subscriber_list (`topic` as the client named it)."""
        return Channel.from_json(self._get(_tenant(tenant, "channels", topic), private=private))

    def shutdown_channel(self, tenant: str, topic: str, *, private: bool = False) -> dict[str, Any]:
        """Shut a stream down for every subscriber (on every node), with upstream's shutdown text."""
        return self._request("DELETE", _tenant(tenant, "channels", topic), params={"private": private})

    def presence(self, tenant: str, topic: str, *, private: bool = False) -> Presence:
        return Presence.from_json(self._get(_tenant(tenant, "channels", topic, "presence"), private=private))

    # Replication

    def replication(self, tenant: str) -> Replication:
        return Replication.from_json(self._get(_tenant(tenant, "replication")))

    def add_publication_table(self, tenant: str, table: str, schema: str = "public") -> Any:
        return self._request("POST", _tenant(tenant, "publication", "tables"), json={"schema": schema, "table": table})

    def remove_publication_table(self, tenant: str, table: str, schema: str = "public") -> Any:
        return self._request(
            "DELETE", _tenant(tenant, "publication", "tables"), json={"schema": schema, "table": table}
        )

    # Errors and time series

    def errors(
        self, tenant: str, *, limit: int | None = None, cursor: str | None = None, sort: str | None = None
    ) -> Errors:
        answer = self._get(_tenant(tenant, "errors"), limit=limit, cursor=cursor, sort=sort)
        return Errors.from_json(answer)

    def timeseries(self, tenant: str, series: list[str] | None = None, window: str = "10m") -> TimeSeries:
        """Per-second (`10m`) or per-minute (`1h`) history of the named series (all when None)."""
        params = {"series": ",".join(series) if series else None, "window": window}
        return TimeSeries.from_json(self._get(_tenant(tenant, "timeseries"), **params))

    # The cluster: every node's view (a single process answers as a cluster of one)

    def nodes(self) -> Table[ClusterNode]:
        """Every node, live first, then dead ones (listed for 10 minutes after their death)."""
        return Table([ClusterNode.from_json(row) for row in self._get("/admin/v1/nodes")["data"]])

    def cluster(self) -> Cluster:
        return Cluster.from_json(self._get("/admin/v1/cluster"))

    def cluster_connections(
        self, tenant: str, *, limit: int | None = None, cursor: str | None = None, sort: str | None = None
    ) -> Table[ClusterConnection]:
        """The tenant's connections on every live node, each with its `node`."""
        path = _cluster(tenant, "connections")
        return self._page(ClusterConnection, path, limit=limit, cursor=cursor, sort=sort)

    def cluster_channels(
        self,
        tenant: str,
        *,
        private: bool | None = None,
        limit: int | None = None,
        cursor: str | None = None,
        sort: str | None = None,
    ) -> Table[ClusterChannel]:
        """The tenant's streams over every live node: counts and rates summed, `by_node` subscribers."""
        path = _cluster(tenant, "channels")
        return self._page(ClusterChannel, path, private=private, limit=limit, cursor=cursor, sort=sort)

    def cluster_channel(self, tenant: str, topic: str, *, private: bool = False) -> ClusterChannel:
        """One stream over every live node, with its subscriber_list (each with its `node`)."""
        return ClusterChannel.from_json(self._get(_cluster(tenant, "channels", topic), private=private))

    def cluster_errors(
        self, tenant: str, *, limit: int | None = None, cursor: str | None = None, sort: str | None = None
    ) -> ClusterErrors:
        answer = self._get(_cluster(tenant, "errors"), limit=limit, cursor=cursor, sort=sort)
        return ClusterErrors.from_json(answer)

    def cluster_timeseries(self, tenant: str, series: list[str] | None = None, window: str = "10m") -> TimeSeries:
        """timeseries() summed over the live nodes (replication lags: the highest); `extra["nodes"]`
        names the nodes that answered."""
        params = {"series": ",".join(series) if series else None, "window": window}
        return TimeSeries.from_json(self._get(_cluster(tenant, "timeseries"), **params))

    # Operator actions

    def broadcast(self, tenant: str, topic: str, event: str, payload: dict[str, Any], *, private: bool = False) -> int:
        """A test broadcast, delivered and counted as a REST message; how many sockets got it."""
        body = {"topic": topic, "event": event, "payload": payload, "private": private}
        return self._request("POST", _tenant(tenant, "broadcast"), json=body)["delivered"]

    def create_token(
        self,
        tenant: str,
        *,
        role: str = "authenticated",
        sub: str | None = None,
        claims: dict[str, Any] | None = None,
        ttl_seconds: int = 3600,
    ) -> str:
        """A JWT signed with the tenant's own HS secret, for testing policies."""
        body: dict[str, Any] = {"role": role, "claims": claims or {}, "ttl_seconds": ttl_seconds}
        if sub is not None:
            body["sub"] = sub
        return self._request("POST", _tenant(tenant, "tokens"), json=body)["token"]

    # Usage, bills and pricing

    def usage(
        self, tenant: str, *, from_: str | None = None, to: str | None = None, granularity: str | None = None
    ) -> Usage:
        """Messages by kind and peak connections per day (or hour); dates as YYYY-MM-DD."""
        params = {"from": from_, "to": to, "granularity": granularity}
        return Usage.from_json(self._request("GET", _tenant(tenant, "usage"), params=params))

    def bill(self, tenant: str) -> Bill:
        return Bill.from_json(self._get(_tenant(tenant, "bill")))

    def attribution(self, tenant: str, *, period: str = "cycle", limit: int | None = None) -> Attribution:
        """Messages, egress and their cost at overage prices per topic, client and role
        (`period`: `day` or `cycle`), costliest first."""
        return Attribution.from_json(self._get(_tenant(tenant, "attribution"), period=period, limit=limit))

    def advice(self, tenant: str, *, period: str = "cycle") -> Advice:
        """What would cut the bill, from the measured traffic."""
        return Advice.from_json(self._get(_tenant(tenant, "advice"), period=period))

    def organization_bill(self, organization: str) -> OrganizationBill:
        return OrganizationBill.from_json(self._get(f"/admin/v1/organizations/{_segment(organization)}/bill"))

    def pricing_bill(self, plan: str, messages: int, peak_connections: int) -> PricingBill:
        body = {"plan": plan, "messages": messages, "peak_connections": peak_connections}
        return PricingBill.from_json(self._request("POST", "/admin/v1/pricing/bill", json=body))

    def pricing_estimate(self, **inputs: Any) -> Estimate:
        """The what-if estimator: `concurrent_clients=1000, channels_per_client=2, …`."""
        return Estimate.from_json(self._request("POST", "/admin/v1/pricing/estimate", json=inputs))

    # Audit

    def audit(
        self,
        *,
        action: str | None = None,
        target: str | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> Table[AuditEntry]:
        """The audit log of admin writes, newest first."""
        return self._page(AuditEntry, "/admin/v1/audit", action=action, target=target, limit=limit, cursor=cursor)

    # Operator tools (authorization check, Postgres Changes check, traces, live tail)

    def check_authorization(
        self,
        tenant: str,
        topic: str,
        *,
        private: bool = True,
        action: str = "read",
        extension: str = "broadcast",
        role: str | None = None,
        claims: dict[str, Any] | None = None,
        jwt: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> AuthorizationResult:
        """The RLS tester: may the subject (`jwt`, or `role` with `claims`) `action` the topic's
        `extension`? Runs the probe a real join (read) or send (write) runs."""
        body: dict[str, Any] = {"topic": topic, "private": private, "action": action, "extension": extension}
        body |= _subject(role, claims, jwt)
        if headers:
            body["headers"] = headers
        return AuthorizationResult.from_json(
            self._request("POST", _tenant(tenant, "authorization", "check"), json=body)
        )

    def check_postgres_changes(
        self,
        tenant: str,
        table: str,
        *,
        schema: str = "public",
        event: str = "INSERT",
        filter: str = "",
        role: str | None = None,
        claims: dict[str, Any] | None = None,
        jwt: str | None = None,
        primary_key: dict[str, Any] | None = None,
        row: dict[str, Any] | None = None,
    ) -> ChangeCheck:
        """Would a subscriber (subject, table, event, filter) get a change of this row (by
        `primary_key`, or `row` values)? If not, `reason` and `detail` say why."""
        body: dict[str, Any] = {"schema": schema, "table": table, "event": event, "filter": filter}
        body |= _subject(role, claims, jwt)
        body |= {"primary_key": primary_key} if primary_key is not None else {"row": row}
        return ChangeCheck.from_json(self._request("POST", _tenant(tenant, "postgres-changes", "check"), json=body))

    def start_trace(
        self, tenant: str, topic: str, *, sub: str | None = None, connection: str | None = None, seconds: int = 60
    ) -> dict[str, Any]:
        """Trace the delivery decisions for a JWT `sub` or a `connection` id on `topic`:
        `{"id", "expires_at"}`; read it with trace()."""
        body: dict[str, Any] = {"topic": topic, "seconds": seconds}
        body |= {"sub": sub} if sub is not None else {"connection": connection}
        return self._request("POST", _tenant(tenant, "traces"), json=body)

    def trace(self, tenant: str, trace: str) -> Trace:
        """A trace and its decisions, oldest first."""
        return Trace.from_json(self._get(_tenant(tenant, "traces", trace)))

    def stop_trace(self, tenant: str, trace: str) -> None:
        """Stop a trace and forget it."""
        self._request("DELETE", _tenant(tenant, "traces", trace))

    def tail(
        self,
        tenant: str,
        topic: str,
        *,
        private: bool = False,
        kinds: list[str] | None = None,
        on_open: Callable[[Callable[[], None]], None] | None = None,
    ) -> Iterator[tuple[str, dict[str, Any]]]:
        """The live tail: (kind, data) for each message the server delivers on the stream
        (`dropped` with `{"count"}` when this viewer lost some), until the server ends it.
        `on_open` gets, once the server has accepted the tail, a function that ends it from any
        thread (the read itself blocks without a timeout)."""
        params = {"topic": topic, "private": _query_value(private)}
        if kinds:
            params["kinds"] = ",".join(kinds)
        path = _tenant(tenant, "tail")
        closed = threading.Event()
        try:
            with self._http.stream(
                "GET", path, params=params, timeout=httpx.Timeout(self._http.timeout.connect or 5.0, read=None)
            ) as answer:
                if answer.status_code >= 400:
                    answer.read()
                    raise _error(answer)
                if on_open is not None:
                    sock = answer.extensions["network_stream"].get_extra_info("socket")

                    def close() -> None:
                        closed.set()
                        with contextlib.suppress(OSError):
                            sock.shutdown(socket.SHUT_RDWR)

                    on_open(close)
                kind, data = "message", []
                for line in answer.iter_lines():
                    if line.startswith("event:"):
                        kind = line[6:].strip()
                    elif line.startswith("data:"):
                        data.append(line[5:].strip())
                    elif not line and data:
                        yield kind, json_module.loads("\n".join(data))
                        kind, data = "message", []
        except httpx.HTTPError as exc:
            if not closed.is_set():
                raise AdminApiError(None, f"GET {path}: {exc}") from exc


def _subject(role: str | None, claims: dict[str, Any] | None, jwt: str | None) -> dict[str, Any]:
    return {"jwt": jwt} if jwt is not None else {"role": role or "authenticated", "claims": claims or {}}


def _error(response: httpx.Response) -> AdminApiError:
    """The AdminApiError of an answer of status 400 or more (its body read)."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if response.status_code == 403 and not response.content:
        message = "forbidden: the admin token is missing, invalid or read-only"
    elif isinstance(body, dict) and isinstance(body.get("message"), str):
        message = body["message"]
    else:
        message = response.reason_phrase or "error"
    errors = body.get("errors") if isinstance(body, dict) and isinstance(body.get("errors"), dict) else None
    return AdminApiError(response.status_code, message, errors, body)


def _segment(value: str) -> str:
    return quote(value, safe="")


def _tenant(tenant: str, *parts: str) -> str:
    return "/".join(["/admin/v1/tenants", _segment(tenant), *(_segment(p) for p in parts)])


def _cluster(tenant: str, *parts: str) -> str:
    return "/".join(["/admin/v1/cluster/tenants", _segment(tenant), *(_segment(p) for p in parts)])


def _query_value(value: Any) -> Any:
    return ("true" if value else "false") if isinstance(value, bool) else value
