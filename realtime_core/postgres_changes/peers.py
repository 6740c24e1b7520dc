"""What Postgres Changes needs from the other processes of a cluster, and the leader's wire format.

When several processes serve a tenant (cluster/leader.py, REDIS_URL), one of them, the
leader, streams the tenant's slot and decides who sees each change for the subscriptions
of every process; the others (and the leader itself) deliver to their own channels what it
publishes to them. cdc.PostgresChanges and dispatch.Dispatcher talk to the cluster through
`Peers` only; without a cluster they have none and nothing here runs.

A published batch, for one process, is one message (encode_batch / decode_batch): a JSON
header line, then the data objects' bytes back to back. The header holds the tenant and,
per change, its commit LSN, its type and its variants: (the length of its data object,
the subscription ids that get it). A transaction is always in one message whole, so its
commit LSN identifies it: a process drops every change at or below the last commit LSN it
delivered, which makes a new leader's re-reading of unconfirmed WAL harmless."""

from __future__ import annotations

from typing import Any, Protocol

import orjson

__all__ = ["Peers", "PublishedChange", "decode_batch", "encode_batch", "encode_records", "subscription_record"]

# (commit LSN, type, [(data object, subscription ids)])
PublishedChange = tuple[int, str, list[tuple[bytes, list[str]]]]


class Peers(Protocol):
    """The cluster, as one tenant's Postgres Changes sees it."""

    node: str  # this process's id: where the leader sends the changes of its subscriptions

    async def register(self, records: dict[str, bytes]) -> None:
        """Make subscriptions (id → subscription_record()) known to the leader; return once the
        leader has them (changes committed afterwards reach them), or after a bounded wait."""

    async def unregister(self, ids: list[str]) -> None:
        """Forget subscriptions whose channel closed."""

    async def publish(self, batches: dict[str, bytes]) -> None:
        """Leader: send each process its encode_batch() message; return once sent."""


def subscription_record(
    node: str,
    channel_key: str,
    topic: str,
    cid: int,
    params: dict[str, Any],
    legacy: bool,
    claims: Any,
    start_lsn: int,
    connection: str | None = None,
) -> bytes:
    """One subscription as the leader rebuilds it (cluster/leader.py); `connection`: its
    connection's id, which the leader's delivery traces match (trace.py)."""
    return orjson.dumps(
        {
            "node": node,
            "channel": channel_key,
            "connection": connection,
            "topic": topic,
            "id": cid,
            "params": params,
            "legacy": legacy,
            "claims": claims,
            "start_lsn": start_lsn,
        }
    )


def encode_records(records: dict[str, bytes]) -> bytes:
    return b"{" + b",".join(orjson.dumps(k) + b":" + v for k, v in records.items()) + b"}"


def encode_batch(tenant: str, changes: list[PublishedChange]) -> bytes:
    blobs: list[bytes] = []
    header: list[Any] = []
    for lsn, kind, variants in changes:
        entry = []
        for data, ids in variants:
            blobs.append(data)
            entry.append((len(data), ids))
        header.append((lsn, kind, entry))
    return orjson.dumps({"tenant": tenant, "changes": header}) + b"\n" + b"".join(blobs)


def decode_batch(message: bytes) -> tuple[str, list[PublishedChange]]:
    """(tenant, changes) of an encode_batch() message."""
    end = message.index(b"\n")
    header = orjson.loads(message[:end])
    view = memoryview(message)
    at = end + 1
    changes: list[PublishedChange] = []
    for lsn, kind, entry in header["changes"]:
        variants = []
        for size, ids in entry:
            variants.append((bytes(view[at : at + size]), ids))
            at += size
        changes.append((lsn, kind, variants))
    return header["tenant"], changes
