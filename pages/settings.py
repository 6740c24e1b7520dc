"""Settings: the tenant's limits and switches, read and edited through the admin API (saving
disconnects the tenant's clients, as upstream), with the server's warnings above Studio's form
bounds; and the admin audit log."""

from __future__ import annotations

import streamlit as st

from console import ui

admin, tenant = ui.client(), ui.tenant()
st.title("Settings")

LIMITS = [
    "max_concurrent_users",
    "max_events_per_second",
    "max_joins_per_second",
    "max_channels_per_client",
    "max_presence_events_per_second",
    "max_payload_size_in_kb",
    "max_client_presence_events_per_window",
    "client_presence_window_ms",
]
SWITCHES = {
    "private_only": "Private channels only (refuse public ones)",
    "presence_enabled": "Send presence state to every channel",
    "suspend": "Suspend Realtime (refuse every connection)",
    "enforce_quota": "Enforce the hard quota (refuse connections once it is used up)",
}

view = ui.get(admin.tenant, tenant)
if view is None:
    st.stop()
st.caption(f"Plan **{view.plan['title']}** · limits not set explicitly follow the plan.")

saved = st.session_state.pop("settings_saved", None)
if saved is not None:
    st.success(saved.get("message") or "Saved.")
    for warning in saved.get("warnings") or []:
        st.warning(warning)

locked = ui.write_disabled()
effective, explicit = view.limits["effective"], view.limits["explicit"]
with st.form("settings"):
    cols = st.columns(2)
    values = {}
    for i, name in enumerate(n for n in LIMITS if n in effective):
        label = name.replace("_", " ") + ("" if name in explicit else " (plan)")
        values[name] = cols[i % 2].number_input(label, min_value=0, value=int(effective[name]), disabled=locked)
    for name, label in SWITCHES.items():
        values[name] = st.checkbox(label, value=bool(view.settings.get(name)), disabled=locked, key=f"switch-{name}")
    sure = st.checkbox("I understand that saving disconnects all of this tenant's clients", disabled=locked)
    submitted = st.form_submit_button("Save", disabled=locked)

if submitted:
    current = {**effective, **{k: bool(view.settings.get(k)) for k in SWITCHES}}
    changes = {k: v for k, v in values.items() if v != current.get(k)}
    if not changes:
        st.info("Nothing changed.")
    elif not sure:
        st.warning("Tick the confirmation first: saving disconnects the tenant's clients.")
    else:
        answer = ui.get(admin.update_settings, tenant, **changes)
        if answer is not None:
            st.session_state.settings_saved = answer
            st.rerun()

st.subheader("Audit log")
st.caption("Every write through the admin API, newest first.")
entries = ui.get(admin.audit, limit=100)
if entries is not None:
    log = entries.to_frame()
    if log.empty:
        st.info("No admin write yet: saving settings, a test broadcast or an RLS check is recorded here.")
    else:
        st.dataframe(log, hide_index=True, key="audit")
        ui.download(log, "audit")
