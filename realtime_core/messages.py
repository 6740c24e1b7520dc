"""realtime.messages from the server's side: daily partitions, their cleanup, and replay.

sql/0003_messages.sql creates the partitioned table and the functions that
write it. tenant_services.TenantServices calls ensure_partitions() when a tenant database starts
(authorization probes and realtime.send() fail without today's partition),
then runs a Janitor, which repeats ensure_partitions() and
drop_old_partitions() every few hours (docs/protocol.md §4.5). A private channel's join
calls replay() for `config.broadcast.replay` (docs/protocol.md §4.6).

Times: `inserted_at` is a `timestamp without time zone` holding UTC. The
table's defaults are `timezone('utc', now())`, partitions are named and
bounded by UTC dates, and replay() compares in UTC (`at time zone 'utc'`).
Upstream's older defaults were `now()` in the session time zone, which is the
same thing on a database running in UTC, as Supabase's do."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import re
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any, Protocol

import psycopg
from psycopg import sql

from .tasks import spawn

__all__ = [
    "PARTITION_DAYS",
    "Janitor",
    "ReplayRow",
    "drop_old_partitions",
    "ensure_partitions",
    "partition_name",
    "replay",
]

log = logging.getLogger(__name__)

# Days relative to today (UTC) that have a partition: yesterday … today+3
# (upstream lib/realtime/tenants.ex create_messages_partitions/1).
PARTITION_DAYS = range(-1, 4)

_OWNER = "supabase_realtime_admin"
_PARTITION = re.compile(r"messages_(\d{4})_(\d{2})_(\d{2})\Z")

_SQL_PARTITIONS = """
select c.relname
from pg_inherits i
join pg_class c on c.oid = i.inhrelid
join pg_namespace n on n.oid = c.relnamespace
where i.inhparent = 'realtime.messages'::regclass and n.nspname = 'realtime'
"""

# docs/protocol.md §4.6 (upstream lib/realtime/messages.ex replay/5). The newest `limit`
# rows, newest first; replay() reverses them. The upper bound keeps out rows
# stamped in the future by a skewed writer, as upstream does. payload::text is
# the stored jsonb's own text, which the caller sends without re-encoding.
_SQL_REPLAY = """
select id::text, event, payload::text, binary_payload, inserted_at
from realtime.messages
where topic = %(topic)s
  and private is true
  and extension = 'broadcast'
  and inserted_at >= (to_timestamp(%(since_ms)s / 1000.0) at time zone 'utc')
  and inserted_at < (now() at time zone 'utc') + interval '1 minute'
order by inserted_at desc
limit %(limit)s
"""


def partition_name(day: date) -> str:
    """The name of `day`'s partition: messages_YYYY_MM_DD (in schema realtime)."""
    return f"messages_{day:%Y_%m_%d}"


async def ensure_partitions(conn: psycopg.AsyncConnection[Any], today: date | None = None) -> list[str]:
    """Create the daily partitions for yesterday … today+3 that are missing; return their names.

    `today` defaults to the current UTC date. Each partition covers
    `FROM ('D') TO ('D+1')` and is handed to supabase_realtime_admin when the
    connection's role may do so. A partition that cannot be created (a
    concurrent janitor made it first, or it would overlap one with another
    name) is logged and skipped; the others are still created."""
    if today is None:
        today = datetime.now(UTC).date()
    cur = await conn.execute("select exists (select from pg_roles where rolname = %s)", (_OWNER,))
    row = await cur.fetchone()
    owner_exists = bool(row and row[0])
    created: list[str] = []
    for offset in PARTITION_DAYS:
        day = today + timedelta(days=offset)
        name = partition_name(day)
        cur = await conn.execute("select to_regclass(%s)", (f"realtime.{name}",))
        row = await cur.fetchone()
        if row is not None and row[0] is not None:
            continue
        # DDL takes no bind parameters: the bounds are literals.
        create = sql.SQL("create table {} partition of realtime.messages for values from ({}) to ({})").format(
            sql.Identifier("realtime", name),
            sql.Literal(day.isoformat()),
            sql.Literal((day + timedelta(days=1)).isoformat()),
        )
        try:
            async with conn.transaction():
                await conn.execute(create)
        except psycopg.errors.DuplicateTable:
            continue  # another process made it between our check and our create
        except psycopg.Error as exc:
            log.warning("realtime: could not create partition realtime.%s: %s", name, exc)
            continue
        created.append(name)
        if owner_exists:
            try:
                async with conn.transaction():
                    await conn.execute(
                        sql.SQL("alter table {} owner to {}").format(
                            sql.Identifier("realtime", name), sql.Identifier(_OWNER)
                        )
                    )
            except psycopg.errors.InsufficientPrivilege as exc:
                log.debug("partition realtime.%s keeps its creator as owner: %s", name, exc)
    return created


async def drop_old_partitions(
    conn: psycopg.AsyncConnection[Any],
    now: datetime | None = None,
    retention: timedelta = timedelta(hours=72),
) -> list[str]:
    """Drop the daily partitions dated before the day of `now - retention`; return their names.

    As upstream's delete_old_messages/1, the cut is by date: with the default
    72 hours, a partition is dropped once its day is before the UTC date three
    days ago. `now` defaults to the current time; a naive `now` is taken as
    UTC. Partitions whose names are not messages_YYYY_MM_DD are left alone."""
    if now is None:
        now = datetime.now(UTC)
    elif now.tzinfo is not None:
        now = now.astimezone(UTC)
    cutoff = (now - retention).date()
    cur = await conn.execute(_SQL_PARTITIONS)
    dropped: list[str] = []
    for (name,) in sorted(await cur.fetchall()):
        m = _PARTITION.match(name)
        if m is None:
            continue
        try:
            day = date(int(m[1]), int(m[2]), int(m[3]))
        except ValueError:
            continue  # messages_2024_13_45: not ours
        if day >= cutoff:
            continue
        async with conn.transaction():
            await conn.execute(sql.SQL("drop table if exists {}").format(sql.Identifier("realtime", name)))
        dropped.append(name)
    return dropped


@dataclass(slots=True, frozen=True)
class ReplayRow:
    """One stored private broadcast, as replay() returns it."""

    id: str
    event: str | None
    payload_json: bytes | None  # the jsonb's text, UTF-8: send as is, no re-encoding
    binary_payload: bytes | None  # set instead of payload_json by realtime.send_binary()
    inserted_at: datetime  # naive, UTC


async def replay(conn: psycopg.AsyncConnection[Any], topic: str, since_ms: int, limit: int) -> list[ReplayRow]:
    """Fetch up to `limit` private broadcasts of `topic` stored since `since_ms`, oldest first.

    `topic` is the sub_topic (no `realtime:` prefix) and `since_ms` Unix time
    in milliseconds. The caller validates and clamps `limit` (1..25,
    docs/protocol.md §4.6). Raises psycopg.Error when the query fails."""
    cur = await conn.execute(_SQL_REPLAY, {"topic": topic, "since_ms": since_ms, "limit": limit})
    rows = await cur.fetchall()
    return [
        ReplayRow(
            id=id_,
            event=event,
            payload_json=None if payload is None else payload.encode(),
            binary_payload=None if binary is None else bytes(binary),
            inserted_at=inserted_at,
        )
        for id_, event, payload, binary, inserted_at in reversed(rows)
    ]


class _ConnectionSource(Protocol):
    """Where the Janitor gets a connection: a psycopg_pool.AsyncConnectionPool fits."""

    def connection(self) -> AbstractAsyncContextManager[psycopg.AsyncConnection[Any]]: ...


class Janitor:
    """The background task that keeps realtime.messages' partitions (docs/protocol.md §4.5).

    Call start() once the event loop runs; it runs ensure_partitions() and
    drop_old_partitions() at once, then every `interval` seconds plus up to
    `jitter` of that at random, so that several servers on one database do
    not all run at the same moment. A failed run is logged and retried at the
    next one. Call stop() before closing `source`."""

    __slots__ = ("_task", "interval", "jitter", "last_created", "last_dropped", "retention", "runs", "source")

    def __init__(
        self,
        source: _ConnectionSource,
        *,
        interval: float = 4 * 3600,
        retention: timedelta = timedelta(hours=72),
        jitter: float = 0.1,
    ) -> None:
        self.source = source
        self.interval = interval  # seconds; upstream JANITOR_SCHEDULE_TIMER_IN_MS defaults to 4 h
        self.retention = retention
        self.jitter = jitter  # a fraction of interval
        self.runs = 0  # completed runs, for tests and metrics
        self.last_created: list[str] = []
        self.last_dropped: list[str] = []
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start the task (at most once)."""
        if self._task is None:
            self._task = spawn(self._run(), name="realtime-janitor")

    async def stop(self) -> None:
        """Cancel the task and wait for it to end."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def run_once(self) -> None:
        """Create the missing partitions, then drop the expired ones."""
        async with self.source.connection() as conn:
            self.last_created = await ensure_partitions(conn)
            self.last_dropped = await drop_old_partitions(conn, retention=self.retention)
        self.runs += 1
        if self.last_created or self.last_dropped:
            log.info(
                "realtime.messages partitions: created %s, dropped %s",
                ", ".join(self.last_created) or "none",
                ", ".join(self.last_dropped) or "none",
            )

    async def _run(self) -> None:
        async for _ in self._ticks():
            try:
                await self.run_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("realtime.messages janitor run failed; retrying at the next run")

    async def _ticks(self) -> AsyncIterator[None]:
        yield  # at start
        while True:
            await asyncio.sleep(self.interval * (1 + random.uniform(0, self.jitter)))
            yield
