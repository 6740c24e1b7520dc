"""`/admin/v1/tenants/{id}/traces`: delivery traces, "why didn't this client get that event?".

A trace records every decision the server takes for one subject (a JWT `sub`, or a connection
id) on one topic until it expires (trace.py holds the traces and the reasons)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, Field

from .. import trace
from ..net.http import Response, json_response
from .endpoints import AdminApi, Call, ListQuery, Model, Page, invalid, not_found, paginate

if TYPE_CHECKING:
    from ..app import App
    from ..tenants import Tenant

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
    overflow: int = Field(description=f"decisions not kept: a trace keeps {trace.MAX_DECISIONS}")


class TraceOut(TraceSummary):
    decisions: list[DecisionOut]


def _time(value: float | None) -> datetime | None:
    return None if value is None else datetime.fromtimestamp(value, UTC)


def _summary(t: trace.Trace) -> dict[str, Any]:
    return {
        "id": t.id,
        "topic": t.topic,
        "sub": t.sub,
        "connection": t.connection,
        "active": t.active,
        "created_at": _time(t.created_at),
        "expires_at": _time(t.expires_at),
        "stopped_at": _time(t.stopped_at),
        "decision_count": len(t.decisions),
        "overflow": t.overflow,
    }


def routes(api: AdminApi, app: App) -> None:
    tracer = app.tracer

    def tenant_of(call: Call) -> Tenant:
        tenant = app.tenants.get(call.params["id"])
        if tenant is None:
            raise not_found()
        return tenant

    def trace_of(call: Call) -> trace.Trace:
        tenant = tenant_of(call)
        found = tracer.traces.get(call.params["trace"])
        if found is None or found.tenant != tenant.external_id:
            raise not_found()
        return found

    @api.route(
        "POST",
        "/admin/v1/tenants/:id/traces",
        body=TraceRequest,
        response=TraceSummary,
        status=201,
        action="trace.start",
    )
    async def start_trace(call: Call) -> Response:
        """Start a delivery trace of one subject on one topic."""
        tenant = tenant_of(call)
        body: TraceRequest = call.body
        if (body.sub is None) == (body.connection is None):
            raise invalid("sub", "give either sub or connection")
        if body.connection is not None and not any(
            s.id == body.connection and s.tenant.external_id == tenant.external_id for s in app.sockets
        ):
            raise invalid("connection", "is not an open connection of this tenant")
        topic = body.topic.removeprefix(TOPIC_PREFIX)
        if not topic:
            raise invalid("topic", "can't be blank")
        try:
            started = tracer.start(
                tenant.external_id, topic, sub=body.sub, connection=body.connection, seconds=body.seconds
            )
        except trace.TraceLimit as exc:
            # 422 rather than 429: the admin API documents 422 for every request it refuses.
            raise invalid("traces", f"{exc}: stop one (DELETE) or wait until one expires") from None
        call.target = started.id
        call.detail = {"tenant": tenant.external_id, "topic": topic, "seconds": body.seconds}
        answer = TraceSummary.model_validate(_summary(started))
        location = f"/admin/v1/tenants/{tenant.external_id}/traces/{started.id}"
        response = json_response(201, answer.model_dump(mode="json"))
        response.headers.append(("location", location))
        return response

    @api.route("GET", "/admin/v1/tenants/:id/traces", query=ListQuery, response=Page[TraceSummary])
    async def list_traces(call: Call) -> dict[str, Any]:
        """The tenant's running traces and those finished in the last ten minutes."""
        tenant = tenant_of(call)
        rows = [_summary(t) for t in tracer.of_tenant(tenant.external_id)]
        page = paginate(rows, call.query, sortable=("created_at", "expires_at", "topic"), default="-created_at")
        return Page[TraceSummary].model_validate(page).model_dump(mode="json")

    @api.route("GET", "/admin/v1/tenants/:id/traces/:trace", response=TraceOut)
    async def get_trace(call: Call) -> TraceOut:
        """A trace and its decisions, oldest first."""
        found = trace_of(call)
        out = _summary(found)
        out["decisions"] = [d.as_json() | {"at": _time(d.at)} for d in list(found.decisions)]
        return TraceOut.model_validate(out)

    @api.route("DELETE", "/admin/v1/tenants/:id/traces/:trace", status=204, action="trace.delete")
    async def delete_trace(call: Call) -> None:
        """Stop a trace and forget it."""
        tracer.remove(trace_of(call))
