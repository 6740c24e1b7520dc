"""The server's own database: connection pool and versioned migrations.

app.App opens one pool at start, runs migrate() once, then hands the pool to
tenants.TenantStore. Migrations are the files in sql/, applied in name order,
each once, in its own transaction, under an advisory lock so that several
server processes starting together apply each file exactly once. A tenant's
own database (tenant_services.py) gets them all but the control-only ones."""

from __future__ import annotations

import logging
from importlib import resources

import psycopg
from psycopg_pool import AsyncConnectionPool

__all__ = ["CONTROL_ONLY", "migrate", "open_pool"]

log = logging.getLogger(__name__)

# The first line of a migration that only the server's own database gets (the tenants table).
CONTROL_ONLY = "-- realtime-core: control database only\n"
# Any constant shared by all our processes; pg_advisory_xact_lock takes a bigint.
_MIGRATION_LOCK = 0x7265616C74696D65  # "realtime"


async def open_pool(dsn: str, *, min_size: int = 1, max_size: int = 5, timeout: float = 30) -> AsyncConnectionPool:
    """Open a pool to `dsn` and wait up to `timeout` seconds until one connection works
    (raises on failure, the pool closed)."""
    pool = AsyncConnectionPool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        open=False,
        kwargs={"autocommit": True, "application_name": "realtime_core"},
        name="realtime_core",
    )
    try:
        await pool.open(wait=True, timeout=timeout)
    except BaseException:
        await pool.close()  # else it keeps reconnecting in the background
        raise
    return pool


def _migration_files() -> list[tuple[str, str]]:
    folder = resources.files("realtime_core") / "sql"
    names = sorted(p.name for p in folder.iterdir() if p.name.endswith(".sql"))
    return [(name.removesuffix(".sql"), (folder / name).read_text()) for name in names]


def _control_only(sql: str) -> bool:
    return sql.startswith(CONTROL_ONLY)


async def migrate(conn: psycopg.AsyncConnection, *, control: bool = True) -> list[str]:
    """Apply the migrations `conn`'s database lacks; return the versions applied.

    `control` is True for the server's own database, which holds the tenants table; a
    tenant's database (control=False) gets every migration but those whose first line is
    CONTROL_ONLY."""
    applied: list[str] = []
    async with conn.transaction():
        await conn.execute("select pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
        await conn.execute("create schema if not exists _realtime")
        await conn.execute(
            "create table if not exists _realtime.schema_migrations"
            " (version text primary key, inserted_at timestamptz not null default now())"
        )
        cur = await conn.execute("select version from _realtime.schema_migrations")
        done = {row[0] for row in await cur.fetchall()}
        for version, sql in _migration_files():
            if version in done or (not control and _control_only(sql)):
                continue
            log.info("applying migration %s", version)
            await conn.execute(sql)  # type: ignore[arg-type]  # trusted file from the package
            await conn.execute("insert into _realtime.schema_migrations (version) values (%s)", (version,))
            applied.append(version)
    return applied
