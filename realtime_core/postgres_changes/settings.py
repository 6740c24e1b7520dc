"""Settings of Postgres Changes, kept apart so that config.py can import them cheaply."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["CdcSettings"]


@dataclass(slots=True, frozen=True)
class CdcSettings:
    slot: str = "supabase_realtime_replication_slot"
    # Broadcast from the database (db_broadcast.py) streams its own durable slot.
    messages_slot: str = "supabase_realtime_messages_replication_slot"
    publication: str = "supabase_realtime"
    mode: str = "stream"  # or "poll" (pg_logical_slot_peek_binary_changes), for poolers
    poll_interval: float = 0.1
    max_record_bytes: int = 1_048_576
    pool_size: int = 5
    # ReplicationSlotLagTooHigh past this many retained WAL bytes; policy "keep" alerts only,
    # "drop" recreates the slot (losing what it retained).
    slot_lag_alert_bytes: int = 1024**3
    slot_lag_policy: str = "keep"
    health_interval: float = 10.0
