"""Nodes: every server process of the cluster, alive or dead (address, pid, uptime, connections,
channels, pub/sub lag), and the tenant's connections and recent errors with the node each is on.
A single process is a cluster of one."""

from __future__ import annotations

import pandas as pd
import plotly.express as px
import streamlit as st

from console import ui

admin, tenant = ui.client(), ui.tenant()
st.title("Nodes")

SCALE_OUT = "realtime-core serve --workers 2 --redis redis://127.0.0.1:6379/0"
NODE_COLUMNS = ["id", "alive", "address", "pid", "uptime", "connections", "channels", "version", "last_seen"]


def uptime(started: str, until: str) -> str:
    seconds = int((pd.Timestamp(until) - pd.Timestamp(started)).total_seconds())
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h {rest // 60:02d}m" if hours else f"{rest // 60}m {rest % 60:02d}s"


@st.fragment(run_every=3)
def cluster() -> None:
    nodes = ui.get(admin.nodes)
    view = ui.get(admin.cluster)
    if nodes is None or view is None:
        return
    live = [n for n in nodes if n.alive]
    cols = st.columns(4)
    cols[0].metric("Live nodes", len(live))
    cols[1].metric("Dead nodes", len(nodes) - len(live), help="listed for 10 minutes after they died")
    cols[2].metric("Connections", f"{view.connections:,}", help="every tenant's, on the live nodes")
    cols[3].metric("Channels", f"{view.channels:,}")
    if view.name is None:
        st.info(
            "This server is a single process: a cluster of one. To scale out, run several processes that share "
            "one Redis (every node then shows here, with its pub/sub lag):",
            icon=":material/info:",
        )
        st.code(SCALE_OUT, language="bash")
    else:
        st.caption(f"Cluster **{view.name}**")
    frame = nodes.to_frame()
    frame["uptime"] = [uptime(n.started_at, n.last_seen) for n in nodes]
    shown = [c for c in NODE_COLUMNS if c in frame] + (["died_at"] if frame["died_at"].notna().any() else [])
    st.dataframe(frame[shown], hide_index=True, key="nodes-table")
    lags = [n.lag_frame().assign(node=n.id) for n in nodes if n.pubsub_lag_ms]
    if lags:
        chart = px.line(pd.concat(lags).reset_index(), x="at", y="pubsub_lag_ms", color="node")
        st.plotly_chart(chart.update_layout(title="Pub/sub lag (ms), highest per beat"), key="nodes-lag")
    elif view.name is not None:
        st.caption("No pub/sub lag measured yet: it is sampled while messages cross the nodes.")
    by_node = view.nodes_frame(tenant)
    if not by_node.empty:
        st.markdown(f"**Tenant {tenant} by node**")
        st.dataframe(by_node, hide_index=True, key="nodes-tenant")


@st.fragment(run_every=3)
def connections() -> None:
    rows = ui.get(admin.cluster_connections, tenant, sort="node", limit=1000)
    if rows is None:
        return
    frame = rows.to_frame()
    st.subheader("Connections")
    if frame.empty:
        ui.empty(
            "No open connection. Each WebSocket client appears here with the node it is connected to:",
            "const supabase = createClient(URL, ANON_KEY)\nsupabase.channel('room:1').subscribe()",
            language="javascript",
        )
        return
    columns = ["node", "id", "connected_at", "client_library", "role", "sub", "channels", "messages_in"]
    columns += ["messages_out", "bytes_out", "remote_address"]
    st.dataframe(frame[[c for c in columns if c in frame]], hide_index=True, key="nodes-connections")
    ui.download(frame, "connections")


@st.fragment(run_every=5)
def errors() -> None:
    found = ui.get(admin.cluster_errors, tenant, limit=200)
    if found is None:
        return
    st.subheader("Recent errors")
    if found.counts:
        st.caption("since each node started: " + ", ".join(f"{code} {n:,}" for code, n in found.counts.items()))
    frame = found.to_frame()
    if frame.empty:
        st.info("No error recorded on any node.", icon=":material/check_circle:")
        return
    st.dataframe(frame[["at", "node", "code", "reason", "topic", "connection"]], hide_index=True, key="nodes-errors")


cluster()
connections()
errors()
