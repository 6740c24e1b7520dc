"""Streamlit entry point: `realtime-core console` or `realtime-core up` runs it.

The server's address and admin token come from REALTIME_SERVER_URL and REALTIME_ADMIN_TOKEN
(console/ui.py; the sidebar changes them). The pages live in the repository's top-level pages/,
which an installed wheel holds as console/pages/ (pyproject.toml maps one onto the other); each
one only calls console/client.py and draws."""

from __future__ import annotations

import sys
from pathlib import Path

import streamlit as st

# Streamlit puts only this file's folder on sys.path; `console` is imported from the one above it.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from console import ui

HERE = Path(__file__).resolve().parent
PAGES = HERE / "pages" if (HERE / "pages").is_dir() else HERE.parent / "pages"

st.set_page_config(page_title="realtime-core console", layout="wide")
navigation = st.navigation(
    [
        st.Page(str(PAGES / "overview.py"), title="Overview", icon=":material/monitoring:", default=True),
        st.Page(str(PAGES / "channels.py"), title="Channels", icon=":material/forum:"),
        st.Page(str(PAGES / "inspector.py"), title="Inspector", icon=":material/manage_search:"),
        st.Page(str(PAGES / "presence.py"), title="Presence", icon=":material/group:"),
        st.Page(str(PAGES / "nodes.py"), title="Nodes", icon=":material/hub:"),
        st.Page(str(PAGES / "replication.py"), title="Replication", icon=":material/sync_alt:"),
        st.Page(str(PAGES / "rls_tester.py"), title="RLS tester", icon=":material/policy:"),
        st.Page(str(PAGES / "usage.py"), title="Usage & pricing", icon=":material/payments:"),
        st.Page(str(PAGES / "settings.py"), title="Settings", icon=":material/settings:"),
    ]
)
if ui.connect():
    navigation.run()
