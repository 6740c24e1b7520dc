"""Queries that fail without aborting the caller's transaction."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg import sql

__all__ = ["run_isolated"]


async def run_isolated(conn: psycopg.AsyncConnection[Any], query: sql.Composable, params: Sequence[Any]) -> list[Any]:
    """Execute without poisoning the caller's transaction when the query fails."""
    if conn.autocommit and conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE:
        cur = await conn.execute(query, params)
        return await cur.fetchall()
    async with conn.transaction():
        cur = await conn.execute(query, params)
        return await cur.fetchall()
