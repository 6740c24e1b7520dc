"""`/admin/v1` usage and bills: a tenant's metered usage by day or hour, and the current cycle's
bill of a tenant or an organisation, so far and projected.

Everything is live: usage.UsageMeter.read() adds what this process counted and has not flushed
yet to what the database holds. Bills are pricing.py's (one copy of the pricing rules); the
projection extends the rate of the last PROJECTION_WINDOW_HOURS to the end of the cycle, for
messages and egress bytes alike. Bills include egress (the metered bytes of every kind); the
included egress is per organisation upstream and shared with its other services, so ours is the
Realtime share (each bill's `notes` say so)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from .. import pricing
from ..hub import KINDS
from ..usage import EGRESS_KINDS, Cycle
from .endpoints import AdminApi, Call, invalid, not_found, tenant_of

if TYPE_CHECKING:
    from ..app import App
    from ..tenants import Tenant

__all__ = ["routes"]

MAX_DAYS = 366  # the longest range a usage request may ask for, by day
MAX_HOURLY_DAYS = 31  # by hour
PROJECTION_WINDOW_HOURS = 24


class UsageQuery(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    from_: date | None = Field(None, alias="from", description="first UTC day, YYYY-MM-DD (default: the cycle's)")
    to: date | None = Field(None, description="last UTC day, included (default: today)")
    granularity: Literal["day", "hour"] = "day"


class Messages(BaseModel):
    broadcast: int
    presence: int
    postgres_changes: int
    db_broadcast: int
    rest: int
    all: int


class EgressBytes(BaseModel):
    """Bytes written to clients, by kind: the messages' origins, and `protocol` (replies,
    heartbeats, system messages, phx_close, pongs, close frames, the HTTP 101 answer)."""

    broadcast: int
    presence: int
    postgres_changes: int
    db_broadcast: int
    rest: int
    protocol: int
    all: int


class UsageBucket(BaseModel):
    date: date
    hour: datetime | None = Field(None, description="granularity=hour: the hour's start, UTC")
    messages: Messages
    peak_connections: int
    egress_bytes: EgressBytes


class UsageTotal(BaseModel):
    messages: Messages
    peak_connections: int
    egress_bytes: EgressBytes


class UsageReport(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    tenant: str
    from_: date = Field(alias="from")
    to: date
    granularity: Literal["day", "hour"]
    days: list[UsageBucket] | None = None
    hours: list[UsageBucket] | None = None
    total: UsageTotal


class QuotaItem(BaseModel):
    used: int
    included: int
    percent: float | None


class Quota(BaseModel):
    messages: QuotaItem
    peak_connections: QuotaItem
    egress: QuotaItem = Field(description="bytes written to clients: the Realtime share of the included egress")


class Window(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    from_: datetime = Field(alias="from")
    to: datetime
    seconds: float
    messages: int
    egress_bytes: int


class CycleModel(BaseModel):
    start: date
    end: date


class TenantBill(BaseModel):
    tenant: str
    plan: str
    organization: str | None
    cycle: CycleModel
    quota: Quota
    so_far: pricing.Bill
    projected: pricing.Bill
    window: Window


class OrganizationTenant(BaseModel):
    tenant: str
    plan: str
    cycle: CycleModel
    messages: int
    peak_connections: int
    egress_bytes: int
    projected_messages: int
    projected_egress_bytes: int


class OrganizationBill(BaseModel):
    organization: str
    plan: str
    tenants: list[OrganizationTenant]
    quota: Quota
    so_far: pricing.Bill
    projected: pricing.Bill
    window: Window


def _messages(counts: dict[str, int]) -> dict[str, int]:
    return {**{kind: counts.get(kind, 0) for kind in KINDS}, "all": sum(counts.get(kind, 0) for kind in KINDS)}


def _egress(counts: dict[str, int]) -> dict[str, int]:
    return {
        **{kind: counts.get(kind, 0) for kind in EGRESS_KINDS},
        "all": sum(counts.get(kind, 0) for kind in EGRESS_KINDS),
    }


def _status(used: int, included: int) -> dict[str, Any]:
    return {"used": used, "included": included, "percent": round(used * 100 / included, 2) if included else None}


class _CycleUsage:
    """One tenant's current cycle: so far, the recent window and the projection."""

    def __init__(self, tenant: Tenant, cycle: Cycle, rows: list[dict[str, Any]], now: datetime) -> None:
        self.tenant = tenant
        self.cycle = cycle
        self.messages = sum(sum(row["messages"].values()) for row in rows)
        self.egress = sum(sum(row["egress_bytes"].values()) for row in rows)
        self.peak = max((row["peak_connections"] for row in rows), default=0)
        cycle_start = datetime.combine(cycle.start, datetime.min.time(), UTC)
        window_start = max(
            now.replace(minute=0, second=0, microsecond=0) - timedelta(hours=PROJECTION_WINDOW_HOURS - 1), cycle_start
        )
        self.window_start = window_start
        self.window_seconds = max((now - window_start).total_seconds(), 0.0)
        recent = [
            row
            for row in rows
            if datetime.combine(row["day"], datetime.min.time(), UTC) + timedelta(hours=row["hour"]) >= window_start
        ]
        self.window_messages = sum(sum(row["messages"].values()) for row in recent)
        self.window_egress = sum(sum(row["egress_bytes"].values()) for row in recent)
        cycle_end = datetime.combine(cycle.end, datetime.min.time(), UTC)
        self.so_far = pricing.Usage(self.messages, self.peak, self.egress)
        self.projected = pricing.project(
            self.so_far,
            self.window_messages,
            self.window_seconds,
            (now - cycle_start).total_seconds(),
            (cycle_end - cycle_start).total_seconds(),
            window_egress_bytes=self.window_egress,
        )


def routes(api: AdminApi, app: App) -> None:
    usage = app.usage

    def now() -> datetime:
        return datetime.fromtimestamp(usage.clock(), UTC)

    async def cycle_usage(tenant: Tenant) -> _CycleUsage:
        cycle = usage.cycle(tenant)
        today = now()
        rows = await usage.read(tenant.external_id, cycle.start, today.date(), hourly=True)
        return _CycleUsage(tenant, cycle, rows, today)

    def window(parts: list[_CycleUsage]) -> dict[str, Any]:
        start = min(p.window_start for p in parts)
        return {
            "from": start,
            "to": now(),
            "seconds": max(p.window_seconds for p in parts),
            "messages": sum(p.window_messages for p in parts),
            "egress_bytes": sum(p.window_egress for p in parts),
        }

    @api.route("GET", "/admin/v1/tenants/:id/usage", query=UsageQuery, response=UsageReport)
    async def tenant_usage(call: Call) -> dict[str, Any]:
        """A tenant's messages by kind, peak connections and egress bytes by kind, by day or hour, live."""
        tenant = tenant_of(app.tenants, call)
        query: UsageQuery = call.query
        today = now().date()
        first = query.from_ or usage.cycle(tenant).start
        last = query.to or today
        if last < first:
            raise invalid("to", "must not be before from")
        longest = MAX_DAYS if query.granularity == "day" else MAX_HOURLY_DAYS
        if (last - first).days + 1 > longest:
            raise invalid("to", f"the range must span at most {longest} days with granularity={query.granularity}")
        hourly = query.granularity == "hour"
        rows = await usage.read(tenant.external_id, first, last, hourly=hourly)
        by_key = {(row["day"], row["hour"]): row for row in rows}
        buckets: list[dict[str, Any]] = []
        day = first
        while day <= last:
            for hour in range(24) if hourly else (None,):
                row = by_key.get((day, hour))
                counts = row["messages"] if row else {}
                bucket: dict[str, Any] = {
                    "date": day.isoformat(),
                    "messages": _messages(counts),
                    "peak_connections": row["peak_connections"] if row else 0,
                    "egress_bytes": _egress(row["egress_bytes"] if row else {}),
                }
                if hour is not None:
                    bucket["hour"] = f"{day.isoformat()}T{hour:02d}:00:00Z"
                buckets.append(bucket)
            day += timedelta(days=1)
        totals = {kind: sum(row["messages"][kind] for row in rows) for kind in KINDS}
        egress = {kind: sum(row["egress_bytes"][kind] for row in rows) for kind in EGRESS_KINDS}
        return {
            "tenant": tenant.external_id,
            "from": first.isoformat(),
            "to": last.isoformat(),
            "granularity": query.granularity,
            "hours" if hourly else "days": buckets,
            "total": {
                "messages": _messages(totals),
                "peak_connections": max((row["peak_connections"] for row in rows), default=0),
                "egress_bytes": _egress(egress),
            },
        }

    @api.route("GET", "/admin/v1/tenants/:id/bill", response=TenantBill)
    async def tenant_bill(call: Call) -> dict[str, Any]:
        """The current billing cycle of a tenant: quota, the bill so far and projected."""
        tenant = tenant_of(app.tenants, call)
        part = await cycle_usage(tenant)
        plan = tenant.plan
        return {
            "tenant": tenant.external_id,
            "plan": plan.name,
            "organization": tenant.organization,
            "cycle": {"start": part.cycle.start.isoformat(), "end": part.cycle.end.isoformat()},
            "quota": {
                "messages": _status(part.messages, plan.included_messages),
                "peak_connections": _status(part.peak, plan.included_peak_connections),
                "egress": _status(part.egress, plan.included_egress_bytes),
            },
            "so_far": priced(pricing.bill, plan, part.messages, part.peak, part.egress),
            "projected": priced(
                pricing.bill,
                plan,
                part.projected.messages,
                part.projected.peak_connections,
                part.projected.egress_bytes,
            ),
            "window": _window_json(window([part])),
        }

    @api.route("GET", "/admin/v1/organizations/:org/bill", response=OrganizationBill)
    async def organization_bill(call: Call) -> dict[str, Any]:
        """The current cycle of an organisation: its tenants' messages summed, their peaks
        summed, billed once on the organisation's plan."""
        org = call.params["org"]
        tenants = sorted((t for t in app.tenants if t.organization == org), key=lambda t: t.external_id)
        if not tenants:
            raise not_found()
        parts = [await cycle_usage(t) for t in tenants]
        plan = pricing.organization_plan(t.plan for t in tenants)
        messages = sum(p.messages for p in parts)
        peak = sum(p.peak for p in parts)
        egress = sum(p.egress for p in parts)
        return {
            "organization": org,
            "plan": plan.name,
            "tenants": [
                {
                    "tenant": p.tenant.external_id,
                    "plan": p.tenant.plan.name,
                    "cycle": {"start": p.cycle.start.isoformat(), "end": p.cycle.end.isoformat()},
                    "messages": p.messages,
                    "peak_connections": p.peak,
                    "egress_bytes": p.egress,
                    "projected_messages": p.projected.messages,
                    "projected_egress_bytes": p.projected.egress_bytes,
                }
                for p in parts
            ],
            "quota": {
                "messages": _status(messages, plan.included_messages),
                "peak_connections": _status(peak, plan.included_peak_connections),
                "egress": _status(egress, plan.included_egress_bytes),
            },
            "so_far": priced(pricing.organization_bill, [(p.tenant.plan, p.so_far) for p in parts]),
            "projected": priced(pricing.organization_bill, [(p.tenant.plan, p.projected) for p in parts]),
            "window": _window_json(window(parts)),
        }


def priced(make: Callable[..., pricing.Bill], *args: Any) -> dict[str, Any]:
    """A bill as JSON; a 422 on the plan when custom prices make it too large to give to the cent."""
    try:
        return make(*args).model_dump(mode="json")
    except pricing.PricingOutOfRange as e:
        raise invalid("plan", f"{e.field}: {e}") from None


def _window_json(window: dict[str, Any]) -> dict[str, Any]:
    return {
        "from": window["from"].isoformat().replace("+00:00", "Z"),
        "to": window["to"].isoformat().replace("+00:00", "Z"),
        "seconds": round(window["seconds"], 3),
        "messages": window["messages"],
        "egress_bytes": window["egress_bytes"],
    }
