"""The admin API's replication view: a tenant's replication slots (Postgres Changes and
broadcast from the database) with their health and row statistics, the `supabase_realtime`
publication with its subscribers per table, the size of realtime.messages; and adding or
removing a table of the publication.

admin/__init__.py calls routes(). Slot and table facts are read from the tenant's database
through its services' pool, a few catalog queries per request; row counts and latencies come
from the streams' in-memory rowstats.RowStats."""

from __future__ import annotations

from datetime import UTC
from typing import TYPE_CHECKING, Any, Literal

import psycopg
from psycopg import sql
from pydantic import BaseModel, Field

from .endpoints import AdminApi, Call, Model, invalid, tenant_of

if TYPE_CHECKING:
    from psycopg_pool import AsyncConnectionPool

    from ..app import App
    from ..rowstats import RowStats
    from ..tenant_services import TenantServices

__all__ = ["routes"]

DEFAULT_PUBLICATION = "supabase_realtime"

_SLOTS = """
select slot_name::text, active, confirmed_flush_lsn::text,
       pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint,
       pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint,
       wal_status, safe_wal_size
from pg_replication_slots where slot_name = any(%s)
"""
# max_slot_wal_keep_size is in MB; -1 means no limit (null here).
_KEEP_SIZE = """
select case when setting::bigint < 0 then null else setting::bigint * 1024 * 1024 end
from pg_settings where name = 'max_slot_wal_keep_size'
"""
_PUBLICATION_TABLES = """
select schemaname::text, tablename::text from pg_publication_tables where pubname = %s order by 1, 2
"""
_PUBLICATION_EXISTS = "select 1 from pg_publication where pubname = %s"
_TABLE_EXISTS = """
select 1 from pg_class c join pg_namespace n on n.oid = c.relnamespace
where n.nspname = %s and c.relname = %s and c.relkind in ('r', 'p')
"""
# realtime.messages is partitioned by day: its partitions' total size and estimated rows (catalog
# only), and the oldest row (through the index on inserted_at).
_MESSAGES = """
select coalesce(sum(pg_total_relation_size(c.oid)), 0)::bigint, count(c.oid),
       coalesce(sum(greatest(c.reltuples, 0)), 0)::bigint,
       (select min(inserted_at) from realtime.messages)
from pg_inherits i join pg_class c on c.oid = i.inhrelid
where i.inhparent = 'realtime.messages'::regclass
"""
# Below this many (estimated) rows they are counted exactly; above, the estimate is answered, so
# that a console polling the view never scans a large table.
_EXACT_COUNT_BELOW = 100_000


class Percentiles(BaseModel):
    p50: float | None
    p99: float | None


class Rows(BaseModel):
    seen: int = Field(description="rows (changes) read from the slot since start")
    dispatched: int = Field(description="rows handed to at least one subscriber")
    skipped: dict[str, int] = Field(description="rows not dispatched, by reason")


class Slot(BaseModel):
    name: str
    kind: Literal["postgres_changes", "db_broadcast"]
    active: bool
    confirmed_flush_lsn: str | None
    lag_bytes: int | None = Field(description="WAL between the server's position and confirmed_flush_lsn")
    lag_ms: float | None = Field(description="commit → dispatch time of the latest row dispatched")
    retained_wal_bytes: int | None
    wal_status: str | None
    safe_wal_size: int | None
    max_slot_wal_keep_size: int | None = Field(description="bytes; null when unlimited")
    commit_to_dispatch_ms: Percentiles
    rows: Rows
    streaming: bool


class PublicationTable(BaseModel):
    schema_: str = Field(alias="schema")
    table: str
    subscribers: int = Field(description="channels with a Postgres Changes subscription that may want this table")


class Publication(BaseModel):
    name: str
    tables: list[PublicationTable]


class MessagesTable(BaseModel):
    rows: int = Field(description="exact below 100,000 rows, else the planner's estimate")
    rows_estimated: bool
    bytes: int
    partitions: int
    oldest: str | None = Field(description="inserted_at of the oldest row (ISO 8601 UTC)")


class Replication(BaseModel):
    leader: str | None = Field(
        description="node id of the process that streams the tenant's slots (this one when alone);"
        " null when none runs, or while a cluster elects its next leader"
    )
    leading: bool = Field(description="whether the process answering streams the slots")
    slots: list[Slot]
    publication: Publication
    messages: MessagesTable | None


class TableRef(Model):
    schema_: str = Field("public", alias="schema", min_length=1, max_length=63)
    table: str = Field(min_length=1, max_length=63)


def routes(api: AdminApi, app: App) -> None:
    """Add the replication and publication routes."""

    def services_of(call: Call) -> TenantServices | None:
        return app.services.get(tenant_of(app.tenants, call).external_id)

    def pool_of(call: Call) -> tuple[TenantServices, AsyncConnectionPool]:
        services = services_of(call)
        if services is None or services.pool is None:
            raise invalid("id", "this tenant has no database services running")
        return services, services.pool

    @api.route("GET", "/admin/v1/tenants/:id/replication", response=Replication)
    async def replication(call: Call) -> dict[str, Any]:
        """Replication slots, the publication and realtime.messages of the tenant's database."""
        services = services_of(call)
        if services is None or services.pool is None:
            return {
                "leader": None,
                "leading": False,
                "slots": [],
                "publication": {"name": DEFAULT_PUBLICATION, "tables": []},
                "messages": None,
            }
        async with services.pool.connection() as conn:
            slots = await _slots(conn, services)
            publication = await _publication(conn, services)
            messages = await _messages(conn)
        leadership = services.leadership
        return {
            "leader": app.node_id if leadership is None else leadership.leader,
            "leading": services.leading,
            "slots": slots,
            "publication": publication,
            "messages": messages,
        }

    @api.route(
        "POST",
        "/admin/v1/tenants/:id/publication/tables",
        body=TableRef,
        response=Publication,
        action="publication.add",
    )
    async def add_table(call: Call) -> dict[str, Any]:
        """Add a table to the publication Postgres Changes streams."""
        return await _change_table(call, *pool_of(call), add=True)

    @api.route(
        "DELETE",
        "/admin/v1/tenants/:id/publication/tables",
        body=TableRef,
        response=Publication,
        action="publication.remove",
    )
    async def remove_table(call: Call) -> dict[str, Any]:
        """Remove a table from the publication Postgres Changes streams."""
        return await _change_table(call, *pool_of(call), add=False)


def _publication_name(services: TenantServices) -> str:
    return services.cdc.settings.publication if services.cdc is not None else DEFAULT_PUBLICATION


async def _change_table(
    call: Call, services: TenantServices, pool: AsyncConnectionPool, *, add: bool
) -> dict[str, Any]:
    ref: TableRef = call.body
    name = _publication_name(services)
    call.target = f"{call.params['id']}/{ref.schema_}.{ref.table}"
    call.detail = {"publication": name, "schema": ref.schema_, "table": ref.table}
    async with pool.connection() as conn:
        if await (await conn.execute(_TABLE_EXISTS, (ref.schema_, ref.table))).fetchone() is None:
            raise invalid("table", f"{ref.schema_}.{ref.table} does not exist")
        tables = {tuple(r) for r in await (await conn.execute(_PUBLICATION_TABLES, (name,))).fetchall()}
        member = (ref.schema_, ref.table) in tables
        target = sql.SQL("{}.{}").format(sql.Identifier(ref.schema_), sql.Identifier(ref.table))
        try:
            if add and not member:
                if await (await conn.execute(_PUBLICATION_EXISTS, (name,))).fetchone() is None:
                    await conn.execute(
                        sql.SQL("create publication {} for table {}").format(sql.Identifier(name), target)
                    )
                else:
                    await conn.execute(
                        sql.SQL("alter publication {} add table {}").format(sql.Identifier(name), target)
                    )
            elif not add:
                if not member:
                    raise invalid("table", f"{ref.schema_}.{ref.table} is not in publication {name}")
                await conn.execute(sql.SQL("alter publication {} drop table {}").format(sql.Identifier(name), target))
        except psycopg.Error as exc:
            # e.g. a table the server's role does not own: the database's own words.
            raise invalid("table", str(exc).strip()) from None
        return await _publication(conn, services)


async def _slots(conn: psycopg.AsyncConnection[Any], services: TenantServices) -> list[dict[str, Any]]:
    changes_slot, broadcast_slot = services.slots
    streams: list[tuple[str, str, Any, RowStats | None]] = []
    if services.cdc is not None:
        streams.append((changes_slot, "postgres_changes", services.cdc.stream, services.cdc.dispatcher.rows))
    if services.db_broadcast is not None:
        streams.append((broadcast_slot, "db_broadcast", services.db_broadcast.stream, services.db_broadcast.rows))
    if not streams:
        return []
    rows = await (await conn.execute(_SLOTS, ([name for name, *_ in streams],))).fetchall()
    by_name = {row[0]: row for row in rows}
    keep_size = await (await conn.execute(_KEEP_SIZE)).fetchone()
    out = []
    for name, kind, stream, stats in streams:
        row = by_name.get(name)
        _, active, confirmed, lag, retained, wal_status, safe = row or (name, False, None, None, None, None, None)
        out.append(
            {
                "name": name,
                "kind": kind,
                "active": bool(active),
                "confirmed_flush_lsn": confirmed,
                "lag_bytes": lag,
                "lag_ms": stats.last_latency_ms if stats is not None else None,
                "retained_wal_bytes": retained,
                "wal_status": wal_status,
                "safe_wal_size": safe,
                "max_slot_wal_keep_size": keep_size[0] if keep_size else None,
                "commit_to_dispatch_ms": stats.percentiles() if stats is not None else {"p50": None, "p99": None},
                "rows": stats.as_dict() if stats is not None else {"seen": 0, "dispatched": 0, "skipped": {}},
                "streaming": bool(stream.connected),
            }
        )
    return out


async def _publication(conn: psycopg.AsyncConnection[Any], services: TenantServices) -> dict[str, Any]:
    name = _publication_name(services)
    rows = await (await conn.execute(_PUBLICATION_TABLES, (name,))).fetchall()
    registry = services.cdc.registry if services.cdc is not None else None
    tables = []
    for schema, table in rows:
        subscribers = 0
        if registry is not None:
            subscribers = len({id(s.channel) for s in registry.for_relation(schema, table)})
        tables.append({"schema": schema, "table": table, "subscribers": subscribers})
    return {"name": name, "tables": tables}


async def _messages(conn: psycopg.AsyncConnection[Any]) -> dict[str, Any] | None:
    try:
        row = await (await conn.execute(_MESSAGES)).fetchone()
    except psycopg.errors.UndefinedTable:
        return None  # a database without the realtime schema's messages table
    assert row is not None
    size, partitions, estimate, oldest = row
    estimated = estimate >= _EXACT_COUNT_BELOW
    if not estimated:
        counted = await (await conn.execute("select count(*) from realtime.messages")).fetchone()
        assert counted is not None
        estimate = counted[0]
    return {
        "rows": estimate,
        "rows_estimated": estimated,
        "bytes": size,
        "partitions": partitions,
        "oldest": oldest.astimezone(UTC).isoformat().replace("+00:00", "Z") if oldest is not None else None,
    }
