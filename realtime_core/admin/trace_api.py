"""`/admin/v1/tenants/{id}/traces`: delivery traces, "why didn't this client get that event?".

A trace records every decision the server takes for one subject (a JWT `sub`, or a connection
id) on one topic until it expires (trace.py holds the traces and the reasons).

In a cluster (REDIS_URL) a trace started on any node is started on every live node with the
same id and expiry (Cluster.ask()); a read asks every live node for its decisions and merges
them by time, each naming its node, and `nodes` lists the nodes whose decisions are in; a
stop stops it everywhere. A node that joins later does not run the traces already started."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, Field

from .. import trace
from ..net.http import Response, json_response
from .endpoints import AdminApi, Call, ListQuery, Model, Page, invalid, not_found, paginate, tenant_of
from .nodes import ask_every_node

if TYPE_CHECKING:
    from ..app import App

__all__ = ["routes"]

TOPIC_PREFIX = "realtime:"


class TraceRequest(Model):
    topic: str = Field(min_length=1, max_length=255, description='the channel name clients join ("room:1")')
    sub: str | None = Field(None, min_length=1, description="trace the connections whose JWT has this `sub`")
    connection: str | None = Field(None, min_length=1, description="or trace this one connection id")
    seconds: int = Field(60, ge=1, le=trace.MAX_SECONDS, description="how long the trace runs")


class DecisionOut(BaseModel):
    at: datetime
    kind: str | None = Field(description="the message's origin: broadcast, rest, presence, postgres_changes, …")
    event: str | None = Field(description="the event the client sees (a broadcast's own event name)")
    connection: str | None
    delivered: bool
    reason: Literal[trace.REASONS] | None  # type: ignore[valid-type]
    node: str = Field(description="the node the connection is on")
    decided_on: str = Field(description="the node that took the decision (the replication leader for Postgres Changes)")


class TraceSummary(BaseModel):
    id: str
    topic: str
    sub: str | None
    connection: str | None
    active: bool
    created_at: datetime
    expires_at: datetime
    stopped_at: datetime | None
    decision_count: int
    overflow: int = Field(description=f"decisions not kept: a trace keeps {trace.MAX_DECISIONS} per node")
    nodes: list[str] = Field(description="the nodes that answered with this trace")


class TraceOut(TraceSummary):
    decisions: list[DecisionOut]


class TracePage(Page[TraceSummary]):
    nodes: list[str] = Field(description="the nodes that answered")


def _time(value: float | None) -> datetime | None:
    return None if value is None else datetime.fromtimestamp(value, UTC)


def _summary(t: trace.Trace) -> dict[str, Any]:
    """One node's summary of `t`, as plain JSON values (a node's answer to another)."""
    return {
        "id": t.id,
        "topic": t.topic,
        "sub": t.sub,
        "connection": t.connection,
        "active": t.active,
        "created_at": t.created_at,
        "expires_at": t.expires_at,
        "stopped_at": t.stopped_at,
        "decision_count": len(t.decisions),
        "overflow": t.overflow,
    }


def _merged(held: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """One trace as the nodes in `held` (node → its summary) hold it: running while any runs it,
    counts summed, times as datetimes."""
    first = next(iter(held.values()))
    active = any(s["active"] for s in held.values())
    stopped = [s["stopped_at"] for s in held.values() if s["stopped_at"] is not None]
    return {
        **first,
        "active": active,
        "created_at": _time(first["created_at"]),
        "expires_at": _time(first["expires_at"]),
        "stopped_at": None if active or not stopped else _time(max(stopped)),
        "decision_count": sum(s["decision_count"] for s in held.values()),
        "overflow": sum(s["overflow"] for s in held.values()),
        "nodes": sorted(held),
    }


def routes(api: AdminApi, app: App) -> None:
    tracer = app.tracer

    def start_here(args: dict[str, Any]) -> dict[str, Any]:
        """Start the trace another node started (same id and expiry); its summary, or `error`."""
        try:
            started = tracer.start(
                str(args["tenant"]),
                str(args["topic"]),
                sub=args.get("sub"),
                connection=args.get("connection"),
                seconds=float(args["seconds"]),
                trace_id=str(args["id"]),
                created_at=float(args["created_at"]),
            )
        except trace.TraceLimit as exc:
            return {"error": str(exc)}
        return _summary(started)

    def held_here(args: dict[str, Any]) -> trace.Trace | None:
        found = tracer.traces.get(str(args.get("id")))
        return found if found is not None and found.tenant == args.get("tenant") else None

    def get_here(args: dict[str, Any]) -> dict[str, Any] | None:
        found = held_here(args)
        if found is None:
            return None
        return {**_summary(found), "decisions": [d.as_json() for d in list(found.decisions)]}

    def stop_here(args: dict[str, Any]) -> bool:
        found = held_here(args)
        if found is not None:
            tracer.remove(found)
        return found is not None

    def has_connection(args: dict[str, Any]) -> bool:
        return any(s.id == args.get("connection") and s.tenant.external_id == args.get("tenant") for s in app.sockets)

    app.node_queries["trace.start"] = start_here
    app.node_queries["trace.list"] = lambda args: [_summary(t) for t in tracer.of_tenant(str(args.get("tenant")))]
    app.node_queries["trace.get"] = get_here
    app.node_queries["trace.stop"] = stop_here
    app.node_queries["trace.connection"] = has_connection

    @api.route(
        "POST",
        "/admin/v1/tenants/:id/traces",
        body=TraceRequest,
        response=TraceSummary,
        status=201,
        action="trace.start",
    )
    async def start_trace(call: Call) -> Response:
        """Start a delivery trace of one subject on one topic (on every live node of a cluster)."""
        tenant = tenant_of(app.tenants, call)
        tid = tenant.external_id
        body: TraceRequest = call.body
        if (body.sub is None) == (body.connection is None):
            raise invalid("sub", "give either sub or connection")
        if body.connection is not None:
            args = {"tenant": tid, "connection": body.connection}
            if not has_connection(args) and not any((await ask_every_node(app, "trace.connection", args)).values()):
                raise invalid("connection", "is not an open connection of this tenant")
        topic = body.topic.removeprefix(TOPIC_PREFIX)
        if not topic:
            raise invalid("topic", "can't be blank")
        try:
            started = tracer.start(tid, topic, sub=body.sub, connection=body.connection, seconds=body.seconds)
        except trace.TraceLimit as exc:
            # 422 rather than 429: the admin API documents 422 for every request it refuses.
            raise invalid("traces", f"{exc}: stop one (DELETE) or wait until one expires") from None
        held = {app.node_id: _summary(started)}
        if app.nodes is not None:
            args = {
                "tenant": tid,
                "topic": topic,
                "sub": body.sub,
                "connection": body.connection,
                "seconds": body.seconds,
                "id": started.id,
                "created_at": started.created_at,
            }
            answers = await app.nodes.ask("trace.start", args)
            held |= {node: answer for node, answer in answers.items() if "error" not in answer}
        call.target = started.id
        call.detail = {"tenant": tid, "topic": topic, "seconds": body.seconds}
        answer = TraceSummary.model_validate(_merged(held))
        location = f"/admin/v1/tenants/{tid}/traces/{started.id}"
        response = json_response(201, answer.model_dump(mode="json"))
        response.headers.append(("location", location))
        return response

    @api.route("GET", "/admin/v1/tenants/:id/traces", query=ListQuery, response=TracePage)
    async def list_traces(call: Call) -> dict[str, Any]:
        """The tenant's running traces and those finished in the last ten minutes, over every live
        node; `nodes`: the nodes that answered."""
        answers = await ask_every_node(app, "trace.list", {"tenant": tenant_of(app.tenants, call).external_id})
        by_id: dict[str, dict[str, dict[str, Any]]] = {}
        for node, summaries in answers.items():
            for summary in summaries:
                by_id.setdefault(summary["id"], {})[node] = summary
        rows = [_merged(held) for held in by_id.values()]
        page = paginate(rows, call.query, sortable=("created_at", "expires_at", "topic"), default="-created_at")
        page["nodes"] = sorted(answers)
        return TracePage.model_validate(page).model_dump(mode="json")

    @api.route("GET", "/admin/v1/tenants/:id/traces/:trace", response=TraceOut)
    async def get_trace(call: Call) -> TraceOut:
        """A trace and its decisions on every live node, oldest first, each with its node."""
        args = {"tenant": tenant_of(app.tenants, call).external_id, "id": call.params["trace"]}
        answers = {
            node: held for node, held in (await ask_every_node(app, "trace.get", args)).items() if held is not None
        }
        if not answers:
            raise not_found()
        decisions = [
            {**d, "at": _time(d["at"]), "node": d["node"] or node, "decided_on": node}
            for node, held in answers.items()
            for d in held.pop("decisions")
        ]
        decisions.sort(key=lambda d: d["at"])
        return TraceOut.model_validate({**_merged(answers), "decisions": decisions})

    @api.route("DELETE", "/admin/v1/tenants/:id/traces/:trace", status=204, action="trace.delete")
    async def delete_trace(call: Call) -> None:
        """Stop a trace (on every live node) and forget it."""
        args = {"tenant": tenant_of(app.tenants, call).external_id, "id": call.params["trace"]}
        here = stop_here(args)
        if not any((await ask_every_node(app, "trace.stop", args)).values()) and not here:
            raise not_found()
