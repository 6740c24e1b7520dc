"""Streamlit entry point: `realtime-core console` or `realtime-core up` runs it.

The server's address comes from REALTIME_SERVER_URL. The pages live in the repository's top-level
pages/, which an installed wheel holds as console/pages/ (pyproject.toml maps one onto the other)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import streamlit as st

# Streamlit puts only this file's folder on sys.path; `console` is imported from the one above it.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from console.client import AdminClient

HERE = Path(__file__).resolve().parent
PAGES = HERE / "pages" if (HERE / "pages").is_dir() else HERE.parent / "pages"

st.set_page_config(page_title="realtime-core console", layout="wide")
if "client" not in st.session_state:
    st.session_state.client = AdminClient(os.environ.get("REALTIME_SERVER_URL", "http://127.0.0.1:4000"))

navigation = st.navigation([st.Page(str(PAGES / "overview.py"), title="Overview", icon="📡", default=True)])
navigation.run()
