"""Overview: is the server up, and its live counters."""

from __future__ import annotations

import streamlit as st

client = st.session_state.client

st.title("realtime-core")
st.caption(f"Server: {client.base_url}")


@st.fragment(run_every=2)
def live() -> None:
    if not client.healthy():
        st.error(f"The server at {client.base_url} does not answer /healthcheck.")
        return
    metrics = client.metrics()
    values = dict(zip(metrics["metric"], metrics["value"], strict=False))
    cols = st.columns(4)
    cols[0].metric("Connections", int(values.get("realtime_connections_connected", 0)))
    cols[1].metric("Joined channels", int(values.get("realtime_channels_joined", 0)))
    cols[2].metric("Active topics", int(values.get("realtime_streams", 0)))
    cols[3].metric("Slow consumers dropped", int(values.get("realtime_slow_consumers_total", 0)))
    st.subheader("All metrics")
    st.dataframe(metrics, hide_index=True, width="stretch")


live()
