"""Settings of Postgres Changes, kept apart so that config.py can import them cheaply."""

from __future__ import annotations

from dataclasses import dataclass

from ..envvars import int_var, str_var

__all__ = ["MESSAGES_SLOT", "CdcSettings"]

MESSAGES_SLOT = "supabase_realtime_messages_replication_slot"


@dataclass(slots=True, frozen=True)
class CdcSettings:
    slot_name: str = str_var(
        "REALTIME_SLOT_NAME",
        "supabase_realtime_replication_slot",
        "the default tenant's Postgres Changes replication slot; other tenants' add `_<tenant id>`",
    )
    slot_name_suffix: str = str_var(
        "SLOT_NAME_SUFFIX",
        "",
        "appended (after `_`) to the slot names; slot names are cluster-wide: give each server on a shared"
        " cluster its own",
        shown="unset",
    )
    publication: str = str_var("REALTIME_PUBLICATION", "supabase_realtime", "the publication Postgres Changes streams")
    mode: str = str_var(
        "REALTIME_REPLICATION_MODE",
        "stream",
        "`stream` (replication protocol) or `poll` (SQL, for poolers)",
        choices=("stream", "poll"),
    )
    poll_interval_ms: int = int_var(
        "REALTIME_POLL_INTERVAL_MS", 100, "in `poll` mode, the pause between two reads of the slot", minimum=1
    )
    max_record_bytes: int = int_var(
        "REALTIME_MAX_RECORD_BYTES", 1_048_576, "larger records keep only fields of 64 bytes or less (`Error 413`)"
    )
    pool_size: int = int_var(
        "REALTIME_RLS_POOL_SIZE", 5, "connections for Postgres Changes RLS checks and subscriptions", minimum=1
    )
    slot_lag_alert_bytes: int = int_var(
        "REALTIME_SLOT_LAG_ALERT_BYTES",
        1024**3,
        "retained WAL past which the slot is reported (`ReplicationSlotLagTooHigh`)",
        shown="`1073741824` (1 GiB)",
    )
    slot_lag_policy: str = str_var(
        "REALTIME_SLOT_LAG_POLICY",
        "keep",
        "past the lag alert: `keep` only alerts, `drop` recreates the slot (losing what it retained)",
        choices=("keep", "drop"),
    )
    health_interval: float = 10.0

    @property
    def slot(self) -> str:
        return self.slot_name + (f"_{self.slot_name_suffix}" if self.slot_name_suffix else "")

    @property
    def messages_slot(self) -> str:
        """Broadcast from the database (db_broadcast.py) streams its own durable slot."""
        return MESSAGES_SLOT + (f"_{self.slot_name_suffix}" if self.slot_name_suffix else "")
