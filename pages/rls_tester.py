"""RLS tester: whether a subject may read and write a topic's broadcast and presence (the probe a
real join or send runs), the policies that applied and the time taken; whether a Postgres change
of a row would reach a subscriber, and why not. Checks are kept in the session to compare
policies as they are edited."""

from __future__ import annotations

import json
from collections import deque
from datetime import UTC, datetime

import pandas as pd
import streamlit as st

from console import ui

admin, tenant = ui.client(), ui.tenant()
st.title("RLS tester")
st.caption(
    "Runs the same authorization probe a client's join (read) or send (write) runs against the "
    "policies on realtime.messages, inside a transaction that is rolled back."
)
locked = ui.write_disabled()
history: deque[dict] = st.session_state.setdefault("rls_history", deque(maxlen=50))


def parse_json(label: str, text: str) -> dict | None:
    """The text as a JSON object, or None after saying what is wrong with it."""
    try:
        value = json.loads(text or "{}")
    except json.JSONDecodeError as exc:
        st.error(f"{label} is not valid JSON: {exc}")
        return None
    if not isinstance(value, dict):
        st.error(f"{label} must be a JSON object")
        return None
    return value


st.subheader("Subject")
mode = st.radio("Who", ["Role", "Role + claims", "Mint a test JWT"], horizontal=True, key="rls-mode")
cols = st.columns([1, 1, 2])
role = cols[0].selectbox("Role", ["authenticated", "anon", "service_role"], key="rls-role")
sub = cols[1].text_input("sub", key="rls-sub", disabled=mode == "Role")
claims_text = cols[2].text_area(
    "Claims (JSON)", value="{}", key="rls-claims", height=68, disabled=mode == "Role", help='e.g. {"team": 3}'
)


def subject() -> tuple[dict, str] | None:
    """The subject fields of a check request, and a short label for the history."""
    claims = parse_json("Claims", claims_text) if mode != "Role" else {}
    if claims is None:
        return None
    if sub and mode != "Role":
        claims = {**claims, "sub": sub}
    if mode == "Mint a test JWT":
        token = ui.get(admin.create_token, tenant, role=role, sub=sub or None, claims=claims, ttl_seconds=600)
        if token is None:
            return None
        st.session_state.rls_minted = token
        return {"jwt": token}, f"JWT {role} {sub}".strip()
    return {"role": role, "claims": claims}, f"{role} {sub}".strip()


st.subheader("Channel authorization")
with st.form("rls-check"):
    cols = st.columns([3, 1])
    topic = cols[0].text_input("Topic", value="room:1", key="rls-topic")
    private = cols[1].toggle("Private channel", value=True, key="rls-private")
    run = st.form_submit_button("Check read and write", disabled=locked)

if run:
    who = subject()
    if who is not None and topic:
        fields, label = who
        row: dict = {"at": datetime.now(UTC).strftime("%H:%M:%S"), "topic": topic, "subject": label}
        policies: dict[str, dict] = {}
        matrix = []
        for extension in ("broadcast", "presence"):
            for action in ("read", "write"):
                answer = ui.get(
                    admin.check_authorization, tenant, topic, private=private, action=action, extension=extension,
                    **fields,
                )  # fmt: skip
                if answer is None:
                    break
                verdict = "allow" if answer.allowed else "deny"
                row[f"{extension} {action}"] = verdict
                matrix.append(
                    {
                        "extension": extension,
                        "action": action,
                        "result": verdict,
                        "duration_ms": round(answer.duration_ms, 2),
                        "error": answer.error,
                    }
                )
                policies.update({p["name"]: p for p in answer.policies})
        if len(matrix) == 4:
            history.appendleft(row)
            st.session_state.rls_last = {"matrix": matrix, "policies": list(policies.values())}

last = st.session_state.get("rls_last")
if last:
    result = pd.DataFrame(last["matrix"])
    st.table(result, hide_index=True)
    for item in last["matrix"]:
        if item["error"]:
            st.error(f"{item['extension']} {item['action']}: the policy raised: {item['error']}")
    st.markdown("**Policies that applied**")
    if last["policies"]:
        st.dataframe(pd.DataFrame(last["policies"]), hide_index=True, key="rls-policies")
    else:
        st.info("No policy on realtime.messages applies to this role: private channels deny everything.")
elif not run:
    ui.empty(
        "Pick a subject and a topic, then check: the answer shows allow/deny for read and write of broadcast "
        "and presence, and the policies that decided. A policy to try:",
        'create policy "members read" on realtime.messages for select to authenticated\n'
        "  using (realtime.topic() = 'room:' || (auth.jwt() ->> 'team'));",
        language="sql",
    )
if st.session_state.get("rls_minted"):
    with st.expander("The minted test JWT"):
        st.code(st.session_state.rls_minted, language="text")

st.subheader("Postgres Changes visibility")
with st.form("pg-check"):
    cols = st.columns([1, 2, 1])
    schema = cols[0].text_input("Schema", value="public", key="pg-schema")
    table = cols[1].text_input("Table", key="pg-table")
    event = cols[2].selectbox("Event", ["INSERT", "UPDATE", "DELETE"], key="pg-event")
    cols = st.columns([2, 1, 2])
    row_filter = cols[0].text_input("Filter", placeholder="done=eq.false", key="pg-filter")
    by = cols[1].radio("Row by", ["primary key", "values"], key="pg-by")
    row_text = cols[2].text_area("Primary key or row (JSON)", value='{"id": 1}', key="pg-row", height=68)
    check = st.form_submit_button("Would the subject get it?", disabled=locked)

if check:
    who = subject()
    values = parse_json("Primary key or row", row_text)
    if who is not None and values is not None and table:
        fields, label = who
        by_row = {"primary_key": values} if by == "primary key" else {"row": values}
        answer = ui.get(
            admin.check_postgres_changes, tenant, table, schema=schema, event=event, filter=row_filter,
            **by_row, **fields,
        )  # fmt: skip
        if answer is not None:
            if answer.delivered:
                st.success(f"Delivered ({answer.duration_ms:.1f} ms)", icon=":material/check_circle:")
            else:
                st.error(f"Not delivered: {answer.reason} — {answer.detail}", icon=":material/block:")
            for error in answer.errors:
                st.warning(f"Delivered with upstream's error: {error}")
            if answer.policies:
                st.dataframe(pd.DataFrame(answer.policies), hide_index=True, key="pg-policies")
            history.appendleft(
                {
                    "at": datetime.now(UTC).strftime("%H:%M:%S"),
                    "topic": f"{schema}.{table} {event} {row_filter}".strip(),
                    "subject": label,
                    "postgres_changes": "delivered" if answer.delivered else f"not: {answer.reason}",
                }
            )
    elif who is not None and values is not None:
        st.warning("Name a table.")

st.subheader("History of this session")
if history:
    frame = pd.DataFrame(list(history))
    st.dataframe(frame, hide_index=True, key="rls-history")
    ui.download(frame, "rls-checks")
    if st.button("Clear history", key="rls-clear"):
        history.clear()
        st.rerun()
else:
    st.caption("Each check is listed here, newest first, to compare answers as policies change.")
