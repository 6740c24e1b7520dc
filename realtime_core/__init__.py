"""realtime-core: a Python server wire-compatible with Supabase Realtime."""

__version__ = "0.1.0"
