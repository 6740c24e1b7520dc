"""Inspector: the live tail of a channel (broadcast, presence, Postgres Changes) with a filter, a
test broadcast, and a delivery trace that answers "why didn't this client get that message?"."""

from __future__ import annotations

import json

import pandas as pd
import streamlit as st

from console import ui
from console.live_tail import TailReader

admin, tenant = ui.client(), ui.tenant()
st.title("Inspector")
KINDS = ["broadcast", "presence", "postgres_changes"]
SHOWN = 100  # tail rows drawn
REASONS = {
    "self": "a broadcast with `self: false` is not sent back to its sender",
    "not_joined": "the subject's socket has no channel on that topic",
    "stream": "private/public mismatch: the channel joined the other stream",
    "pg_filter": "the Postgres Changes filter did not match the row",
    "rls": "RLS hid the row from the subject",
    "rls_error": "a policy raised while checking the row",
    "privilege": "delivered with Error 401 (no SELECT privilege)",
    "payload_too_large": "delivered with Error 413, or the broadcast was refused",
    "rate_limited": "the receiver was shut down for the tenant's message rate",
    "slow_consumer": "the receiver read too slowly and was dropped",
    "write_denied": "the sender's broadcast was refused by RLS",
    "codec": "the receiver's protocol cannot carry it (a binary broadcast to a vsn 1.0.0 client)",
}

tail_tab, send_tab, trace_tab = st.tabs(["Live tail", "Test broadcast", "Delivery trace"])

with tail_tab:
    st.caption(
        "Messages as the server delivers them on one channel, seen without joining it (not counted as usage). "
        "Only what reached at least one subscriber shows."
    )
    with st.form("tail"):
        cols = st.columns([3, 1, 3])
        topic = cols[0].text_input("Topic", value="room:1", key="tail-topic")
        private = cols[1].toggle("Private", key="tail-private")
        kinds = cols[2].multiselect("Kinds", KINDS, default=KINDS, key="tail-kinds")
        cols = st.columns(6)
        start = cols[0].form_submit_button("Listen")
        stop = cols[1].form_submit_button("Stop")
    reader: TailReader | None = st.session_state.get("tail_reader")
    if (start or stop) and reader is not None:
        reader.stop()
        st.session_state.tail_reader = reader = None
    if start and topic and kinds:
        reader = TailReader(admin.base_url, admin.token or "", tenant, topic, private=private, kinds=kinds)
        st.session_state.tail_reader = reader
        reader.wait_connected(5.0)
    search = st.text_input("Filter messages (event or payload contains)", key="tail-filter")

    @st.fragment(run_every=1)
    def tail_view() -> None:
        current: TailReader | None = st.session_state.get("tail_reader")
        if current is None:
            ui.empty(
                "Press Listen to watch a channel. Messages appear here as they are delivered; send one from the "
                "Test broadcast tab, or from a client:",
                "channel.send({ type: 'broadcast', event: 'hello', payload: { text: 'hi' } })",
                language="javascript",
            )
            return
        if current.error:
            st.error(f"The tail stopped: {current.error}")
        state = "listening" if current.running else "stopped"
        st.caption(
            f"{state} on {'private ' if current.private else ''}{current.topic}"
            f" · kinds {', '.join(current.kinds or [])} · {current.dropped} dropped"
        )
        rows = current.rows()
        if search:
            rows = [r for r in rows if search.lower() in f"{r['event']} {r['payload']}".lower()]
        if rows:
            # Newest first, as plain text (a live feed, read rather than sorted); the buffer holds more.
            st.table(pd.DataFrame(rows[::-1][:SHOWN]), hide_index=True)
        else:
            st.info("No message yet on this channel.")

    tail_view()

with send_tab:
    locked = ui.write_disabled()
    with st.form("send"):
        cols = st.columns([3, 1, 2])
        send_topic = cols[0].text_input("Topic", value="room:1", key="send-topic")
        send_private = cols[1].toggle("Private", key="send-private")
        event = cols[2].text_input("Event", value="test", key="send-event")
        payload_text = st.text_area("Payload (JSON object)", value='{"message": "hello"}', key="send-payload")
        sent = st.form_submit_button("Broadcast to all clients", disabled=locked)
    if sent:
        try:
            payload = json.loads(payload_text)
        except json.JSONDecodeError as exc:
            payload = None
            st.error(f"The payload is not valid JSON: {exc}")
        if payload is not None and not isinstance(payload, dict):
            st.error("The payload must be a JSON object.")
        elif payload is not None and not event:
            st.error("Name the event.")
        elif payload is not None:
            delivered = ui.get(admin.broadcast, tenant, send_topic, event, payload, private=send_private)
            if delivered is not None:
                st.success(f"Broadcast {event!r} on {send_topic}: delivered to {delivered} socket(s).")

with trace_tab:
    st.caption(
        "Every decision the server takes for one subject on one topic, while the trace runs. Event-name "
        "filtering happens in the client, not here."
    )
    locked = ui.write_disabled()
    with st.form("trace"):
        cols = st.columns([3, 1, 2, 1])
        trace_topic = cols[0].text_input("Topic", value="room:1", key="trace-topic")
        by = cols[1].radio("Subject", ["sub", "connection"], key="trace-by")
        who = cols[2].text_input("JWT sub or connection id", key="trace-who")
        seconds = cols[3].number_input("Seconds", min_value=1, max_value=600, value=60, key="trace-seconds")
        begin = st.form_submit_button("Start trace", disabled=locked)
    if begin:
        if not who:
            st.error("Name the subject: a JWT `sub` or a connection id (Channels page).")
        else:
            started = ui.get(admin.start_trace, tenant, trace_topic, seconds=int(seconds), **{by: who})
            if started is not None:
                st.session_state.trace_started = started
    current = st.session_state.get("trace_started")
    stop = current is not None and st.button("Stop and forget the trace", disabled=locked, key="trace-stop")
    if stop and ui.act(admin.stop_trace, tenant, current["id"]):
        st.session_state.trace_started = None

    @st.fragment(run_every=2)
    def trace_view() -> None:
        started = st.session_state.get("trace_started")
        if started is None:
            st.info("Start a trace, then make the client miss (or get) a message: each decision is listed here.")
            return
        trace = ui.get(admin.trace, tenant, started["id"])
        if trace is None:
            return
        state = "running" if trace.extra.get("active") else "finished"
        st.caption(
            f"Trace {trace.id} on {trace.topic} · {state} until {started['expires_at']} · "
            f"{trace.extra.get('decision_count', len(trace.decisions))} decisions, "
            f"{trace.extra.get('overflow', 0)} not kept"
        )
        decisions = trace.to_frame()
        if decisions.empty:
            st.info("No decision yet: nothing was sent on this topic since the trace started.")
            return
        decisions["why"] = decisions["reason"].map(REASONS).fillna("")
        st.dataframe(decisions.iloc[::-1], hide_index=True, key="trace-rows")
        ui.download(decisions, "trace")

    trace_view()
