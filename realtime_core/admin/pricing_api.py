"""`POST /admin/v1/pricing/bill` and `POST /admin/v1/pricing/estimate`: pricing.py over HTTP.

Both compute an answer from the body alone and change nothing, so a read-only admin token
may call them (`write=False`: not audited either)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from ..plans import PLANS
from ..pricing import Bill, Estimate, EstimateInputs, PricingOutOfRange, bill, estimate
from .endpoints import AdminApi, Call, Model, invalid

__all__ = ["BillRequest", "routes"]

PlanName = Literal[tuple(PLANS)]  # type: ignore[valid-type]


class BillRequest(Model):
    """A period's usage to price on a plan (its built-in figures; Team's for `enterprise`).
    The bounds keep every amount exact as a JSON number."""

    plan: PlanName = Field(description="one of the plans")
    messages: int = Field(ge=0, le=10**18, description="messages in the period, all kinds")
    peak_connections: int = Field(ge=0, le=10**12, description="the period's peak of concurrent connections")
    egress_bytes: int | None = Field(
        None, ge=0, le=10**18, description="bytes written to clients in the period; absent: no egress line"
    )


def routes(api: AdminApi) -> None:
    @api.route("POST", "/admin/v1/pricing/bill", body=BillRequest, response=Bill, write=False)
    async def price(call: Call) -> Bill:
        """The bill of a period's usage on a plan: overage in packages rounded up, beside the base fee."""
        body: BillRequest = call.body
        return bill(PLANS[body.plan], body.messages, body.peak_connections, body.egress_bytes)

    @api.route("POST", "/admin/v1/pricing/estimate", body=EstimateInputs, response=Estimate, write=False)
    async def what_if(call: Call) -> Estimate:
        """The what-if estimator: a month's messages (and, given payload_bytes, egress) and cost on
        every plan, the cheapest that fits, and each serializer's envelope overhead per message."""
        try:
            return estimate(call.body)
        except PricingOutOfRange as e:
            raise invalid(e.field, str(e)) from None
