"""Pricing (realtime_core/pricing.py): bills against the published examples and the edge
cases of quotas, organisation bills, projections and the what-if estimator, with property
tests of the rules (monotone, totals are the sum of their lines, the cheapest plan is the
cheapest that fits)."""

from __future__ import annotations

import re
import time
from decimal import Decimal
from fractions import Fraction
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pricing_examples import ESTIMATE_INPUTS
from pydantic import ValidationError

from realtime_core.plans import PLANS, Plan, effective_plan
from realtime_core.pricing import (
    RANK,
    Bill,
    EstimateInputs,
    PricingOutOfRange,
    Usage,
    bill,
    estimate,
    organization_bill,
    organization_plan,
    plans_table,
    project,
)

README = Path(__file__).resolve().parent.parent / "README.md"
PRO, TEAM, FREE, CAPPED = PLANS["pro"], PLANS["team"], PLANS["free"], PLANS["pro_capped"]


def line(b: Bill, item: str) -> dict:
    return next(x for x in b.model_dump(mode="json")["lines"] if x["item"] == item)


class TestPublishedExamples:
    """The hosted service's pricing pages: "8.5M messages on Pro costs $10", "1,700 peak
    connections on Pro costs $20"."""

    def test_messages(self):
        b = bill(PRO, 8_500_000, 0)
        assert line(b, "messages") | {} == {
            "item": "messages",
            "used": 8_500_000,
            "included": 5_000_000,
            "overage": 3_500_000,
            "packages": 4,
            "package_size": 1_000_000,
            "package_usd": 2.5,
            "usd": 10.0,
        }
        assert b.total_usd == Decimal(10)

    def test_peak_connections(self):
        b = bill(PRO, 0, 1_700)
        assert (line(b, "peak_connections")["overage"], line(b, "peak_connections")["packages"]) == (1_200, 2)
        assert b.total_usd == Decimal(20)

    def test_both_as_the_api_answers_them(self):
        assert bill(PRO, 8_500_000, 1_700).model_dump(mode="json") == {
            "plan": "pro",
            "total_usd": 30.0,
            "base_fee_usd": 25.0,
            "monthly_usd": 55.0,
            "restricted": False,
            "lines": [
                {
                    "item": "messages",
                    "used": 8_500_000,
                    "included": 5_000_000,
                    "overage": 3_500_000,
                    "packages": 4,
                    "package_size": 1_000_000,
                    "package_usd": 2.5,
                    "usd": 10.0,
                },
                {
                    "item": "peak_connections",
                    "used": 1_700,
                    "included": 500,
                    "overage": 1_200,
                    "packages": 2,
                    "package_size": 1_000,
                    "package_usd": 10.0,
                    "usd": 20.0,
                },
            ],
        }


class TestQuotaEdges:
    def test_exactly_at_the_quotas_nothing_is_billed(self):
        b = bill(PRO, 5_000_000, 500)
        assert [(x.overage, x.packages, x.usd) for x in b.lines] == [(0, 0, 0), (0, 0, 0)]
        assert b.total_usd == 0 and b.monthly_usd == 25 and not b.restricted

    def test_one_over_is_a_whole_package(self):
        assert bill(PRO, 5_000_001, 0).total_usd == Decimal("2.50")
        assert bill(PRO, 0, 501).total_usd == Decimal(10)

    def test_packages_round_up(self):
        """The pricing page: 1,000,001 messages over the quota are 2 packages."""
        b = bill(PRO, 6_000_001, 0)
        assert (b.lines[0].overage, b.lines[0].packages, b.total_usd) == (1_000_001, 2, Decimal(5))
        assert bill(PRO, 7_000_000, 0).lines[0].packages == 2

    def test_free_at_its_cap_is_not_restricted(self):
        b = bill(FREE, 2_000_000, 200)
        assert not b.restricted and b.total_usd == 0 and b.base_fee_usd == 0

    @pytest.mark.parametrize(("messages", "peak"), [(2_000_001, 0), (0, 201), (10**12, 10**6)])
    def test_free_past_its_cap_is_restricted_and_bills_nothing(self, messages, peak):
        b = bill(FREE, messages, peak)
        assert b.restricted
        assert b.total_usd == 0 and b.monthly_usd == 0
        assert all(x.packages == 0 and x.usd == 0 for x in b.lines)
        assert b.lines[0].overage == max(messages - 2_000_000, 0)

    def test_pro_with_the_spend_cap_is_restricted_past_its_quota(self):
        assert not bill(CAPPED, 5_000_000, 500).restricted
        b = bill(CAPPED, 5_000_000, 501)
        assert b.restricted and b.total_usd == 0 and b.monthly_usd == 25

    def test_team_bills_connections_past_500_although_it_allows_10000(self):
        assert TEAM.limits.max_concurrent_users == 10_000
        assert TEAM.included_peak_connections == 500
        assert bill(TEAM, 0, 500).total_usd == 0
        assert bill(TEAM, 0, 501).total_usd == 10
        b = bill(TEAM, 0, 10_000)
        assert (b.lines[1].overage, b.lines[1].packages, b.total_usd, b.monthly_usd) == (9_500, 10, 100, 699)
        assert not b.restricted

    def test_base_fees(self):
        assert [bill(PLANS[name], 0, 0).base_fee_usd for name in RANK] == [0, 25, 25, 599, 599]

    def test_negative_quantities_are_refused(self):
        with pytest.raises(ValueError):
            bill(PRO, -1, 0)
        with pytest.raises(ValueError):
            bill(PRO, 0, -1)

    def test_enterprise_prices_come_from_the_tenant_and_stay_exact(self):
        plan = effective_plan("enterprise", {"message_package_usd": 2.37, "included_messages": 10, "base_fee_usd": 0.1})
        b = bill(plan, 2_000_010, 0)
        assert b.lines[0].packages == 2
        assert b.total_usd == Decimal("4.74")
        assert b.monthly_usd == Decimal("4.84")  # not 4.840000000000001
        assert b.model_dump(mode="json")["monthly_usd"] == 4.84

    def test_a_price_finer_than_cents_is_exact_and_shown_in_cents(self):
        plan = effective_plan("enterprise", {"message_package_usd": 2.3333, "included_messages": 0})
        b = bill(plan, 3_000_001, 0)  # 4 packages
        assert b.total_usd == Decimal("9.3332")
        shown = b.model_dump(mode="json")
        assert (shown["total_usd"], shown["lines"][0]["package_usd"]) == (9.33, 2.33)
        half = effective_plan("enterprise", {"message_package_usd": 2.345, "included_messages": 0})
        assert bill(half, 1, 0).model_dump(mode="json")["total_usd"] == 2.35  # half up, not to even

    def test_huge_quantities_are_exact(self):
        b = bill(PRO, 10**18, 10**12)
        assert b.lines[0].packages == 10**12 - 5
        assert b.total_usd == Decimal(10**12 - 5) * Decimal("2.5") + Decimal(10**9) * 10  # 999,999,999.5 packages: 10^9
        assert Decimal(repr(b.model_dump(mode="json")["total_usd"])) == b.total_usd


class TestPlans:
    """plans.py against the published tables (limits page; pricing pages)."""

    # name: users, events/s, joins/s, channels, presence/s, payload KB, quota messages, quota peak, fee
    PUBLISHED = {
        "free": (200, 100, 100, 100, 20, 256, 2_000_000, 200, 0),
        "pro_capped": (500, 500, 500, 100, 50, 3_000, 5_000_000, 500, 25),
        "pro": (10_000, 2_500, 2_500, 100, 1_000, 3_000, 5_000_000, 500, 25),
        "team": (10_000, 2_500, 2_500, 100, 1_000, 3_000, 5_000_000, 500, 599),
    }

    @pytest.mark.parametrize("name", list(PUBLISHED))
    def test_figures(self, name):
        p = PLANS[name]
        lim = p.limits
        assert (
            lim.max_concurrent_users,
            lim.max_events_per_second,
            lim.max_joins_per_second,
            lim.max_channels_per_client,
            lim.max_presence_events_per_second,
            lim.max_payload_size_in_kb,
            p.included_messages,
            p.included_peak_connections,
            p.base_fee_usd,
        ) == self.PUBLISHED[name]
        assert (lim.max_client_presence_events_per_window, lim.client_presence_window_ms) == (5, 30_000)
        assert (p.message_package_usd, p.message_package_size) == (2.5, 1_000_000)
        assert (p.connection_package_usd, p.connection_package_size) == (10.0, 1_000)
        assert p.hard_quota == (name in ("free", "pro_capped"))

    def test_the_readme_table_is_generated_from_the_plans(self):
        """Run scripts/config-readme after changing plans.py."""
        block = re.search(r"<!-- plans -->\n(.*?)<!-- /plans -->", README.read_text(), re.S)
        assert block is not None, "README.md lacks the <!-- plans --> block"
        assert block[1] == plans_table()

    def test_the_table_lists_every_plan(self):
        rows = [r for r in plans_table().splitlines() if r.startswith("| `")]
        assert [r.split("`")[1] for r in rows] == list(RANK)
        assert "| `team` | Team | $599 | 5,000,000 | 500 |" in plans_table()


class TestOrganization:
    def test_sums_messages_and_peaks_and_bills_once(self):
        b = organization_bill([(PRO, Usage(3_000_000, 300)), (PRO, Usage(2_500_000, 250))])
        assert (b.lines[0].used, b.lines[1].used) == (5_500_000, 550)
        assert b.total_usd == Decimal("12.50")  # 1 package of messages, 1 of connections
        assert b.base_fee_usd == 25  # once, not per tenant

    def test_mixed_plans_bill_on_the_most_generous(self):
        assert organization_plan([FREE, TEAM, PRO]) is TEAM
        assert organization_plan([CAPPED, PRO]) is PRO
        assert organization_plan([FREE, CAPPED]) is CAPPED
        assert organization_bill([(FREE, Usage(1, 1)), (PRO, Usage(1, 1))]).plan == "pro"

    def test_enterprise_custom_figures_of_the_first_tenant_win(self):
        first = effective_plan("enterprise", {"base_fee_usd": 1000.0})
        second = effective_plan("enterprise", {"base_fee_usd": 2000.0})
        assert organization_plan([TEAM, first, second]) is first

    def test_free_tenants_each_under_the_cap_but_not_together(self):
        b = organization_bill([(FREE, Usage(1_500_000, 150)), (FREE, Usage(1_500_000, 150))])
        assert b.restricted and b.total_usd == 0

    def test_an_organisation_needs_tenants(self):
        with pytest.raises(ValueError):
            organization_bill([])


class TestProjection:
    def test_the_window_rate_runs_to_the_end_of_the_cycle(self):
        # 1,000 messages in the last hour, 10 days into a 30-day cycle: 20 days × 24 h × 1,000 more.
        day = 86_400
        p = project(Usage(4_000_000, 700), 1_000, 3_600, 10 * day, 30 * day)
        assert p == Usage(4_000_000 + 480_000, 700)

    def test_partial_messages_round_up(self):
        assert project(Usage(0, 0), 1, 3, 0, 1).messages == 1  # 1/3 of a message
        assert project(Usage(0, 0), 1, 3, 0, 3).messages == 1
        assert project(Usage(0, 0), 1, 3, 0, 4).messages == 2

    def test_fractional_seconds_are_exact(self):
        assert project(Usage(5, 1), 10, 0.5, 0.25, 1.25).messages == 5 + 20

    def test_no_window_or_no_time_left_projects_what_was_used(self):
        assert project(Usage(7, 3), 100, 0, 10, 100) == Usage(7, 3)
        assert project(Usage(7, 3), 100, 10, 100, 100) == Usage(7, 3)
        assert project(Usage(7, 3), 100, 10, 200, 100) == Usage(7, 3)

    def test_negative_inputs_are_refused(self):
        with pytest.raises(ValueError):
            project(Usage(0, 0), -1, 10, 0, 100)


def inputs(**changes: object) -> EstimateInputs:
    return EstimateInputs.model_validate({**ESTIMATE_INPUTS, **changes})


class TestEstimate:
    def test_the_issue_example_by_hand(self):
        e = estimate(inputs())
        broadcast = 1000 * 6 * 60 * 8 * 30 * (1 + 10)
        changes = 5 * 3600 * 8 * 30 * 200
        assert e.messages_per_month == {
            "broadcast": broadcast,
            "presence": 0,
            "postgres_changes": changes,
            "all": broadcast + changes,
        }
        assert e.peak_connections == 1000
        packages = -(-(broadcast + changes - 5_000_000) // 1_000_000)
        overage = Decimal(packages) * Decimal("2.5") + 10  # 500 connections over: 1 package
        by_plan = {p.plan: p for p in e.plans}
        assert list(by_plan) == list(RANK)
        assert by_plan["pro"].total_usd == overage == Decimal(4535)
        assert by_plan["pro"].monthly_usd == 25 + overage
        assert by_plan["team"].monthly_usd == by_plan["enterprise"].monthly_usd == 599 + overage
        assert [p.fits for p in e.plans] == [False, False, True, True, True]
        assert e.cheapest_plan == "pro"
        assert by_plan["enterprise"].custom and not by_plan["team"].custom
        # 1,000 clients × 6/min ÷ 60 × 11 + 5 × 200 = 2,100 events/s: over Free's 100 and capped Pro's 500.
        assert e.rates["events_per_second"] == 2100
        assert "concurrent_clients 1,000 exceeds max_concurrent_users 200 of Free" in by_plan["free"].warnings
        assert any("max_events_per_second 500" in w for w in by_plan["pro_capped"].warnings)
        assert by_plan["pro"].warnings == ()
        assert e.warnings == ()
        assert e.assumptions[0].endswith("= 1000 × 6 × 60 × 8 × 30 × (1 + 10) = 950,400,000")
        assert e.assumptions[2].endswith("= 5 × 3,600 × 8 × 30 × 200 × 1 = 864,000,000")

    def test_defaults(self):
        short = {k: v for k, v in ESTIMATE_INPUTS.items() if k not in ("rls_visible_share", "hours_per_day", "days")}
        i = EstimateInputs.model_validate(short)
        assert (i.rls_visible_share, i.hours_per_day, i.days) == (1.0, 24, 30)

    def test_a_small_application_fits_free(self):
        e = estimate(inputs(concurrent_clients=50, messages_per_client_per_minute=0.1, fanout=5, db_listeners=0))
        assert e.cheapest_plan == "free"
        assert e.plans[0].monthly_usd == 0

    def test_the_capped_pro_wins_a_tie_with_pro(self):
        e = estimate(inputs(concurrent_clients=300, messages_per_client_per_minute=0.1, fanout=1, db_listeners=0))
        by_plan = {p.plan: p for p in e.plans}
        assert by_plan["pro_capped"].monthly_usd == by_plan["pro"].monthly_usd == 25
        assert not by_plan["free"].fits
        assert e.cheapest_plan == "pro_capped"

    def test_past_a_hard_quota_the_plan_does_not_fit(self):
        # 100 clients within Free's rates, but 100 × 1/min × 60 × 24 × 30 × 2 = 8.64M messages > 2M.
        e = estimate(
            inputs(concurrent_clients=100, messages_per_client_per_minute=1, fanout=1, db_listeners=0, hours_per_day=24)
        )
        free = e.plans[0]
        assert free.restricted and not free.fits
        assert "messages 8,640,000 exceed the hard quota 2,000,000 of Free: restricted, not billed" in free.warnings
        assert e.cheapest_plan == "pro"

    def test_nothing_fits_past_every_rate_limit(self):
        e = estimate(inputs(concurrent_clients=20_000))
        assert e.cheapest_plan is None
        assert not any(p.fits for p in e.plans)
        assert any("no plan fits" in w for w in e.warnings)

    @pytest.mark.parametrize(
        ("changes", "listeners", "share", "ceiling"),
        [
            (5, 600, 1.0, None),
            (5, 601, 1.0, "3–4k/s with RLS,"),
            (100, 600, 0.2, "3–4k/s with RLS,"),
            (31, 1000, 1.0, "30–50k/s without RLS"),
        ],
    )
    def test_hosted_postgres_changes_ceilings(self, changes, listeners, share, ceiling):
        e = estimate(inputs(db_changes_per_second=changes, db_listeners=listeners, rls_visible_share=share))
        ceilings = [w for w in e.warnings if "ceiling" in w]
        if ceiling is None:
            assert ceilings == []
        else:
            assert len(ceilings) == 1 and ceiling in ceilings[0]
            assert ceilings[0].startswith(f"{changes * listeners * share:,.0f} delivered changes per second")

    def test_presence(self):
        # 100 clients × 600 updates/h × 24 h × 30 × (1 + 4): 5 per 30 s per client is the limit.
        e = estimate(
            inputs(
                concurrent_clients=100,
                presence_updates_per_client_per_hour=600,
                presence_members_per_channel=4,
                hours_per_day=24,
            )
        )
        assert e.messages_per_month["presence"] == 100 * 600 * 24 * 30 * 5
        assert e.rates["presence_events_per_second"] == round(100 * 600 / 3600 * 5, 3)
        assert e.rates["client_presence_calls_per_30s"] == 5
        assert not any("presence calls" in w for p in e.plans for w in p.warnings)
        e = estimate(
            inputs(concurrent_clients=100, presence_updates_per_client_per_hour=601, presence_members_per_channel=4)
        )
        assert all(any("presence calls per client per 30 s" in w for w in p.warnings) for p in e.plans)

    def test_channels_per_client(self):
        assert all(
            any("max_channels_per_client 100" in w for w in p.warnings)
            for p in estimate(inputs(channels_per_client=101)).plans
        )

    def test_fractional_inputs_are_exact(self):
        # 0.1 changes/s as written, not the float 0.1000000000000000055…: exactly 259,200 a month
        # for one listener (the float would round up to 259,201).
        e = estimate(inputs(db_changes_per_second=0.1, db_listeners=1, concurrent_clients=0, hours_per_day=24))
        assert e.messages_per_month["postgres_changes"] == Fraction("0.1") * 3600 * 24 * 30 == 259_200
        assert Fraction(0.1) * 3600 * 24 * 30 > 259_200
        assert e.assumptions[2].endswith("= 0.1 × 3,600 × 24 × 30 × 1 × 1 = 259,200")
        # a third of a message a month, rounded up to one
        e = estimate(
            inputs(db_changes_per_second=0.0000001, db_listeners=1, concurrent_clients=0, hours_per_day=1, days=1)
        )
        assert e.messages_per_month["postgres_changes"] == 1

    @pytest.mark.parametrize(
        ("field", "value"),
        [
            ("concurrent_clients", 10**12),
            ("concurrent_clients", -1),
            ("concurrent_clients", 1.5),
            ("fanout", float("inf")),
            ("rls_visible_share", 1.01),
            ("hours_per_day", 0),
            ("hours_per_day", 25),
            ("days", 32),
            ("db_listeners", "200"),
            ("surprise", 1),
        ],
    )
    def test_bounds_name_the_field(self, field, value):
        with pytest.raises(ValidationError) as info:
            inputs(**{field: value})
        assert [e["loc"] for e in info.value.errors()] == [(field,)]

    def test_the_largest_inputs_stay_exact_and_fast(self):
        biggest = _upper_bounds()
        assert set(biggest) == set(EstimateInputs.model_fields) - {"vsn"}
        with pytest.raises(PricingOutOfRange) as refused:  # egress too: too large to price to the cent
            estimate(EstimateInputs.model_validate(biggest))
        assert refused.value.field == "payload_bytes"
        biggest["payload_bytes"] = None
        started = time.perf_counter()
        e = estimate(EstimateInputs.model_validate(biggest))
        assert time.perf_counter() - started < 1
        answer = e.model_dump(mode="json")
        for plan, exact in zip(answer["plans"], e.plans, strict=True):
            assert Decimal(repr(plan["monthly_usd"])) == exact.monthly_usd  # the JSON number is exact
            assert exact.monthly_usd < 2**51 and exact.monthly_usd % Decimal("0.5") == 0  # as _usd relies on
        assert e.messages_per_month["broadcast"] == 10**6 * 6_000 * 60 * 24 * 31 * (1 + 10**6)


def _upper_bounds() -> dict[str, float | int]:
    """Each numeric estimator input at its upper bound."""
    bounds: dict[str, float | int] = {}
    for name, info in EstimateInputs.model_fields.items():
        uppers = [m.le for m in info.metadata if getattr(m, "le", None) is not None]
        if uppers:
            bounds[name] = uppers[0]
    return bounds


# -- Properties --------------------------------------------------------------------------

quantities = st.one_of(st.integers(0, 20_000_000), st.integers(0, 10**18))
peaks = st.one_of(st.integers(0, 20_000), st.integers(0, 10**12))
prices = st.decimals(0, 10_000, places=4).map(float)
custom_plans = st.builds(
    lambda fee, msg, conn, included: effective_plan(
        "enterprise",
        {
            "base_fee_usd": fee,
            "message_package_usd": msg,
            "connection_package_usd": conn,
            "included_messages": included,
        },
    ),
    prices,
    prices,
    prices,
    st.integers(0, 10**9),
)
plans = st.one_of(st.sampled_from(list(PLANS.values())), custom_plans)


egress = st.one_of(st.none(), st.integers(0, 300 * 10**9), st.integers(0, 10**18))


def priced(plan: Plan, messages: int, peak: int, egress_bytes: int | None) -> Bill | None:
    """The bill, or None where bill() refuses it: only when an amount's JSON number could not read
    back to the cent, on custom prices far past any real bill (the built-in plans are always priced)."""
    try:
        return bill(plan, messages, peak, egress_bytes)
    except PricingOutOfRange as refused:
        assert plan not in PLANS.values()
        assert "to the cent" in str(refused) and refused.field in ("messages", "peak_connections", "egress")
        return None


@settings(max_examples=300, deadline=None)
@given(plans, quantities, peaks, egress, st.integers(0, 10**7), st.integers(0, 10**4), st.integers(0, 10**12))
def test_a_bill_grows_with_each_quantity(plan, messages, peak, egress_bytes, more_messages, more_peak, more_egress):
    b = priced(plan, messages, peak, egress_bytes)
    more_egress_bytes = None if egress_bytes is None else egress_bytes + more_egress
    bigger_bills = (
        priced(plan, messages + more_messages, peak, egress_bytes),
        priced(plan, messages, peak + more_peak, egress_bytes),
        priced(plan, messages, peak, more_egress_bytes),
    )
    for bigger in bigger_bills if b is not None else ():
        if bigger is None:
            continue
        assert bigger.total_usd >= b.total_usd
        assert bigger.restricted >= b.restricted
        for x, y in zip(bigger.lines, b.lines, strict=True):
            assert x.usd >= y.usd and x.overage >= y.overage
            assert x.packages is None or x.packages >= y.packages


@settings(max_examples=300, deadline=None)
@given(plans, quantities, peaks, egress)
def test_a_bill_is_the_sum_of_its_lines(plan, messages, peak, egress_bytes):
    b = priced(plan, messages, peak, egress_bytes)
    if b is None:
        return
    assert b.total_usd == sum(x.usd for x in b.lines)
    shown = b.model_dump(mode="json")
    assert shown["total_usd"] == float(b.total_usd.quantize(Decimal("0.01"), rounding="ROUND_HALF_UP"))
    assert Decimal(repr(shown["total_usd"])) == b.total_usd.quantize(Decimal("0.01"), rounding="ROUND_HALF_UP")
    assert b.monthly_usd == b.base_fee_usd + b.total_usd
    assert [x.item for x in b.lines] == ["messages", "peak_connections"] + ([] if egress_bytes is None else ["egress"])
    for x in b.lines:
        assert x.overage == max(x.used - x.included, 0)
        if x.item == "egress":  # prorated by the byte, rounded to the cent; nothing on a hard quota
            exact = Decimal(x.overage) * Decimal(str(plan.egress_usd_per_gb)) / 10**9
            expected = 0 if plan.hard_quota else exact.quantize(Decimal("0.01"), rounding="ROUND_HALF_UP")
            assert x.packages is None and x.usd == expected
            continue
        assert x.usd == x.packages * x.package_usd
        if not plan.hard_quota:  # the fewest whole packages covering the overage
            assert (x.packages - 1) * x.package_size < x.overage <= x.packages * x.package_size or x.overage == 0


BOUNDS = _upper_bounds()
INTEGER_FIELDS = {
    name for name, info in EstimateInputs.model_fields.items() if info.annotation in (int, "int", int | None)
}
LOWER = {"hours_per_day": 0.01, "days": 1, "payload_bytes": 1}


# The scale where plans part (near their rate limits and quotas), where most examples are drawn.
USUAL = {
    "concurrent_clients": 1_200,
    "channels_per_client": 110,
    "messages_per_client_per_minute": 2,
    "fanout": 20,
    "presence_updates_per_client_per_hour": 700,
    "presence_members_per_channel": 20,
    "db_changes_per_second": 5,
    "db_listeners": 600,
    "payload_bytes": 2_000,
}


def _value(name: str, low: float | int = 0) -> st.SearchStrategy:
    low = max(low, LOWER.get(name, 0))
    top = BOUNDS[name]
    usual = max(low, min(top, USUAL.get(name, top)))
    if name in INTEGER_FIELDS:
        near, anywhere = st.integers(low, usual), st.integers(low, top)
    else:
        near, anywhere = st.floats(low, usual, allow_nan=False), st.floats(low, top, allow_nan=False)
    return st.one_of(st.just(low), near, near, near, anywhere)


estimate_inputs = st.fixed_dictionaries(
    {
        **{name: _value(name) for name in BOUNDS},
        "payload_bytes": st.one_of(st.none(), _value("payload_bytes")),
        "vsn": st.sampled_from(["1.0.0", "2.0.0"]),
    }
).map(EstimateInputs.model_validate)


def _estimate_or_refusal(inputs: EstimateInputs):
    """The estimate, or None when it is refused as too large to price exactly (only ever for
    its egress, so only with payload_bytes)."""
    try:
        return estimate(inputs)
    except PricingOutOfRange as refused:
        assert refused.field == "payload_bytes" and inputs.payload_bytes is not None
        return None


@settings(max_examples=200, deadline=None)
@given(estimate_inputs, st.sampled_from(sorted(BOUNDS)), st.data())
def test_the_estimate_grows_with_each_input(base, field, data):
    more = data.draw(_value(field, getattr(base, field) or 1))
    low, high = _estimate_or_refusal(base), _estimate_or_refusal(base.model_copy(update={field: more}))
    if low is None:  # refusing is monotone too: more of an input is refused as well
        assert high is None
        return
    if high is None:
        return
    if low.egress_bytes_per_month is not None:
        for vsn, kinds in low.egress_bytes_per_month.items():
            for kind, size in kinds.items():
                assert high.egress_bytes_per_month[vsn][kind] >= size, (vsn, kind)
    for kind, count in low.messages_per_month.items():
        assert high.messages_per_month[kind] >= count, kind
    assert high.peak_connections >= low.peak_connections
    for a, b in zip(low.plans, high.plans, strict=True):
        assert b.monthly_usd >= a.monthly_usd, a.plan
        assert b.fits <= a.fits, a.plan  # more load never makes a plan fit
    if high.cheapest_plan is not None:
        assert low.cheapest_plan is not None
        cheapest = {p.plan: p.monthly_usd for p in low.plans}[low.cheapest_plan]
        assert {p.plan: p.monthly_usd for p in high.plans}[high.cheapest_plan] >= cheapest


@settings(max_examples=200, deadline=None)
@given(estimate_inputs)
def test_the_cheapest_plan_is_the_cheapest_that_fits(i):
    e = _estimate_or_refusal(i)
    if e is None:
        return
    for plan in e.model_dump(mode="json")["plans"]:  # every amount exact as a JSON number
        exact = next(p for p in e.plans if p.plan == plan["plan"]).monthly_usd
        assert Decimal(repr(plan["monthly_usd"])) == exact.quantize(Decimal("0.01"), rounding="ROUND_HALF_UP")
    fitting = [p for p in e.plans if p.fits]
    if not fitting:
        assert e.cheapest_plan is None
        return
    chosen = next(p for p in e.plans if p.plan == e.cheapest_plan)
    assert chosen.fits
    assert all(chosen.monthly_usd <= p.monthly_usd for p in fitting)
    # and the first in RANK among equals
    assert chosen is next(p for p in fitting if p.monthly_usd == chosen.monthly_usd)
    for p in e.plans:
        assert p.monthly_usd == p.base_fee_usd + p.total_usd
        assert p.fits == (not p.warnings)
    assert e.messages_per_month["all"] == sum(v for k, v in e.messages_per_month.items() if k != "all")
