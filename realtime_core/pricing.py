"""Bills, projections and the what-if estimator: pure functions over plans.py's plans.

One copy of the pricing rules: the admin API (admin/pricing_api.py, the metering's bill
endpoints), the console and the notebooks call these functions. Nothing here does I/O or
reads a clock; callers pass quantities and durations in.

Arithmetic is exact: counts are integers, rates are Fractions, money is Decimal computed
in a context that traps any rounding (`_EXACT`). Amounts are rounded to cents only when
they are serialized, as JSON numbers (`Money`).

A bill (`bill`) prices one period's usage against a plan: the included quantities, the
overage in packages rounded up (1,000,001 messages over = 2 packages), one line per item.
`total_usd` is the overage alone, as the hosted service's examples read ("8.5M messages on
Pro costs $10"); `base_fee_usd` stands beside it. Hard-quota plans (`free`, `pro_capped`)
bill no overage and report `restricted` once a quota is passed."""

from __future__ import annotations

import decimal
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, PlainSerializer

from .plans import PLANS, Plan

__all__ = [
    "MESSAGES",
    "PEAK_CONNECTIONS",
    "RANK",
    "Bill",
    "Estimate",
    "EstimateInputs",
    "Line",
    "PlanEstimate",
    "Usage",
    "bill",
    "estimate",
    "organization_bill",
    "organization_plan",
    "project",
]

MESSAGES = "messages"
PEAK_CONNECTIONS = "peak_connections"

# Plans from the least to the most generous. It breaks ties between equally priced plans
# in the estimator (the capped Pro before the uncapped one: same price, with a safety net)
# and picks an organisation's plan when its tenants' plans differ (organization_plan).
RANK = ("free", "pro_capped", "pro", "team", "enterprise")

# Exact or an error: Inexact is trapped, so no amount is ever silently rounded. 80 digits
# hold any product of a bounded quantity (< 10^22) and a price (a float's ≤ 17 digits).
_EXACT = decimal.Context(prec=80, traps=[decimal.Inexact, decimal.InvalidOperation, decimal.Overflow])
_CENT = Decimal("0.01")


def _usd(amount: Decimal) -> float:
    """An amount rounded to cents (half up) as a JSON number. Exact as a float while it has
    at most 15 significant digits (amounts below $10^13): the API's bounds keep it so."""
    return float(amount.quantize(_CENT, rounding=decimal.ROUND_HALF_UP, context=_EXACT))


Money = Annotated[Decimal, PlainSerializer(_usd, return_type=float)]


def _price(value: float) -> Decimal:
    """A plan's price (a float in plans.py) as the decimal it was written as."""
    return Decimal(repr(value))


class Line(BaseModel):
    """One item of a bill: `used` against `included`, the `overage` past it, the packages it
    rounds up to and what they cost (`usd`; 0 on hard-quota plans)."""

    model_config = ConfigDict(frozen=True)

    item: str  # MESSAGES or PEAK_CONNECTIONS
    used: int
    included: int
    overage: int
    packages: int
    package_size: int
    package_usd: Money
    usd: Money


class Bill(BaseModel):
    """A period's bill on one plan. `total_usd` is the overage only (the sum of the lines);
    `monthly_usd` = `base_fee_usd` + `total_usd`. `restricted`: a hard-quota plan whose usage
    passed a quota (its tenants are limited rather than billed)."""

    model_config = ConfigDict(frozen=True)

    plan: str
    total_usd: Money
    base_fee_usd: Money
    monthly_usd: Money
    restricted: bool
    lines: tuple[Line, ...]


@dataclass(frozen=True, slots=True)
class Usage:
    """Billable quantities of one period: messages (all kinds) and the peak of concurrent
    connections."""

    messages: int
    peak_connections: int


def _line(item: str, used: int, included: int, size: int, price: Decimal, hard: bool) -> Line:
    overage = max(used - included, 0)
    packages = 0 if hard else -(-overage // size)
    usd = _EXACT.multiply(Decimal(packages), price)
    return Line(
        item=item,
        used=used,
        included=included,
        overage=overage,
        packages=packages,
        package_size=size,
        package_usd=price,
        usd=usd,
    )


def bill(plan: Plan, messages: int, peak_connections: int) -> Bill:
    """The bill of `messages` and `peak_connections` (a period's totals, ≥ 0) on `plan`.

    Overage is billed in whole packages, rounded up: messages in packages of
    `plan.message_package_size` at `plan.message_package_usd`, peak connections in packages
    of `plan.connection_package_size` at `plan.connection_package_usd`. On a hard-quota plan
    nothing is billed past the quotas and `restricted` is true once either is passed (being
    exactly at a quota is not past it). Raises ValueError for a negative quantity."""
    if messages < 0 or peak_connections < 0:
        raise ValueError("quantities must be at least 0")
    hard = plan.hard_quota
    lines = (
        _line(
            MESSAGES,
            messages,
            plan.included_messages,
            plan.message_package_size,
            _price(plan.message_package_usd),
            hard,
        ),
        _line(
            PEAK_CONNECTIONS,
            peak_connections,
            plan.included_peak_connections,
            plan.connection_package_size,
            _price(plan.connection_package_usd),
            hard,
        ),
    )
    total = _EXACT.add(lines[0].usd, lines[1].usd)
    base = _price(plan.base_fee_usd)
    return Bill(
        plan=plan.name,
        total_usd=total,
        base_fee_usd=base,
        monthly_usd=_EXACT.add(base, total),
        restricted=hard and any(line.overage > 0 for line in lines),
        lines=lines,
    )


def organization_plan(plans: Iterable[Plan]) -> Plan:
    """The plan an organisation is billed on: the hosted service subscribes organisations, not
    projects, so its tenants share one plan. When their plans differ, the most generous by
    RANK wins (upgrading one project upgrades the organisation); among several `enterprise`
    plans with different custom figures, the first given wins (callers pass tenants in a
    stable order, by id). Raises ValueError when `plans` is empty."""
    best: Plan | None = None
    for plan in plans:
        if best is None or RANK.index(plan.name) > RANK.index(best.name):
            best = plan
    if best is None:
        raise ValueError("an organisation without tenants has no plan")
    return best


def organization_bill(tenants: Iterable[tuple[Plan, Usage]]) -> Bill:
    """One bill for an organisation's tenants (each its plan and its usage of the same
    period): messages summed, peak connections summed (the hosted service sums each
    project's peak), billed once on organization_plan(...). Raises ValueError when empty."""
    tenants = list(tenants)
    plan = organization_plan(p for p, _ in tenants)
    return bill(
        plan,
        sum(u.messages for _, u in tenants),
        sum(u.peak_connections for _, u in tenants),
    )


def project(
    so_far: Usage,
    window_messages: int,
    window_seconds: float,
    elapsed_seconds: float,
    cycle_seconds: float,
) -> Usage:
    """The usage the whole cycle will have if the recent rate holds.

    `so_far`: the cycle's usage up to now, `elapsed_seconds` into a cycle of `cycle_seconds`.
    `window_messages` were counted in the last `window_seconds` (the stated recent window);
    the rest of the cycle is assumed to go at that rate: messages = so far + ceil(window
    rate × seconds left). A peak is not a rate: the projected peak is the peak so far.
    A window of 0 s (nothing to go on) projects no more messages."""
    if window_seconds < 0 or window_messages < 0 or elapsed_seconds < 0 or cycle_seconds < 0:
        raise ValueError("durations and counts must be at least 0")
    left = max(Fraction(cycle_seconds) - Fraction(elapsed_seconds), Fraction(0))
    more = 0
    if window_seconds > 0:
        more = _ceil(Fraction(window_messages) * left / Fraction(window_seconds))
    return Usage(so_far.messages + more, so_far.peak_connections)


def _ceil(value: Fraction) -> int:
    return -(-value.numerator // value.denominator)


# -- The what-if estimator ---------------------------------------------------------------

# Bounds: generous (20× Studio's largest connection limit, far past the hosted throughput
# ceilings) and small enough that every answer is exact as a JSON number (< $10^13).
_MAX_CLIENTS = 1_000_000


class EstimateInputs(BaseModel):
    """What an application does, for the what-if estimator. Rates are averages over the
    active hours (`hours_per_day` × `days`); the estimator takes them as the peak too."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    concurrent_clients: int = Field(ge=0, le=_MAX_CLIENTS, description="clients connected at once")
    channels_per_client: int = Field(ge=0, le=10_000, description="channels each client joins")
    messages_per_client_per_minute: float = Field(ge=0, le=6_000, description="broadcasts each client sends")
    fanout: float = Field(ge=0, le=_MAX_CLIENTS, description="clients receiving each broadcast")
    presence_updates_per_client_per_hour: float = Field(ge=0, le=36_000, description="track/untrack calls")
    presence_members_per_channel: float = Field(ge=0, le=_MAX_CLIENTS, description="receivers of each diff")
    db_changes_per_second: float = Field(ge=0, le=100_000, description="changes to the listened tables")
    db_listeners: int = Field(ge=0, le=_MAX_CLIENTS, description="clients listening to those changes")
    rls_visible_share: float = Field(1.0, ge=0, le=1, description="share of changes each listener may see")
    hours_per_day: float = Field(24.0, gt=0, le=24, description="active hours per day")
    days: int = Field(30, ge=1, le=31, description="days in the month")


class PlanEstimate(BaseModel):
    """One plan's answer: what the month costs on it (`monthly_usd` = base fee + overage,
    `total_usd` the overage) and whether the inputs fit its rate limits (and, on a
    hard-quota plan, its quotas); `warnings` name each limit exceeded."""

    model_config = ConfigDict(frozen=True)

    plan: str
    title: str
    custom: bool  # enterprise: priced with Team's figures, the real ones are negotiated
    monthly_usd: Money
    total_usd: Money
    base_fee_usd: Money
    fits: bool
    restricted: bool
    warnings: tuple[str, ...]
    bill: Bill


class Estimate(BaseModel):
    """The estimator's answer: monthly messages by kind, the peak connections, each plan's
    price and fit, the cheapest fitting plan (None when none fits), the rates the inputs
    imply, warnings, and the formulas used with the inputs' numbers (`assumptions`)."""

    model_config = ConfigDict(frozen=True)

    messages_per_month: dict[str, int]
    peak_connections: int
    rates: dict[str, float]
    plans: tuple[PlanEstimate, ...]
    cheapest_plan: str | None
    warnings: tuple[str, ...]
    assumptions: tuple[str, ...]


def estimate(inputs: EstimateInputs, plans: Sequence[Plan] | None = None) -> Estimate:
    """Estimate a month of `inputs` on each of `plans` (default: every plan, in RANK order).

    Messages per month, each kind rounded up to a whole message:
    - broadcast = clients × messages per client per minute × 60 × hours per day × days ×
      (1 + fan-out): each broadcast counts once sent and once per receiver;
    - presence = clients × updates per client per hour × hours per day × days × (1 + members
      per channel): each track/untrack counts once and its diff once per member;
    - postgres_changes = changes per second × 3,600 × hours per day × days × listeners ×
      visible share: each change counts once per listener allowed to see it;
    peak connections = concurrent clients. A plan fits when the rates these imply respect its
    rate limits and, on a hard-quota plan, the month stays within its quotas. The cheapest
    plan is the lowest `monthly_usd` among the fitting ones, the earlier in RANK on a tie."""
    if plans is None:
        plans = [PLANS[name] for name in RANK]
    rates = _Rates(inputs)
    seconds = Fraction(3600) * _exact(inputs.hours_per_day) * inputs.days
    kinds = {
        "broadcast": _ceil(rates.broadcast * seconds),
        "presence": _ceil(rates.presence * seconds),
        "postgres_changes": _ceil(rates.changes * seconds),
    }
    messages = sum(kinds.values())
    peak = inputs.concurrent_clients
    answers = tuple(_plan_estimate(plan, inputs, rates, messages, peak) for plan in plans)
    fitting = [a for a in answers if a.fits]
    cheapest = min(fitting, key=lambda a: a.monthly_usd).plan if fitting else None
    warnings = _ceiling_warnings(rates)
    if not fitting:
        warnings.append("no plan fits these inputs: Enterprise limits are negotiated (custom)")
    return Estimate(
        messages_per_month={**kinds, "all": messages},
        peak_connections=peak,
        rates=rates.as_dict(),
        plans=answers,
        cheapest_plan=cheapest,
        warnings=tuple(warnings),
        assumptions=_assumptions(inputs, kinds),
    )


def _exact(value: float | int) -> Fraction:
    """The number a client wrote (a JSON float's shortest decimal form), exactly."""
    return Fraction(value) if isinstance(value, int) else Fraction(repr(value))


class _Rates:
    """The per-second rates during active hours that the inputs imply, exactly."""

    def __init__(self, inputs: EstimateInputs) -> None:
        clients = inputs.concurrent_clients
        sent = clients * _exact(inputs.messages_per_client_per_minute) / 60
        self.broadcast = sent * (1 + _exact(inputs.fanout))
        self.track_calls_per_hour = _exact(inputs.presence_updates_per_client_per_hour)
        self.presence = clients * self.track_calls_per_hour / 3600 * (1 + _exact(inputs.presence_members_per_channel))
        self.changes = _exact(inputs.db_changes_per_second) * inputs.db_listeners * _exact(inputs.rls_visible_share)
        # Our events/s limit counts every message sent or delivered but presence, which has its own.
        self.events = self.broadcast + self.changes
        self.joins_on_reconnect = clients * inputs.channels_per_client

    def presence_calls_per_window(self, window_ms: int) -> Fraction:
        return self.track_calls_per_hour * window_ms / 3_600_000

    def as_dict(self) -> dict[str, float]:
        return {
            "events_per_second": _rate(self.events),
            "broadcast_messages_per_second": _rate(self.broadcast),
            "presence_events_per_second": _rate(self.presence),
            "client_presence_calls_per_30s": _rate(self.presence_calls_per_window(30_000)),
            "delivered_changes_per_second": _rate(self.changes),
            "joins_on_reconnect": float(self.joins_on_reconnect),
        }


def _rate(value: Fraction) -> float:
    return float(round(value, 3))


def _plan_estimate(plan: Plan, inputs: EstimateInputs, rates: _Rates, messages: int, peak: int) -> PlanEstimate:
    limits = plan.limits
    warnings: list[str] = []

    def check(name: str, value: Fraction | int, limit: str, allowed: int) -> None:
        if value > allowed:
            warnings.append(f"{name} {_number(value)} exceeds {limit} {allowed:,} of {plan.title}")

    check("concurrent_clients", inputs.concurrent_clients, "max_concurrent_users", limits.max_concurrent_users)
    check("channels_per_client", inputs.channels_per_client, "max_channels_per_client", limits.max_channels_per_client)
    check("events per second", rates.events, "max_events_per_second", limits.max_events_per_second)
    check(
        "presence events per second",
        rates.presence,
        "max_presence_events_per_second",
        limits.max_presence_events_per_second,
    )
    check(
        f"presence calls per client per {limits.client_presence_window_ms // 1000} s",
        rates.presence_calls_per_window(limits.client_presence_window_ms),
        "max_client_presence_events_per_window",
        limits.max_client_presence_events_per_window,
    )
    fits = not warnings
    the_bill = bill(plan, messages, peak)
    if the_bill.restricted:
        fits = False
        for line in the_bill.lines:
            if line.overage:
                warnings.append(
                    f"{line.item} {line.used:,} exceed the hard quota {line.included:,} of {plan.title}:"
                    " restricted, not billed"
                )
    return PlanEstimate(
        plan=plan.name,
        title=plan.title,
        custom=plan.name == "enterprise",
        monthly_usd=the_bill.monthly_usd,
        total_usd=the_bill.total_usd,
        base_fee_usd=the_bill.base_fee_usd,
        fits=fits,
        restricted=the_bill.restricted,
        warnings=tuple(warnings),
        bill=the_bill,
    )


# limits-and-pricing of the hosted service: Postgres Changes throughput measured on every
# compute size levels off at about 3–4k delivered messages/s with RLS, 30–50k without.
_RLS_CEILING = 3_000
_PLAIN_CEILING = 30_000


def _ceiling_warnings(rates: _Rates) -> list[str]:
    delivered = rates.changes
    if delivered > _PLAIN_CEILING:
        return [
            f"{_number(delivered)} delivered changes per second exceed the hosted Postgres Changes ceiling"
            " of about 30–50k/s without RLS (about 3–4k/s with RLS), whatever the compute size"
        ]
    if delivered > _RLS_CEILING:
        return [
            f"{_number(delivered)} delivered changes per second exceed the hosted Postgres Changes ceiling"
            " of about 3–4k/s with RLS, whatever the compute size (without RLS about 30–50k/s)"
        ]
    return []


def _number(value: Fraction | int) -> str:
    if isinstance(value, int) or value.denominator == 1:
        return f"{int(value):,}"
    return f"{float(round(value, 3)):,}"


def _assumptions(inputs: EstimateInputs, kinds: dict[str, int]) -> tuple[str, ...]:
    i = inputs
    active = f"{i.hours_per_day:g} × {i.days}"
    return (
        "broadcast messages per month = clients × messages per client per minute × 60 × hours per day × days"
        f" × (1 + fan-out) = {i.concurrent_clients} × {i.messages_per_client_per_minute:g} × 60 × {active}"
        f" × (1 + {i.fanout:g}) = {kinds['broadcast']:,}",
        "presence messages per month = clients × updates per client per hour × hours per day × days"
        f" × (1 + members per channel) = {i.concurrent_clients} × {i.presence_updates_per_client_per_hour:g}"
        f" × {active} × (1 + {i.presence_members_per_channel:g}) = {kinds['presence']:,}",
        "postgres_changes messages per month = changes per second × 3,600 × hours per day × days × listening"
        f" clients × visible share under RLS = {i.db_changes_per_second:g} × 3,600 × {active} × {i.db_listeners}"
        f" × {i.rls_visible_share:g} = {kinds['postgres_changes']:,}",
        f"peak connections = concurrent clients = {i.concurrent_clients}",
        "each kind is rounded up to a whole message; usage is even over the active hours, so the average"
        " rate during them is also the peak rate",
        "events per second = broadcasts sent and delivered + changes delivered, per second (presence has its own"
        " limit: track calls and diffs delivered per second)",
        "a plan fits when these rates respect its rate limits and, on a hard-quota plan, the month stays within"
        " its quotas; monthly_usd = base fee + overage (packages rounded up)",
        "enterprise is priced with Team's figures: its real prices and limits are negotiated (custom)",
    )
