"""Postgres Changes: pgoutput decoding, value conversion, filters, RLS and dispatch of row changes (spec §6)."""
