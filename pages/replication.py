"""Replication: every slot's health, commit → dispatch latency, rows dispatched and skipped,
the supabase_realtime publication's tables with their subscribers (add and remove), and
realtime.messages."""

from __future__ import annotations

import plotly.express as px
import streamlit as st

from console import ui

admin, tenant = ui.client(), ui.tenant()
st.title("Replication")


@st.fragment(run_every=5)
def slots() -> None:
    replication = ui.get(admin.replication, tenant)
    if replication is None:
        return
    if not replication.slots:
        ui.empty(
            "No replication slot yet. A slot opens when a client listens to Postgres Changes (or a database "
            "broadcast is used); its lag, retained WAL and status then show here. Listen to a table:",
            "supabase.channel('db').on('postgres_changes', { event: '*', schema: 'public', table: 'todos' },"
            " console.log).subscribe()",
            language="javascript",
        )
    for slot in replication.slots:
        with st.container(border=True):
            st.markdown(f"**{slot['name']}** · {slot['kind']} · {'active' if slot['active'] else 'inactive'}")
            cols = st.columns(5)
            cols[0].metric("Lag", f"{slot.get('lag_bytes') or 0:,} B")
            cols[1].metric("Lag time", f"{slot.get('lag_ms') or 0:,.0f} ms")
            cols[2].metric("Retained WAL", f"{slot.get('retained_wal_bytes') or 0:,} B")
            cols[3].metric("wal_status", slot.get("wal_status") or "—")
            latency = slot.get("commit_to_dispatch_ms") or {}
            cols[4].metric("commit → dispatch p99", "—" if latency.get("p99") is None else f"{latency['p99']:.0f} ms")
            keep, safe = slot.get("max_slot_wal_keep_size"), slot.get("safe_wal_size")
            if keep and keep > 0 and safe is not None and safe < keep / 2:
                st.warning(
                    f"Retained WAL is above 50 % of max_slot_wal_keep_size ({keep:,} B; safe_wal_size {safe:,} B): "
                    "upstream restarts replication here (ReplicationSlotLagTooHigh)."
                )
            rows = slot.get("rows") or {}
            skipped = rows.get("skipped") or {}
            st.caption(
                f"rows seen {rows.get('seen', 0):,} · dispatched {rows.get('dispatched', 0):,} · skipped "
                + (", ".join(f"{reason} {n:,}" for reason, n in skipped.items()) or "0")
            )
    messages = replication.messages
    st.caption(
        f"realtime.messages: {messages.get('rows', 0):,} rows, {messages.get('bytes', 0):,} bytes, "
        f"{messages.get('partitions', 0)} partitions, oldest {messages.get('oldest') or '—'}"
    )
    history = ui.get(admin.cluster_timeseries, tenant, ["commit_to_dispatch_ms", "replication_lag_ms"], window="1h")
    if history is not None:
        frame = history.to_frame()
        st.plotly_chart(px.line(frame, y=list(frame.columns), title="Commit → dispatch and lag (ms)"))


slots()

st.subheader("Publication supabase_realtime")
locked = ui.write_disabled()
with st.form("publication"):
    cols = st.columns([1, 2, 1])
    schema = cols[0].text_input("Schema", value="public", disabled=locked)
    table = cols[1].text_input("Table", disabled=locked, key="publication-table")
    action = cols[2].radio("Action", ["add", "remove"], horizontal=True, disabled=locked, key="publication-action")
    if st.form_submit_button("Apply", disabled=locked):
        call = admin.add_publication_table if action == "add" else admin.remove_publication_table
        if not table:
            st.warning("Name a table.")
        elif ui.act(call, tenant, table, schema):
            st.success(f"{'Added' if action == 'add' else 'Removed'} {schema}.{table}")
replication = ui.get(admin.replication, tenant)
if replication is not None:
    tables = replication.tables_frame()
    if tables.empty:
        ui.empty(
            "The publication has no tables: add one above (or in SQL) for Postgres Changes to see its rows.",
            "alter publication supabase_realtime add table public.todos;",
            language="sql",
        )
    else:
        st.caption("The publication's tables, with the number of Postgres Changes subscribers on each.")
        st.dataframe(tables, hide_index=True, key="publication-tables")
        ui.download(tables, "publication")
