"""Presence: who is present on each channel (on any node), with their metas, and joins and leaves
over time summed over the nodes."""

from __future__ import annotations

import plotly.express as px
import streamlit as st

from console import ui

admin, tenant = ui.client(), ui.tenant()
st.title("Presence")


@st.fragment(run_every=3)
def members() -> None:
    channels = ui.get(admin.cluster_channels, tenant, sort="-presence", limit=200)
    if channels is None:
        return
    present = [c for c in channels if c.presence]
    if not present:
        ui.empty(
            "Nobody is present on any channel. Members tracked with presence appear here per channel, "
            "with their metas:",
            "const room = supabase.channel('room:1', { config: { presence: { key: 'alice' } } })\n"
            "room.subscribe(async (status) => {\n"
            "  if (status === 'SUBSCRIBED') await room.track({ online_at: new Date().toISOString() })\n"
            "})",
            language="javascript",
        )
        return
    st.metric("Channels with presence", len(present))
    for channel in present:
        state = ui.get(admin.presence, tenant, channel.topic, private=channel.private)
        if state is None:
            continue
        label = f"{channel.topic}{' (private)' if channel.private else ''} — {len(state.data)} keys"
        with st.expander(label, expanded=True):
            st.dataframe(state.to_frame(), hide_index=True, key=f"presence-{channel.private}-{channel.topic}")


@st.fragment(run_every=10)
def history() -> None:
    series = ui.get(admin.cluster_timeseries, tenant, ["presence.joins", "presence.leaves"], window="1h")
    if series is not None:
        frame = series.to_frame()
        st.plotly_chart(px.line(frame, y=list(frame.columns), title="Presence joins and leaves per minute"))


members()
history()
