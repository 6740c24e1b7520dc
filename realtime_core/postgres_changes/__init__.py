"""Postgres Changes: pgoutput decoding, value conversion, filters, RLS and dispatch of row changes.

The behaviour follows docs/protocol.md §6."""
