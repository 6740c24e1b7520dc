"""Broadcast from the database: rows inserted into realtime.messages, delivered to channels (docs/protocol.md §4.4).

tenant_services.TenantServices runs one DatabaseBroadcast per tenant database, publishing through the
App's Broker. It streams publication
`supabase_realtime_messages_publication` through a durable pgoutput slot with
the same machinery as Postgres Changes (postgres_changes/replication.py): the
slot's LSN is confirmed only after each batch was queued to the subscribers,
so a restart resumes where delivery stopped. `realtime.send()` and
`realtime.broadcast_changes()` write those rows (sql/0003_messages.sql)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from .hub import DB_BROADCAST_KIND, Clock, Publication, StreamKey
from .postgres_changes.pgoutput import Insert, Relation
from .postgres_changes.replication import ReplicationStream, Transaction
from .protocol import BINARY, JSON, UserBroadcast
from .rowstats import RowStats

if TYPE_CHECKING:
    from .broker import Broker
    from .tenants import Tenant

__all__ = ["PUBLICATION", "DatabaseBroadcast"]

log = logging.getLogger(__name__)

PUBLICATION = "supabase_realtime_messages_publication"
# A row is broadcast only when it has all of these (docs/protocol.md §4.4).
_REQUIRED = ("inserted_at", "event", "id", "topic", "private")


class DatabaseBroadcast:
    """Streams realtime.messages inserts of one database to its tenant's channels."""

    def __init__(
        self,
        broker: Broker,
        clock: Clock,
        tenant: Tenant,
        dsn: str,
        *,
        slot: str,
        mode: str = "stream",
        resume_unconfirmed: bool = False,
    ) -> None:
        self.broker = broker
        # In a cluster a new leader delivers what its predecessor did not confirm: the channels
        # it serves stayed connected (on_batch).
        self.resume_unconfirmed = resume_unconfirmed
        self.clock = clock
        self.tenant = tenant
        self.stream = ReplicationStream(dsn, slot=slot, publication=PUBLICATION, on_batch=self.on_batch, mode=mode)
        self._columns: dict[int, dict[str, int]] = {}  # relation oid → column name → index
        self.delivered = 0
        self.dropped = 0
        self.rows = RowStats()  # seen, dispatched, skipped by reason, commit → dispatch latency

    def start(self) -> None:
        self.stream.start()

    async def stop(self) -> None:
        await self.stream.stop()

    async def on_batch(self, transactions: list[Transaction]) -> None:
        live_from = 0 if self.resume_unconfirmed else self.stream.first_start_lsn
        for txn in transactions:
            # Rows committed before this process started were delivered by the
            # previous one (or had no subscriber): channels joined since must
            # not get them again. Reconnects keep the first position, so
            # nothing committed during an outage is skipped.
            skip = txn.commit is not None and txn.commit.commit_lsn < live_from
            commit_time = txn.commit.commit_time_us if txn.commit is not None else 0
            for msg in txn.messages:
                if isinstance(msg, Insert):
                    self.rows.seen += 1
                    columns = self._columns.get(msg.relation_oid)
                    if skip:
                        self.rows.skip("before_start")
                    elif columns is None:
                        self.rows.skip("unknown_relation")
                    elif self._deliver(columns, msg.new):
                        self.rows.dispatched += 1
                        self.rows.dispatched_at(commit_time)
                elif isinstance(msg, Relation) and msg.namespace == "realtime" and msg.name.startswith("messages"):
                    # publish_via_partition_root makes partitions arrive as
                    # realtime.messages; older setups may name a partition.
                    self._columns[msg.oid] = {c.name: i for i, c in enumerate(msg.columns)}

    def _deliver(self, columns: dict[str, int], values: tuple[Any, ...]) -> bool:
        """Publish one realtime.messages row; False (counted in `rows.skipped`) when it is not sent."""
        row = {name: values[i] for name, i in columns.items()}
        if row.get("extension") != "broadcast":
            self.rows.skip("not_broadcast")
            return False
        payload, binary = row.get("payload"), row.get("binary_payload")
        if any(row.get(name) is None for name in _REQUIRED) or (payload is None and binary is None):
            self.dropped += 1
            log.warning("UnableToBroadcastChanges: realtime.messages row %s lacks required fields", row.get("id"))
            self.rows.skip("invalid")
            return False
        if binary is not None:
            data, encoding = bytes.fromhex(str(binary)[2:]), BINARY  # bytea_output=hex: "\x..."
        else:
            data, encoding = str(payload).encode(), JSON  # jsonb text is JSON already: sent as is
        tenant = self.tenant
        if tenant.payload_too_large(len(data)):
            self.dropped += 1
            log.warning("UnableToBroadcastChanges: message %s exceeds the payload size limit", row["id"])
            self.rows.skip("too_large")
            return False
        message_id = str(row["id"])
        topic = str(row["topic"])
        message = UserBroadcast(str(row["event"]), data, encoding, {"id": message_id})
        publication = Publication(
            f"realtime:{topic}", "broadcast", user=message, message_id=message_id, kind=DB_BROADCAST_KIND
        )
        key = StreamKey(tenant.external_id, row["private"] == "t", topic)
        now = self.clock()
        tenant.events.add(1, now)
        self.broker.accepted(tenant, DB_BROADCAST_KIND, key)
        self.delivered += self.broker.publish(tenant, key, publication, now)
        return True
