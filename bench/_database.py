"""The database a benchmark runs against: an embedded PostgreSQL, or one of its own inside DATABASE_URL.

bench/_harness.py calls Database.start() before it starts the server on
`dsn`, and stop() at the end, whatever happened: that drops the bench's
database and replication slot from a DATABASE_URL cluster, or stops the
embedded PostgreSQL (whose folder goes with the bench's temporary one)."""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from bench._proc import ProcessTree, Snapshot
from bench._servers import BenchError

__all__ = ["Database"]


class Database:
    """A database of the bench's own: in an embedded PostgreSQL, or inside DATABASE_URL."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.embedded: Any = None  # realtime_core.embedded_pg.EmbeddedPostgres, once started
        self.admin_dsn = ""
        self.dsn = ""
        self.name = f"rt_bench_{secrets.token_hex(4)}"

    @property
    def pg_pid(self) -> int | None:
        """The embedded postmaster's pid (None with DATABASE_URL: its CPU is not measured)."""
        return self.embedded.pid if self.embedded is not None else None

    def start(self) -> None:
        """Start the embedded PostgreSQL unless DATABASE_URL is set, then create the bench's database."""
        url = os.environ.get("DATABASE_URL")
        if url:
            self.admin_dsn = url
        else:
            from realtime_core.embedded_pg import EmbeddedPostgres

            self.embedded = EmbeddedPostgres(self.work / "pg")
            self.admin_dsn = self.embedded.start()
        with psycopg.connect(self.admin_dsn, autocommit=True) as conn:
            row = conn.execute("show wal_level").fetchone()
            if row is None or row[0] != "logical":
                raise BenchError(f"PostgreSQL at DATABASE_URL has wal_level={row and row[0]}; it must be logical")
            conn.execute(sql.SQL("create database {}").format(sql.Identifier(self.name)))
        params = conninfo_to_dict(self.admin_dsn)
        params["dbname"] = self.name
        self.dsn = make_conninfo(**params)

    def version(self) -> str:
        with psycopg.connect(self.dsn) as conn:
            row = conn.execute("show server_version").fetchone()
        return str(row[0]) if row else "?"

    def pin_to(self, cpu: int) -> int:
        """Move the embedded PostgreSQL (postmaster and every backend) to `cpu`; return how many processes moved.

        Backends forked later inherit the postmaster's affinity."""
        if self.pg_pid is None:
            return 0
        moved = 0
        snap = Snapshot.take()
        for pid in ProcessTree(self.pg_pid).members(snap.procs):
            with contextlib.suppress(OSError):
                os.sched_setaffinity(pid, {cpu})
                moved += 1
        return moved

    def stop(self) -> None:
        """Drop the slot and the database (a durable slot retains WAL forever), or stop PostgreSQL."""
        if self.embedded is not None:
            self.embedded.stop()
            return
        if not self.dsn:
            return
        with contextlib.suppress(psycopg.Error), psycopg.connect(self.admin_dsn, autocommit=True) as conn:
            conn.execute(
                "select pg_drop_replication_slot(slot_name) from pg_replication_slots where database = %s",
                (self.name,),
            )
            conn.execute(sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(self.name)))
