"""Streamlit entry point: `realtime-core console` or `realtime-core up` runs it.

The server's address comes from REALTIME_SERVER_URL; pages live in pages/."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import streamlit as st

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from console.client import AdminClient

st.set_page_config(page_title="realtime-core console", layout="wide")
if "client" not in st.session_state:
    st.session_state.client = AdminClient(os.environ.get("REALTIME_SERVER_URL", "http://127.0.0.1:4000"))

pages_dir = Path(__file__).resolve().parent.parent / "pages"
navigation = st.navigation([st.Page(str(pages_dir / "overview.py"), title="Overview", icon="📡", default=True)])
navigation.run()
