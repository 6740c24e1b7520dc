"""Overview, every node of a cluster summed: connections against the plan, the cycle against its
quota, live rates by kind, errors by code, replication and event-loop lag, quota gauges, and the
last 10 minutes or hour in charts."""

from __future__ import annotations

import plotly.express as px
import streamlit as st

from console import ui

admin, tenant = ui.client(), ui.tenant()
st.title("Overview")
st.caption(f"Server {admin.base_url} · tenant **{tenant}**")

KINDS = ("broadcast", "presence", "postgres_changes", "db_broadcast", "rest")


def last(series: dict[str, list[float]], name: str) -> float:
    values = series.get(name) or [0.0]
    return values[-1]


@st.fragment(run_every=2)
def live() -> None:
    node = ui.get(admin.node)
    view = ui.get(admin.tenant, tenant)
    cluster = ui.get(admin.cluster)
    bill = ui.get(admin.bill, tenant)
    now = ui.get(admin.cluster_timeseries, tenant, window="1m")
    if node is None or view is None or cluster is None or bill is None or now is None:
        return
    # The whole cluster's connections (a single process: its own); the tenant is listed once it has had one.
    connections = cluster.tenants.get(tenant, {}).get("connections", 0)
    quota = bill.quota
    cols = st.columns(4)
    cols[0].metric(
        "Connections now",
        f"{connections:,}",
        help="open WebSocket connections of the tenant, on every node",
    )
    cols[0].caption(f"limit {view.limits['effective']['max_concurrent_users']:,} users (plan {view.plan['name']})")
    cols[1].metric("Peak connections this cycle", f"{quota['peak_connections']['used']:,}")
    cols[1].caption(f"quota {quota['peak_connections']['included']:,} ({quota['peak_connections']['percent']} %)")
    cols[2].metric("Messages this cycle", f"{quota['messages']['used']:,}")
    cols[2].caption(f"quota {quota['messages']['included']:,} ({quota['messages']['percent']} %)")
    lag = node.event_loop_lag_ms
    cols[3].metric(
        "Event-loop lag p99",
        "—" if lag.get("p99") is None else f"{lag['p99']:.1f} ms",
        help="of the process that answered (every node: the Nodes page)",
    )
    nodes = f"{cluster.nodes} nodes" if cluster.name is not None else "a single process"
    cols[3].caption(f"pid {node.pid} of {nodes} · uptime {node.uptime_ms / 1000:,.0f} s · v{node.version}")
    left, right = st.columns(2)
    left.plotly_chart(ui.gauge("Messages this cycle", quota["messages"]), key="o-gauge-messages")
    right.plotly_chart(ui.gauge("Peak connections this cycle", quota["peak_connections"]), key="o-gauge-peak")
    for name, item in quota.items():
        percent = item["percent"] or 0
        if percent >= 100:
            st.error(f"{name.replace('_', ' ')}: {percent} % of the cycle's quota used", icon=":material/error:")
        elif percent >= 80:
            st.warning(f"{name.replace('_', ' ')}: {percent} % of the cycle's quota used", icon=":material/warning:")

    series = now.series
    rates = st.columns(len(KINDS) + 2)
    for col, kind in zip(rates, KINDS, strict=False):
        col.metric(f"{kind} msg/s", f"{last(series, f'messages.{kind}'):g}")
    rates[-2].metric("joins/s", f"{last(series, 'joins'):g}")
    rates[-1].metric("replication lag", f"{last(series, 'replication_lag_ms'):g} ms")
    errors = {name.removeprefix("errors."): last(series, name) for name in series if name.startswith("errors.")}
    if any(errors.values()):
        st.caption("errors/s by code: " + ", ".join(f"{code} {rate:g}" for code, rate in errors.items() if rate))


WINDOWS = {"10m": "last 10 minutes, per second", "1h": "last hour, per minute"}


@st.fragment(run_every=5)
def history(window: str) -> None:
    series = ui.get(admin.cluster_timeseries, tenant, window=window)
    if series is None:
        return
    frame = series.to_frame()
    step = "s" if series.step_seconds == 1 else "min"
    if frame.empty or not frame.to_numpy().any():
        ui.empty(
            f"No traffic in the {WINDOWS[window].split(',')[0]}. Connections, messages by kind, joins, errors and "
            "replication lag are drawn here once clients connect, e.g. with supabase-js:",
            "const channel = supabase.channel('room:1')\n"
            "channel.on('broadcast', { event: 'hello' }, console.log).subscribe()\n"
            "channel.send({ type: 'broadcast', event: 'hello', payload: {} })",
            language="javascript",
        )
        return
    messages = [f"messages.{k}" for k in KINDS if f"messages.{k}" in frame]
    left, right = st.columns(2)
    left.plotly_chart(px.line(frame, y=["connections"], title="Connections"), key="h-connections")
    by_kind = frame[messages].rename(columns=lambda name: name.removeprefix("messages."))
    chart = px.area(by_kind, title=f"Messages by kind (per {step})").update_layout(legend_title_text="kind")
    right.plotly_chart(chart, key="h-messages")
    errors = [c for c in frame.columns if c.startswith("errors.")]
    left, right = st.columns(2)
    left.plotly_chart(px.line(frame, y=["joins", *errors], title=f"Joins and errors (per {step})"), key="h-errors")
    lag = [c for c in ("replication_lag_ms", "commit_to_dispatch_ms") if c in frame]
    right.plotly_chart(px.line(frame, y=lag, title="Replication lag (ms)"), key="h-lag")


live()
st.subheader("History")
history(st.radio("Window", list(WINDOWS), format_func=WINDOWS.get, horizontal=True, key="overview-window"))
