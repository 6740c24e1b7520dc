"""What every page of the console shares: the session's admin client, the sidebar (server, token,
tenant), read-only mode, error messages and number formatting.

app.py calls connect() once per run before the page; pages call client(), tenant(), get() and
the formatting helpers, and draw. Everything kept across reruns lives in st.session_state."""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Callable
from typing import Any, TypeVar

import jwt
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from console.client import DEFAULT_URL, AdminApiError, AdminClient

__all__ = [
    "act",
    "client",
    "connect",
    "download",
    "empty",
    "gauge",
    "get",
    "loopback",
    "read_only_reason",
    "show_error",
    "tenant",
    "usd",
    "write_disabled",
]

T = TypeVar("T")

READ_ONLY = "This console's admin token is read-only (`admin: read`): changes are disabled."


def loopback() -> bool:
    """True when Streamlit listens on a loopback address only. Unset means every interface."""
    address = st.get_option("server.address")
    if not address:
        return False
    if address == "localhost":
        return True
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def client() -> AdminClient:
    """The session's client, rebuilt when the sidebar's server URL or token changes."""
    key = (st.session_state.server_url, st.session_state.admin_token)
    current = st.session_state.get("_client")
    if current is None or st.session_state.get("_client_key") != key:
        if current is not None:
            current.close()
        current = AdminClient(key[0] or DEFAULT_URL, key[1] or "")
        st.session_state._client, st.session_state._client_key = current, key
    return current


def tenant() -> str:
    """The tenant the sidebar picked (connect() has made sure there is one)."""
    return st.session_state.tenant


def read_only_reason() -> str | None:
    """Why write controls are disabled, or None. The token's claims are read, not verified: the
    server verifies them on every call; this only decides what to offer."""
    token = st.session_state.get("admin_token") or ""
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError:
        return None
    return READ_ONLY if isinstance(claims, dict) and claims.get("admin") == "read" else None


def write_disabled() -> bool:
    """True in a read-only console; shows the reason once where it is called."""
    reason = read_only_reason()
    if reason:
        st.info(reason, icon=":material/lock:")
    return reason is not None


def show_error(exc: AdminApiError) -> None:
    """One clear message for an API failure, never a traceback."""
    url = st.session_state.get("server_url") or DEFAULT_URL
    if exc.status is None:
        st.error(f"The server at {url} cannot be reached: {exc.message}", icon=":material/power_off:")
    elif exc.status == 403:
        st.error(
            f"The server at {url} refused the admin token (403). Set a valid one in the sidebar "
            "(`realtime-core admin-token`, or REALTIME_ADMIN_TOKEN); a read-only token may only read.",
            icon=":material/key_off:",
        )
    elif exc.errors:
        fields = "; ".join(f"{name}: {' '.join(msgs)}" for name, msgs in exc.errors.items())
        st.error(f"The server refused the request ({exc.status}): {fields}", icon=":material/error:")
    else:
        st.error(f"The server answered {exc.status}: {exc.message}", icon=":material/error:")


def get(call: Callable[..., T], *args: Any, **kwargs: Any) -> T | None:
    """`call(*args, **kwargs)`, or None after showing why it failed."""
    try:
        return call(*args, **kwargs)
    except AdminApiError as exc:
        show_error(exc)
        return None


def act(call: Callable[..., object], *args: Any, **kwargs: Any) -> bool:
    """Run a write; True when it succeeded, else False after showing why."""
    try:
        call(*args, **kwargs)
    except AdminApiError as exc:
        show_error(exc)
        return False
    return True


def empty(what: str, snippet: str, language: str = "bash") -> None:
    """What a section will show once there is traffic, and the snippet that produces it."""
    st.info(what, icon=":material/info:")
    st.code(snippet, language=language)


def download(frame: pd.DataFrame, name: str) -> None:
    """A CSV download button for a table."""
    st.download_button(
        f"Download {name}.csv", frame.to_csv(index=False).encode(), f"{name}.csv", "text/csv", key=f"csv-{name}"
    )


def gauge(title: str, item: dict[str, Any]) -> go.Figure:
    """A quota item (`used`, `included`, `percent`) as a gauge, 80 % to 100 % of the quota in amber,
    beyond it in red."""
    included = item["included"] or 1
    figure = go.Figure(
        go.Indicator(
            mode="gauge+number",
            value=item["used"],
            number={"valueformat": ","},
            title={"text": f"{title} ({item['percent'] if item['percent'] is not None else '—'} %)"},
            gauge={
                "axis": {"range": [0, max(included, item["used"]) * 1.1]},
                "steps": [
                    {"range": [0.8 * included, included], "color": "#fde68a"},
                    {"range": [included, max(included, item["used"]) * 1.1], "color": "#fecaca"},
                ],
                "threshold": {"line": {"color": "red", "width": 3}, "value": included},
            },
        )
    )
    return figure.update_layout(height=230, margin={"t": 50, "b": 10, "l": 20, "r": 20})


def usd(value: float | None) -> str:
    return "—" if value is None else f"${value:,.2f}"


def connect() -> bool:
    """Draw the sidebar and make sure the server answers and a tenant is picked; on failure show
    why (the page is then not run) and return False."""
    _defaults()
    if not loopback() and not st.session_state.admin_token:
        _ask_token()
        return False
    with st.sidebar:
        st.text_input("Server URL", key="server_url")
        st.text_input("Admin token", key="admin_token", type="password")
    admin = client()
    if not admin.healthy():
        st.error(
            f"The server at {admin.base_url} does not answer /healthcheck. Start one with "
            "`realtime-core up`, or set the server URL in the sidebar.",
            icon=":material/power_off:",
        )
        return False
    tenants = get(admin.tenants, limit=100)
    if tenants is None:
        return False
    ids = [t.id for t in tenants]
    if not ids:
        empty("The server has no tenants yet. Create one with the tenant API:", _CREATE_TENANT)
        return False
    if st.session_state.get("tenant") not in ids:
        st.session_state.tenant = ids[0]
    if len(ids) > 1:
        st.sidebar.selectbox("Tenant", ids, key="tenant")
    else:
        st.sidebar.caption(f"Tenant: **{ids[0]}**")
    if read_only_reason():
        st.sidebar.caption(":material/lock: read-only token")
    return True


def _defaults() -> None:
    if "server_url" not in st.session_state:
        st.session_state.server_url = os.environ.get("REALTIME_SERVER_URL") or DEFAULT_URL
    if "admin_token" not in st.session_state:
        # Published beyond this machine, the console does not hand the environment's token to
        # whoever opens it: each browser session types its own.
        st.session_state.admin_token = os.environ.get("REALTIME_ADMIN_TOKEN", "") if loopback() else ""


def _ask_token() -> None:
    st.title("realtime-core console")
    st.write("This console is published beyond this machine: enter an admin token to continue.")
    with st.form("token"):
        token = st.text_input("Admin token", type="password")
        if st.form_submit_button("Continue") and token:
            st.session_state.admin_token = token
            st.rerun()
    st.caption("`realtime-core admin-token` prints one (add `--read-only` for a read-only console).")


_CREATE_TENANT = """curl -X POST "$REALTIME_SERVER_URL/api/tenants" \\
  -H "Authorization: Bearer $REALTIME_ADMIN_TOKEN" -H 'content-type: application/json' \\
  -d '{"tenant": {"external_id": "my-project", "name": "my-project", "jwt_secret": "…"}}'"""
