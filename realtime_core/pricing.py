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
bill no overage and report `restricted` once a quota is passed.

Egress (bytes written to clients) is an optional third item: when a caller passes it, the bill
gets an `egress` line, its overage prorated by the byte at the plan's price per GB (10^9 bytes)
and rounded to the cent, no packages. Upstream includes egress per organisation and shares it
with the organisation's other services; our figure is the Realtime share (EGRESS_NOTE)."""

from __future__ import annotations

import decimal
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, PlainSerializer

from .plans import GB, PLANS, Plan
from .protocol import JSON, V1, V2, Codec, UserBroadcast

__all__ = [
    "EGRESS",
    "EGRESS_NOTE",
    "ENVELOPE_EVENT",
    "ENVELOPE_TOPIC",
    "MESSAGES",
    "PEAK_CONNECTIONS",
    "RANK",
    "Bill",
    "Envelope",
    "Estimate",
    "EstimateInputs",
    "Line",
    "PlanEstimate",
    "PricingOutOfRange",
    "Usage",
    "bill",
    "envelope",
    "estimate",
    "organization_bill",
    "organization_plan",
    "plans_table",
    "project",
]

MESSAGES = "messages"
PEAK_CONNECTIONS = "peak_connections"
EGRESS = "egress"
EGRESS_NOTE = (
    "egress: the hosted service includes egress per organisation and shares it with the organisation's"
    " other services (database, storage, functions); this figure is the Realtime share only"
)

# Plans from the least to the most generous. It breaks ties between equally priced plans
# in the estimator (the capped Pro before the uncapped one: same price, with a safety net)
# and picks an organisation's plan when its tenants' plans differ (organization_plan).
RANK = ("free", "pro_capped", "pro", "team", "enterprise")

# Exact or an error: Inexact is trapped, so no amount is ever silently rounded. 80 digits
# hold any product of a bounded quantity (< 10^22) and a price (a float's ≤ 17 digits).
_EXACT = decimal.Context(prec=80, traps=[decimal.Inexact, decimal.InvalidOperation, decimal.Overflow])
_CENT = Decimal("0.01")
_TO_CENTS = decimal.Context(prec=80, rounding=decimal.ROUND_HALF_UP)  # the one rounding: in _usd


def _usd(amount: Decimal) -> float:
    """An amount rounded to cents (half up) as a JSON number. The float is exact while the
    amount has at most 15 significant digits, and for any amount of the built-in plans within
    the API's bounds: their prices and fees are multiples of $0.50, and their amounts stay
    below $2^51 (the largest estimate is about $7.4 × 10^14)."""
    return float(amount.quantize(_CENT, context=_TO_CENTS))


Money = Annotated[Decimal, PlainSerializer(_usd, return_type=float)]


def _shown_exactly(amount: Decimal) -> bool:
    """Whether the JSON number of `amount` (_usd) reads back as the amount to the cent."""
    cents = amount.quantize(_CENT, context=_TO_CENTS)
    return Decimal(repr(float(cents))) == cents


def _price(value: float | Decimal) -> Decimal:
    """A plan's price (a float in plans.py, or a tenant's numeric column) as the decimal it
    was written as."""
    return Decimal(str(value))


class Line(BaseModel):
    """One item of a bill: `used` against `included`, the `overage` past it, the packages it
    rounds up to and what they cost (`usd`; 0 on hard-quota plans). Egress has no packages
    (`packages` null): its overage is prorated at `package_usd` per `package_size` bytes (1 GB)."""

    model_config = ConfigDict(frozen=True)

    item: str  # MESSAGES, PEAK_CONNECTIONS or EGRESS
    used: int
    included: int
    overage: int
    packages: int | None
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
    # Left out when empty: a bill without egress answers exactly as before egress was billed
    # (issue #11's examples).
    notes: tuple[str, ...] = Field(
        (), exclude_if=lambda notes: not notes, description="with an egress line: what the egress figure covers"
    )


@dataclass(frozen=True, slots=True)
class Usage:
    """Billable quantities of one period: messages (all kinds), the peak of concurrent
    connections and, when metered, the bytes of egress (None: not billed, no egress line)."""

    messages: int
    peak_connections: int
    egress_bytes: int | None = None


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


def _egress_line(plan: Plan, used: int, hard: bool) -> Line:
    overage = max(used - plan.included_egress_bytes, 0)
    price = _price(plan.egress_usd_per_gb)
    usd = Decimal(0)
    if not hard:
        # Prorated by the byte, then rounded to the cent (half up): the line's one rounding.
        exact = _EXACT.divide(_EXACT.multiply(Decimal(overage), price), Decimal(GB))
        usd = exact.quantize(_CENT, context=_TO_CENTS)
    return Line(
        item=EGRESS,
        used=used,
        included=plan.included_egress_bytes,
        overage=overage,
        packages=None,
        package_size=GB,
        package_usd=price,
        usd=usd,
    )


def bill(plan: Plan, messages: int, peak_connections: int, egress_bytes: int | None = None) -> Bill:
    """The bill of `messages` and `peak_connections` (a period's totals, ≥ 0) on `plan`, and of
    `egress_bytes` when given (None: no egress line, the bill is as without egress).

    Overage is billed in whole packages, rounded up: messages in packages of
    `plan.message_package_size` at `plan.message_package_usd`, peak connections in packages
    of `plan.connection_package_size` at `plan.connection_package_usd`. On a hard-quota plan
    nothing is billed past the quotas and `restricted` is true once either is passed (being
    exactly at a quota is not past it). Egress past `plan.included_egress_bytes` costs
    `plan.egress_usd_per_gb` per 10^9 bytes, prorated and rounded to the cent; on a hard-quota
    plan it is not billed and restricts like the other quotas. Raises ValueError for a negative
    quantity, and PricingOutOfRange (naming the costliest item) for a bill whose amounts a JSON
    number could not give to the cent (past about $10^13 on custom prices; never on the built-in
    plans within the API's bounds)."""
    if messages < 0 or peak_connections < 0 or (egress_bytes is not None and egress_bytes < 0):
        raise ValueError("quantities must be at least 0")
    hard = plan.hard_quota
    lines: tuple[Line, ...] = (
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
    if egress_bytes is not None:
        lines += (_egress_line(plan, egress_bytes, hard),)
    total = Decimal(0)
    for line in lines:
        total = _EXACT.add(total, line.usd)
    base = _price(plan.base_fee_usd)
    monthly = _EXACT.add(base, total)
    if not all(_shown_exactly(amount) for amount in (monthly, total, *(line.usd for line in lines))):
        costliest = max(lines, key=lambda line: line.usd).item
        raise PricingOutOfRange(costliest, "this bill is too large to give to the cent as a JSON number")
    return Bill(
        plan=plan.name,
        total_usd=total,
        base_fee_usd=base,
        monthly_usd=monthly,
        restricted=hard and any(line.overage > 0 for line in lines),
        lines=lines,
        notes=(EGRESS_NOTE,) if egress_bytes is not None else (),
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
    project's peak), egress summed (its included bytes are per organisation: counted once),
    billed once on organization_plan(...). Egress is billed when any tenant's usage has it (a
    tenant without counts as 0). Raises ValueError when empty."""
    tenants = list(tenants)
    plan = organization_plan(p for p, _ in tenants)
    egress = [u.egress_bytes for _, u in tenants if u.egress_bytes is not None]
    return bill(
        plan,
        sum(u.messages for _, u in tenants),
        sum(u.peak_connections for _, u in tenants),
        sum(egress) if egress else None,
    )


def project(
    so_far: Usage,
    window_messages: int,
    window_seconds: float,
    elapsed_seconds: float,
    cycle_seconds: float,
    window_egress_bytes: int = 0,
) -> Usage:
    """The usage the whole cycle will have if the recent rate holds.

    `so_far`: the cycle's usage up to now, `elapsed_seconds` into a cycle of `cycle_seconds`.
    `window_messages` were counted in the last `window_seconds` (the stated recent window);
    the rest of the cycle is assumed to go at that rate: messages = so far + ceil(window
    rate × seconds left). A peak is not a rate: the projected peak is the peak so far.
    Egress, when `so_far` has it, is projected like messages from the `window_egress_bytes`
    of the same window. A window of 0 s (nothing to go on) projects no more of either."""
    if min(window_seconds, window_messages, elapsed_seconds, cycle_seconds, window_egress_bytes) < 0:
        raise ValueError("durations and counts must be at least 0")
    left = max(Fraction(cycle_seconds) - Fraction(elapsed_seconds), Fraction(0))

    def more(counted: int) -> int:
        return _ceil(Fraction(counted) * left / Fraction(window_seconds)) if window_seconds > 0 else 0

    egress = so_far.egress_bytes
    return Usage(
        so_far.messages + more(window_messages),
        so_far.peak_connections,
        None if egress is None else egress + more(window_egress_bytes),
    )


def _ceil(value: Fraction) -> int:
    return -(-value.numerator // value.denominator)


# -- The what-if estimator ---------------------------------------------------------------

# Bounds: generous (20× Studio's largest connection limit, far past the hosted throughput
# ceilings) and small enough that every answer is exact as a JSON number (see _usd).
_MAX_CLIENTS = 1_000_000
_MAX_PAYLOAD = 3_000 * 1024  # the largest max_payload_size_in_kb of any plan
# With egress priced, every amount must stay exact to the cent as a JSON number (15 digits).
_MAX_EGRESS = 10**21  # bytes per month: $9 × 10^10 at $0.09 per GB
_MAX_PRICED_USD = Decimal(10**12)

# The envelope comparison: a broadcast to a topic of typical length (realtime-js topics are
# "realtime:" + the channel's name) with a short event name.
ENVELOPE_TOPIC = "realtime:room:support-42"
ENVELOPE_EVENT = "message"
DEFAULT_ENVELOPE_PAYLOAD = 100  # bytes: the envelope shown when the inputs give no payload size
VSNS = ("1.0.0", "2.0.0")
_CODECS: dict[str, Codec] = {"1.0.0": V1, "2.0.0": V2}


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
    payload_bytes: int | None = Field(
        None,
        ge=1,
        le=_MAX_PAYLOAD,
        description="average payload size in bytes; given, egress is estimated and priced (a month too large to"
        " price to the cent, over 10^21 bytes or $10^12, is refused naming this field)",
    )
    vsn: Literal["1.0.0", "2.0.0"] = Field("1.0.0", description="the clients' serializer: egress is priced with it")


class PricingOutOfRange(ValueError):
    """Inputs each within bounds whose bill or month is too large to price exactly to the cent
    as a JSON number; `field` is the input to lower (the API answers 422 naming it)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


class EnvelopeFrame(BaseModel):
    """One serializer's frame for the envelope comparison: its size on the wire (WebSocket
    header included) and how much of it is not the payload."""

    model_config = ConfigDict(frozen=True)

    vsn: str
    serializer: str
    frame_bytes: int
    overhead_bytes: int


class Envelope(BaseModel):
    """What one broadcast of `payload_bytes` costs on the wire by serializer, as the server's
    own codecs frame it; `saving_bytes` is what switching from vsn 1.0.0 to 2.0.0 saves per
    delivered message."""

    model_config = ConfigDict(frozen=True)

    topic: str
    event: str
    payload_bytes: int
    frames: tuple[EnvelopeFrame, ...]
    saving_bytes: int


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
    egress_bytes_per_month: dict[str, dict[str, int]] | None = Field(
        None, description="by vsn, then by kind and `all` (null without payload_bytes); plans are priced with `vsn`"
    )
    envelope: Envelope


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
    plan is the lowest `monthly_usd` among the fitting ones, the earlier in `plans` on a tie.

    Given `payload_bytes`, egress per month = messages delivered × the frame each is sent in
    (the server's codecs, by vsn), and each plan's bill has an egress line priced with
    `inputs.vsn`. `envelope` compares one broadcast's frame by serializer. Raises
    PricingOutOfRange when the month is too large to price to the cent."""
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
    egress = None if inputs.payload_bytes is None else _egress(inputs.payload_bytes, inputs, rates, seconds)
    billed = None if egress is None else egress[inputs.vsn]["all"]
    answers = tuple(_plan_estimate(plan, inputs, rates, messages, peak, billed) for plan in plans)
    if billed is not None and any(a.monthly_usd >= _MAX_PRICED_USD for a in answers):
        raise PricingOutOfRange(
            "payload_bytes", f"a month must cost less than ${_MAX_PRICED_USD:,} on every plan to be priced to the cent"
        )
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
        assumptions=_assumptions(inputs, kinds) + _egress_assumptions(inputs),
        egress_bytes_per_month=egress,
        envelope=envelope(inputs.payload_bytes or DEFAULT_ENVELOPE_PAYLOAD),
    )


def _payload(size: int) -> bytes:
    """A JSON payload of exactly `size` (≥ 1) bytes: a digit, else a string."""
    return b"0" if size == 1 else b'"' + b"x" * (size - 2) + b'"'


def _sent_as_json(data: bytes) -> bytes:
    """The payload of a broadcast a client sent as JSON text, as the channel passes it on."""
    return b'{"type":"broadcast","event":' + json.dumps(ENVELOPE_EVENT).encode() + b',"payload":' + data + b"}"


def _frame_sizes(codec: Codec, payload_bytes: int) -> dict[str, int]:
    """The frame sent per delivered message of each kind carrying a payload of `payload_bytes`,
    as `codec` encodes it (the WebSocket header included): a user broadcast, a presence diff and
    a Postgres change (for these two the payload is the whole diff or {ids, data} object)."""
    data = _payload(payload_bytes)
    broadcast = codec.user_broadcast(ENVELOPE_TOPIC, UserBroadcast(ENVELOPE_EVENT, data, JSON))
    assert broadcast is not None  # a JSON payload always has a frame
    return {
        "broadcast": len(broadcast),
        "presence": len(codec.broadcast_json(ENVELOPE_TOPIC, "presence_diff", data)),
        "postgres_changes": len(codec.broadcast_json(ENVELOPE_TOPIC, "postgres_changes", data)),
    }


def envelope(payload_bytes: int) -> Envelope:
    """A broadcast of `payload_bytes` (≥ 1) to ENVELOPE_TOPIC as each vsn's codec frames it:
    vsn 1.0.0 a JSON text frame, vsn 2.0.0 a binary frame (the payload's bytes as the sender
    wrote them; senders on vsn 2.0.0 send binary user broadcasts, as realtime-js does), and
    third the JSON array text frame a vsn 2.0.0 socket gets for a broadcast sent as JSON text
    (by a vsn 1.0.0 client). Overhead = frame − payload."""
    sizes = (
        ("1.0.0", "JSON text frame", _frame_sizes(V1, payload_bytes)["broadcast"]),
        ("2.0.0", "binary frame", _frame_sizes(V2, payload_bytes)["broadcast"]),
        (
            "2.0.0",
            "JSON array text frame (a broadcast sent as JSON text)",
            len(V2.broadcast_json(ENVELOPE_TOPIC, "broadcast", _sent_as_json(_payload(payload_bytes)))),
        ),
    )
    frames = tuple(
        EnvelopeFrame(vsn=vsn, serializer=serializer, frame_bytes=size, overhead_bytes=size - payload_bytes)
        for vsn, serializer, size in sizes
    )
    return Envelope(
        topic=ENVELOPE_TOPIC,
        event=ENVELOPE_EVENT,
        payload_bytes=payload_bytes,
        frames=frames,
        saving_bytes=frames[0].frame_bytes - frames[1].frame_bytes,  # JSON text on 1.0.0 → binary on 2.0.0
    )


def _deliveries(inputs: EstimateInputs, rates: _Rates, seconds: Fraction) -> dict[str, int]:
    """Messages written to clients per month, by kind: the messages counted minus the ones
    counted when sent (a broadcast's sender and a track call receive nothing back)."""
    clients = inputs.concurrent_clients
    broadcast = clients * _exact(inputs.messages_per_client_per_minute) / 60 * _exact(inputs.fanout)
    presence = clients * rates.track_calls_per_hour / 3600 * _exact(inputs.presence_members_per_channel)
    return {
        "broadcast": _ceil(broadcast * seconds),
        "presence": _ceil(presence * seconds),
        "postgres_changes": _ceil(rates.changes * seconds),
    }


def _egress(payload_bytes: int, inputs: EstimateInputs, rates: _Rates, seconds: Fraction) -> dict[str, dict[str, int]]:
    """Egress bytes per month by vsn, then by kind and `all`. Raises PricingOutOfRange past
    _MAX_EGRESS."""
    delivered = _deliveries(inputs, rates, seconds)
    answer: dict[str, dict[str, int]] = {}
    for vsn in VSNS:
        sizes = _frame_sizes(_CODECS[vsn], payload_bytes)
        kinds = {kind: n * sizes[kind] for kind, n in delivered.items()}
        answer[vsn] = {**kinds, "all": sum(kinds.values())}
        if answer[vsn]["all"] > _MAX_EGRESS:
            raise PricingOutOfRange(
                "payload_bytes", f"the month's egress must stay within {_MAX_EGRESS:,} bytes to be priced to the cent"
            )
    return answer


def _egress_assumptions(inputs: EstimateInputs) -> tuple[str, ...]:
    if inputs.payload_bytes is None:
        return ()
    sizes = _frame_sizes(_CODECS[inputs.vsn], inputs.payload_bytes)
    return (
        "egress per month = messages delivered × their frame size: broadcasts delivered = clients × messages"
        " per client per minute × 60 × hours per day × days × fan-out (no copy back to the sender), presence"
        " diffs delivered = clients × updates per client per hour × hours per day × days × members per channel,"
        " Postgres Changes delivered = the postgres_changes messages",
        f"frames as the server's vsn {inputs.vsn} codec builds them for a payload of {inputs.payload_bytes:,}"
        f" bytes on topic {ENVELOPE_TOPIC!r}, WebSocket header included: broadcast {sizes['broadcast']:,},"
        f" presence_diff {sizes['presence']:,}, postgres_changes {sizes['postgres_changes']:,} bytes (for presence"
        " and Postgres Changes the payload is the whole diff or record); plans price the egress of vsn"
        f" {inputs.vsn}, egress_bytes_per_month shows both (on vsn 2.0.0 broadcasts are binary frames, as when"
        " their senders are on 2.0.0 too)",
        "egress leaves out heartbeats, replies, joins, the HTTP upgrade and REST responses (metered egress counts"
        " them under protocol and rest)",
        EGRESS_NOTE,
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


def _plan_estimate(
    plan: Plan, inputs: EstimateInputs, rates: _Rates, messages: int, peak: int, egress: int | None
) -> PlanEstimate:
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
    the_bill = bill(plan, messages, peak, egress)
    if the_bill.restricted:
        fits = False
        for line in the_bill.lines:
            if line.overage:
                unit = " bytes" if line.item == EGRESS else ""
                warnings.append(
                    f"{line.item} {line.used:,}{unit} exceed the hard quota {line.included:,}{unit} of {plan.title}:"
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


def _show(value: float | int) -> str:
    """An input as the client wrote it: 8 for 8.0, 0.1 for 0.1 (never rounded)."""
    return str(int(value)) if float(value).is_integer() else repr(value)


def _assumptions(inputs: EstimateInputs, kinds: dict[str, int]) -> tuple[str, ...]:
    i = inputs
    active = f"{_show(i.hours_per_day)} × {i.days}"
    return (
        "broadcast messages per month = clients × messages per client per minute × 60 × hours per day × days"
        f" × (1 + fan-out) = {i.concurrent_clients} × {_show(i.messages_per_client_per_minute)} × 60 × {active}"
        f" × (1 + {_show(i.fanout)}) = {kinds['broadcast']:,}",
        "presence messages per month = clients × updates per client per hour × hours per day × days"
        f" × (1 + members per channel) = {i.concurrent_clients} × {_show(i.presence_updates_per_client_per_hour)}"
        f" × {active} × (1 + {_show(i.presence_members_per_channel)}) = {kinds['presence']:,}",
        "postgres_changes messages per month = changes per second × 3,600 × hours per day × days × listening"
        f" clients × visible share under RLS = {_show(i.db_changes_per_second)} × 3,600 × {active} × {i.db_listeners}"
        f" × {_show(i.rls_visible_share)} = {kinds['postgres_changes']:,}",
        f"peak connections = concurrent clients = {i.concurrent_clients}",
        "each kind is rounded up to a whole message; usage is even over the active hours, so the average"
        " rate during them is also the peak rate",
        "events per second = broadcasts sent and delivered + changes delivered, per second (presence has its own"
        " limit: track calls and diffs delivered per second)",
        "a plan fits when these rates respect its rate limits and, on a hard-quota plan, the month stays within"
        " its quotas; monthly_usd = base fee + overage (packages rounded up)",
        "enterprise is priced with Team's figures: its real prices and limits are negotiated (custom)",
    )


def plans_table() -> str:
    """README.md's table of the plans (scripts/config-readme writes it between `<!-- plans -->`
    and `<!-- /plans -->`; tests/test_pricing.py checks it is current)."""
    rows = [
        "| plan | title | base fee / month | included messages | included peak connections | included egress"
        " | past the quotas | connections | events/s | joins/s | channels per client | presence events/s"
        " | payload KB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name in RANK:
        p = PLANS[name]
        lim = p.limits
        past = (
            "restricted (hard quota)"
            if p.hard_quota
            else f"{_dollars(p.message_package_usd)} per {p.message_package_size:,} messages,"
            f" {_dollars(p.connection_package_usd)} per {p.connection_package_size:,} connections,"
            f" {_dollars(p.egress_usd_per_gb)} per GB of egress (prorated)"
        )
        rows.append(
            f"| `{name}` | {p.title} | {_dollars(p.base_fee_usd)} | {p.included_messages:,}"
            f" | {p.included_peak_connections:,} | {_gigabytes(p.included_egress_bytes)} | {past}"
            f" | {lim.max_concurrent_users:,}"
            f" | {lim.max_events_per_second:,} | {lim.max_joins_per_second:,} | {lim.max_channels_per_client:,}"
            f" | {lim.max_presence_events_per_second:,} | {lim.max_payload_size_in_kb:,} |"
        )
    return "\n".join(rows) + "\n"


def _gigabytes(size: int) -> str:
    return f"{size // GB:,} GB" if size % GB == 0 else f"{size:,} bytes"


def _dollars(value: float) -> str:
    amount = _price(value)
    return f"${int(amount):,}" if amount == amount.to_integral_value() else f"${amount:,.2f}"
