"""Channels: the tenant's active streams over every node, searchable and sortable; one stream's
subscribers (with the node each is on), presence and rates; disconnecting a connection or
shutting a stream down, once confirmed (the server reaches the nodes concerned)."""

from __future__ import annotations

import streamlit as st

from console import ui

admin, tenant = ui.client(), ui.tenant()
st.title("Channels")

COLUMNS = ["topic", "private", "subscribers", "presence", "messages_rate", "deliveries_rate", "fan_out"]
COLUMNS += ["messages_total", "deliveries_total", "nodes"]

cols = st.columns([3, 2, 1])
search = cols[0].text_input("Search topics", key="channel-search")
sort = cols[1].selectbox("Sort by", ["-subscribers", "-deliveries_rate", "-fan_out", "topic"], key="channel-sort")
only = cols[2].selectbox("Streams", ["all", "public", "private"], key="channel-private")


def offer(choices: list[tuple[str, bool]]) -> None:
    """Keep the channel picker below the table in step with it: a refresh of the table alone that
    finds channels appearing or gone reruns the whole page, which draws the picker anew."""
    changed = choices != st.session_state.get("channel_choices")
    st.session_state.channel_choices = choices
    if changed and not st.session_state.get("channels_page_running"):
        st.rerun()


@st.fragment(run_every=3)
def table() -> None:
    private = None if only == "all" else only == "private"
    channels = ui.get(admin.cluster_channels, tenant, sort=sort, private=private, limit=500)
    if channels is None:
        return
    frame = channels.to_frame()
    if frame.empty:
        offer([])
        ui.empty(
            "No active channels. Each channel a client joins appears here with its subscribers, presence and "
            "message rates. Join one with the Python client:",
            "from realtime import AsyncRealtimeClient\n"
            "client = AsyncRealtimeClient(URL + '/realtime/v1', ANON_KEY)\n"
            "await client.channel('room:1').subscribe()",
            language="python",
        )
        return
    # Subscribers on each node, as `node: n` (a cluster of one has a single node).
    frame["nodes"] = [", ".join(f"{node}: {n}" for node, n in sorted(c.by_node.items())) for c in channels]
    if search:
        frame = frame[frame["topic"].str.contains(search, case=False, regex=False)]
    st.dataframe(frame[[c for c in COLUMNS if c in frame]], hide_index=True, key="channels-table")
    ui.download(frame, "channels")
    offer(list(zip(frame.topic, frame.private, strict=True)))


# Set while the whole page runs, so that the table's own refreshes can tell they ran alone.
st.session_state.channels_page_running = True
table()

choices = st.session_state.get("channel_choices") or []
if choices:
    st.subheader("Channel")
    topic, private = st.selectbox(
        "Channel", choices, key="channel-picked", format_func=lambda c: f"{c[0]} (private)" if c[1] else c[0]
    )
    channel = ui.get(admin.cluster_channel, tenant, topic, private=private)
    if channel is not None:
        cols = st.columns(4)
        cols[0].metric("Subscribers", channel.subscribers)
        cols[1].metric("Presence keys", channel.presence)
        cols[2].metric("Messages/s in", f"{channel.extra['messages_rate']:g}")
        cols[3].metric("Deliveries/s out", f"{channel.extra['deliveries_rate']:g}")
        st.caption("Per second over the last minute, by kind")
        st.dataframe(
            {"in": channel.extra["messages_per_second"], "out": channel.extra["deliveries_per_second"]},
            key="channel-rates",
        )
        subscribers = channel.subscribers_frame()
        if "node" in subscribers:
            subscribers = subscribers[["node", *(c for c in subscribers.columns if c != "node")]]
        st.markdown("**Subscribers**")
        st.dataframe(subscribers, hide_index=True, key="channel-subscribers")
        presence = ui.get(admin.presence, tenant, topic, private=private)
        if presence is not None and presence.data:
            st.markdown("**Presence**")
            st.dataframe(presence.to_frame(), hide_index=True, key="channel-presence")

        st.markdown("**Operator actions**")
        locked = ui.write_disabled()
        on = dict(zip(subscribers.get("connection", []), subscribers.get("node", []), strict=True))
        ids = [c for c in on if c]
        with st.form("disconnect"):
            conn = st.selectbox(
                "Connection", ids, disabled=locked or not ids, format_func=lambda c: f"{c} (node {on[c]})"
            )
            sure = st.checkbox("I understand the client is disconnected (it may reconnect)", disabled=locked)
            if st.form_submit_button("Disconnect", disabled=locked or not ids) and conn:
                if not sure:
                    st.warning("Tick the confirmation first.")
                elif (done := ui.get(admin.disconnect, tenant, conn)) is not None:
                    st.success(
                        f"Disconnected {done.id}: close code {done.close_code}, {done.message!r}"
                        f" (node {done.extra.get('node')})"
                    )
        with st.form("shutdown"):
            sure = st.checkbox(f"Shut {topic} down for all {channel.subscribers} subscribers", disabled=locked)
            if st.form_submit_button("Shut the channel down", disabled=locked):
                if not sure:
                    st.warning("Tick the confirmation first.")
                elif (done := ui.get(admin.shutdown_channel, tenant, topic, private=private)) is not None:
                    st.success(f"Shut down: {done['closed']} subscribers were sent {done['message']!r}")

st.session_state.channels_page_running = False
