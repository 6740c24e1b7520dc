"""The hosted service's plans as data: base fee, billing quotas, overage prices, rate limits.

One copy of these numbers. tenants.py takes a tenant's default limits from its plan (explicit
limit fields override them); pricing.py bills usage against a plan's quotas; the quota
checks read `hard_quota`. Figures as Supabase publishes them: the Realtime "Limits" page, and
the pricing pages of Realtime messages and of peak connections.

`pro` is Pro with the spend cap off (overage billed, "Pro (no spend cap)" rate limits);
`pro_capped` is Pro with the spend cap on (the quotas are hard limits, Pro's rate limits).
Egress: Free includes 5 GB, Pro and Team 250 GB per billing cycle, then $0.09 per GB
(10^9 bytes) prorated, no packages. Upstream includes it per organisation and shares it with
the organisation's other services (database, storage, functions): our figure is the Realtime
share only. Team's billing quota is 500 peak connections although its connection limit is 10,000: the
two are different things. `enterprise` has no published numbers: a tenant on it takes its
quotas and prices from its own fields, Team's where it leaves one unset."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .config import Limits

__all__ = ["CUSTOM_FIELDS", "GB", "PLANS", "Plan", "effective_plan"]

GB = 10**9  # egress is billed in decimal gigabytes


@dataclass(frozen=True, slots=True)
class Plan:
    """One plan: what it costs, what it includes, and the rate limits its tenants default to."""

    name: str
    title: str
    base_fee_usd: float  # per month
    included_messages: int  # per billing cycle
    included_peak_connections: int  # per billing cycle
    # True: the quotas are hard limits and nothing is billed past them (Free, Pro with spend cap).
    hard_quota: bool
    limits: Limits
    message_package_usd: float = 2.50
    message_package_size: int = 1_000_000
    connection_package_usd: float = 10.0
    connection_package_size: int = 1_000
    # Egress (bytes written to clients), per billing cycle and per organisation upstream, where
    # the included bytes are shared with the organisation's other services: ours is the
    # Realtime share. Overage is prorated by the byte at this price per GB (10^9 bytes).
    included_egress_bytes: int = 250 * GB
    egress_usd_per_gb: float = 0.09


def _limits(
    users: int, events: int, joins: int, presence: int, payload_kb: int, channels: int = 100, presence_calls: int = 5
) -> Limits:
    return Limits(
        max_concurrent_users=users,
        max_events_per_second=events,
        max_joins_per_second=joins,
        max_channels_per_client=channels,
        max_presence_events_per_second=presence,
        max_payload_size_in_kb=payload_kb,
        max_client_presence_events_per_window=presence_calls,
        client_presence_window_ms=30_000,
    )


_TEAM_LIMITS = _limits(users=10_000, events=2_500, joins=2_500, presence=1_000, payload_kb=3_000)

PLANS: dict[str, Plan] = {
    plan.name: plan
    for plan in (
        Plan(
            "free",
            "Free",
            0.0,
            2_000_000,
            200,
            True,
            _limits(users=200, events=100, joins=100, presence=20, payload_kb=256),
            included_egress_bytes=5 * GB,
        ),
        Plan(
            "pro",
            "Pro (spend cap off)",
            25.0,
            5_000_000,
            500,
            False,
            _limits(users=10_000, events=2_500, joins=2_500, presence=1_000, payload_kb=3_000),
        ),
        Plan(
            "pro_capped",
            "Pro (spend cap on)",
            25.0,
            5_000_000,
            500,
            True,
            _limits(users=500, events=500, joins=500, presence=50, payload_kb=3_000),
        ),
        Plan("team", "Team", 599.0, 5_000_000, 500, False, _TEAM_LIMITS),
        Plan("enterprise", "Enterprise (custom)", 599.0, 5_000_000, 500, False, _TEAM_LIMITS),
    )
}

# A tenant's own quota and price fields: they shape its plan only on `enterprise`.
CUSTOM_FIELDS = (
    "base_fee_usd",
    "included_messages",
    "included_peak_connections",
    "message_package_usd",
    "connection_package_usd",
    "included_egress_bytes",
    "egress_usd_per_gb",
)


def effective_plan(name: str, custom: Mapping[str, Any] | None = None) -> Plan:
    """The plan `name` as it applies to one tenant: on `enterprise`, the tenant's `custom`
    values (CUSTOM_FIELDS; None = Team's) replace the defaults. KeyError for an unknown name."""
    plan = PLANS[name]
    if name != "enterprise" or not custom:
        return plan
    changes = {k: custom[k] for k in CUSTOM_FIELDS if custom.get(k) is not None}
    return dataclasses.replace(plan, **changes) if changes else plan
