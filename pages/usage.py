"""Usage & pricing: the cycle's metered usage, quota gauges, the bill so far and projected, the
organisation's bill, a plan comparison, and the what-if estimator with cost charts."""

from __future__ import annotations

import pandas as pd
import plotly.express as px
import streamlit as st

from console import ui

admin, tenant = ui.client(), ui.tenant()
st.title("Usage & pricing")

bill = ui.get(admin.bill, tenant)
usage = ui.get(admin.usage, tenant)
if bill is None or usage is None:
    st.stop()

st.caption(
    f"Plan **{bill.plan}** · billing cycle {bill.extra['cycle']['start']} → {bill.extra['cycle']['end']} · "
    "messages are counted the hosted way (1 sent + 1 per receiving client)."
)


left, right = st.columns(2)
left.plotly_chart(ui.gauge("Messages this cycle", bill.quota["messages"]), key="gauge-messages")
right.plotly_chart(ui.gauge("Peak connections this cycle", bill.quota["peak_connections"]), key="gauge-peak")

cols = st.columns(4)
cols[0].metric("Messages so far", f"{bill.quota['messages']['used']:,}")
cols[1].metric("Peak connections", f"{bill.quota['peak_connections']['used']:,}")
cols[2].metric("Bill so far", ui.usd(bill.so_far["monthly_usd"]), help="base fee + overage")
cols[3].metric("Projected bill", ui.usd(bill.projected["monthly_usd"]), help="at the rate of the recent window")
window = bill.window
st.caption(
    f"Projection from {window['messages']:,} messages over the last {window['seconds']:.0f} s "
    f"({window['from']} → {window['to']})."
)
lines = bill.to_frame()
st.dataframe(lines, hide_index=True)
ui.download(lines, "bill")

st.subheader("Messages and peak connections per day")
days = usage.to_frame()
if days.empty or not usage.total["messages"]["all"]:
    ui.empty(
        "Nothing metered this cycle yet. Every broadcast, presence event and Postgres change delivered "
        "will show here, by kind and by day. Send one:",
        'curl -X POST "$REALTIME_SERVER_URL/api/broadcast" -H "apikey: $ANON_KEY" -H "content-type: application/json" '
        '-d \'{"messages": [{"topic": "room:1", "event": "hello", "payload": {}}]}\'',
    )
if not days.empty:
    kinds = [c for c in days.columns if c.startswith("messages.") and c != "messages.all"]
    by_kind = days.melt(id_vars="date", value_vars=kinds, var_name="kind", value_name="messages")
    by_kind["kind"] = by_kind["kind"].str.removeprefix("messages.")
    st.plotly_chart(px.bar(by_kind, x="date", y="messages", color="kind", title="Messages by kind"), key="days")
    st.plotly_chart(px.line(days, x="date", y="peak_connections", markers=True, title="Peak connections"), key="peak")
    st.dataframe(days, hide_index=True)
    ui.download(days, "usage-by-day")
    hourly = ui.get(admin.usage, tenant, from_=str(days["date"].iloc[-1]), granularity="hour")
    if hourly is not None and not (hours := hourly.to_frame()).empty:
        st.plotly_chart(
            px.bar(hours, x="hour", y="peak_connections", title="Peak connections per hour (today)"), key="hours"
        )
        ui.download(hours, "usage-by-hour")

st.subheader("Egress and what drives the bill")
st.caption(
    "Every byte written to clients, WebSocket framing included, by the kind of message that caused it. "
    "Upstream bills Realtime's egress with the organisation's other services: this is the Realtime share."
)
egress_quota = bill.quota.get("egress")
if egress_quota is not None:
    left, right = st.columns([1, 2])
    left.plotly_chart(ui.gauge("Egress this cycle (bytes)", egress_quota), key="gauge-egress")
    if not days.empty:
        egress_kinds = [c for c in days.columns if c.startswith("egress_bytes.") and c != "egress_bytes.all"]
        if egress_kinds:
            egress = days.melt(id_vars="date", value_vars=egress_kinds, var_name="kind", value_name="bytes")
            egress["kind"] = egress["kind"].str.removeprefix("egress_bytes.")
            right.plotly_chart(
                px.bar(egress, x="date", y="bytes", color="kind", title="Egress by kind"), key="egress-days"
            )
attribution = ui.get(admin.attribution, tenant, period="cycle")
if attribution is not None:
    topics = attribution.to_frame()
    if topics.empty:
        st.info("No channel has cost anything this cycle yet.")
    else:
        st.markdown(
            "**Top channels by cost** (messages × $2.50 per million + egress × the plan's price per GB, "
            "whatever the quota)" + ("" if attribution.exact else " — past 10,000 topics: estimated, see the bound")
        )
        st.dataframe(topics.head(20), hide_index=True)
        ui.download(topics, "attribution-topics")
        by_client, by_role = st.columns(2)
        by_client.markdown("**By client library**")
        by_client.dataframe(attribution.clients_frame(), hide_index=True)
        by_role.markdown("**By role**")
        by_role.dataframe(attribution.roles_frame(), hide_index=True)
advice = ui.get(admin.advice, tenant, period="cycle")
if advice is not None and advice.advice:
    st.markdown("**What would cut the bill**")
    for piece in advice.advice:
        saving = piece.get("saving")
        worth = f" — saves about {ui.usd(saving['usd'])} ({saving['egress_bytes']:,} bytes)" if saving else ""
        st.markdown(f"- `{piece['channel']}`: {piece['advice']}{worth}")

organization = bill.extra.get("organization")
if organization:
    st.subheader(f"Organisation {organization}")
    org = ui.get(admin.organization_bill, organization)
    if org is not None:
        cols = st.columns(2)
        cols[0].metric("Organisation bill so far", ui.usd(org.so_far["monthly_usd"]))
        cols[1].metric("Organisation projected", ui.usd(org.projected["monthly_usd"]))
        members = pd.DataFrame(org.tenants or [])
        st.dataframe(members, hide_index=True)
        ui.download(members, "organization")

st.subheader("What-if estimator")
st.caption("Describe an application: the estimator prices a month of it on every plan.")
DEFAULTS = {
    "concurrent_clients": 1000,
    "channels_per_client": 2,
    "messages_per_client_per_minute": 6.0,
    "fanout": 10.0,
    "presence_updates_per_client_per_hour": 0.0,
    "presence_members_per_channel": 0.0,
    "db_changes_per_second": 5.0,
    "db_listeners": 200,
    "rls_visible_share": 1.0,
    "hours_per_day": 8.0,
    "days": 30,
}
SWEEP_TOP = {"rls_visible_share": 1.0, "hours_per_day": 24.0, "days": 31}
with st.form("what-if"):
    cols = st.columns(3)
    inputs = {
        name: cols[i % 3].number_input(name.replace("_", " "), value=value, min_value=type(value)(0), key=f"in-{name}")
        for i, (name, value) in enumerate(DEFAULTS.items())
    }
    st.form_submit_button("Estimate")

estimate = ui.get(admin.pricing_estimate, **inputs)
if estimate is not None:
    cols = st.columns(3)
    cols[0].metric("Estimated messages per month", f"{estimate.messages_per_month['all']:,}")
    cols[1].metric("Estimated peak connections", f"{estimate.peak_connections:,}")
    cols[2].metric("Cheapest plan", estimate.cheapest_plan or "none fits")
    plans = estimate.to_frame()
    st.dataframe(plans[[c for c in plans.columns if not c.startswith("bill.")]], hide_index=True)
    ui.download(plans, "estimate")
    for warning in estimate.warnings:
        st.warning(warning)
    with st.expander("Assumptions"):
        for assumption in estimate.assumptions:
            st.markdown(f"- {assumption}")

    swept = st.selectbox("Cost against", list(DEFAULTS), index=0, key="sweep")
    current = inputs[swept]
    # From 0 (1 where 0 means nothing) to twice the input, or across the input's whole range.
    top = SWEEP_TOP.get(swept) or (current * 2 if current else 10)
    low = 1 if swept in ("hours_per_day", "days") else 0
    points = sorted({type(current)(max(low, top * i / 8)) for i in range(9)})
    rows = []
    for value in points:
        answer = ui.get(admin.pricing_estimate, **{**inputs, swept: value})
        if answer is None:
            break
        rows += [{swept: value, "plan": p["plan"], "monthly_usd": p["monthly_usd"]} for p in answer.plans]
    if rows:
        curve = pd.DataFrame(rows)
        st.plotly_chart(
            px.line(curve, x=swept, y="monthly_usd", color="plan", markers=True, title=f"Monthly cost vs {swept}"),
            key="sweep-chart",
        )
        ui.download(curve, f"cost-vs-{swept}")

    st.subheader("This cycle on every plan")
    used = {line["item"]: line["used"] for line in bill.projected["lines"]}
    rows = []
    for plan in [p["plan"] for p in estimate.plans if not p.get("custom")]:
        priced = ui.get(admin.pricing_bill, plan, used.get("messages", 0), used.get("peak_connections", 0))
        if priced is not None:
            rows.append({"plan": plan, **{k: priced.extra.get(k) for k in ("monthly_usd",)}, **priced.to_dict()})
    if rows:
        comparison = pd.DataFrame(rows)[["plan", "monthly_usd", "base_fee_usd", "total_usd", "restricted"]]
        st.caption("The projected cycle's quantities priced on each plan.")
        st.dataframe(comparison, hide_index=True)
        ui.download(comparison, "plan-comparison")
