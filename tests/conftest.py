"""Shared fixtures: a real PostgreSQL, and `realtime-core serve` processes driven as users drive them.

PostgreSQL is the project's embedded one unless DATABASE_URL is set (then that
server is used; it must have wal_level=logical). Each server process gets a
fresh database of its own, so tests that change tenant settings or limits do
not see each other. Waits are multiples of MS and server timeouts go through
server_ms(), both scaled by REALTIME_TEST_TIMEOUT_FACTOR."""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt as pyjwt
import psycopg
import pytest
from fakes import close_sockets, make_app
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from realtime_core.app import App
from realtime_core.limits import BUCKET_SECONDS

ROOT = Path(__file__).resolve().parent.parent
FACTOR = float(os.environ.get("REALTIME_TEST_TIMEOUT_FACTOR", "1"))
MS = 0.001 * FACTOR
JWT_SECRET = "test-secret-" + "x" * 32
# API_JWT_SECRET of every test server: admin_token() signs with it.
ADMIN_SECRET = "admin-secret-" + "y" * 32

LOST_TASK = "Task exception was never retrieved"


def server_ms(ms: float) -> str:
    """A server setting of `ms` milliseconds for the environment, scaled by the same factor as the
    tests' waits (MS), so that a slow machine stretches the server's timers and the waits alike."""
    return str(round(ms * FACTOR))


# Rate limits average finished buckets of a fixed length (realtime_core.limits), which the factor
# does not change: a test that fills the first bucket waits for it to finish, and not much longer,
# since every further (empty) bucket lowers the average.
BUCKET_WAIT = BUCKET_SECONDS + 0.5

# Settings every test server gets unless a test overrides them: short error
# backoffs so that refused joins answer quickly.
BASE_ENV = {
    "CHANNEL_ERROR_BACKOFF_MS": server_ms(50),
    "CONNECT_ERROR_BACKOFF_MS": server_ms(50),
    "LOG_LEVEL": "info",
    "API_JWT_SECRET": ADMIN_SECRET,
    # Else every test server would generate and share one in the checkout's ./.realtime.
    "DB_ENC_KEY": "test-db-enc-key-" + "e" * 32,
}


def make_token(
    role: str | None = "anon", exp_in: float | None = 3600, secret: str = JWT_SECRET, **claims: object
) -> str:
    """An HS256 JWT for the test tenant; role/exp left out when None."""
    body: dict[str, object] = dict(claims)
    if role is not None:
        body["role"] = role
    if exp_in is not None:
        body["exp"] = int(time.time() + exp_in)
    return pyjwt.encode(body, secret, algorithm="HS256")


def admin_token(secret: str = ADMIN_SECRET, **claims: object) -> str:
    """An admin token (tenant API, /admin/v1): by default one that may read and write, no role, no exp."""
    return pyjwt.encode({"sub": "test-operator", "iat": int(time.time()), **claims}, secret, algorithm="HS256")


def admin_headers(**claims: object) -> dict[str, str]:
    """Authorization headers carrying admin_token(**claims)."""
    return {"Authorization": f"Bearer {admin_token(**claims)}"}


def published_table(
    db: psycopg.Connection[Any], columns: str, *, prefix: str = "t", grantees: str = "anon, authenticated"
) -> str:
    """Create a table of a fresh name `<prefix>_xxxxxxxx` with `columns` (trusted SQL text of the test),
    let `grantees` select from it and add it to the supabase_realtime publication; return its name."""
    name = f"{prefix}_{secrets.token_hex(4)}"
    db.execute(sql.SQL("create table {} (" + columns + ")").format(sql.Identifier(name)))
    db.execute(sql.SQL("grant select on {} to " + grantees).format(sql.Identifier(name)))
    db.execute(sql.SQL("alter publication supabase_realtime add table {}").format(sql.Identifier(name)))
    return name


def messages_policy(db: psycopg.Connection[Any], command: str, condition: str, role: str = "authenticated") -> None:
    """Create a policy of a fresh name on realtime.messages for `command` to `role`: `condition` is its
    `with check` for insert, its `using` otherwise (trusted SQL text of the test)."""
    clause = "with check" if command == "insert" else "using"
    statement = f"create policy {{}} on realtime.messages for {command} to {role} {clause} ({condition})"
    db.execute(sql.SQL(statement).format(sql.Identifier(f"pol_{secrets.token_hex(4)}")))


@pytest.fixture(scope="session")
def pg_dsn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A DSN to a PostgreSQL with wal_level=logical that tests may create databases in."""
    url = os.environ.get("DATABASE_URL")
    if url:
        yield url
        return
    from realtime_core.embedded_pg import EmbeddedPostgres

    pg = EmbeddedPostgres(tmp_path_factory.mktemp("pg"))
    try:
        yield pg.start()
    finally:
        pg.stop()


def _create_database(admin_dsn: str, prefix: str = "rt_test") -> str:
    """Create a database named `prefix` plus a unique suffix; return its DSN (admin_dsn's, other dbname)."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("create database {}").format(sql.Identifier(name)))
    params = conninfo_to_dict(admin_dsn)
    params["dbname"] = name
    return make_conninfo(**params)


@contextlib.contextmanager
def scratch_database(admin_dsn: str, prefix: str = "rt_test") -> Iterator[str]:
    """A fresh database (see _create_database) for the with block: yields its DSN, drops it with (force) on exit."""
    dsn = _create_database(admin_dsn, prefix)
    try:
        yield dsn
    finally:
        _drop_database(admin_dsn, dsn)


def _drop_database(admin_dsn: str, dsn: str) -> None:
    """Drop the database of `dsn`, and first its replication slots (they block the drop)."""
    name = conninfo_to_dict(dsn)["dbname"]
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(
            "select pg_drop_replication_slot(slot_name) from pg_replication_slots where database = %s and not active",
            (name,),
        )
        conn.execute(sql.SQL("drop database {} with (force)").format(sql.Identifier(name)))


@pytest.fixture
def fresh_database(pg_dsn: str) -> Iterator[str]:
    """The DSN of a database of the test's own, dropped after it."""
    with scratch_database(pg_dsn) as url:
        yield url


@dataclass
class ServerProcess:
    """A running `realtime-core serve`."""

    proc: subprocess.Popen[str]
    port: int
    database_url: str
    env: dict[str, str]
    output: list[str] = field(default_factory=list)
    reader: threading.Thread | None = None

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        """The endpoint the clients take (they append /websocket)."""
        return f"ws://127.0.0.1:{self.port}/socket"

    def socket_url(self, token: str | None = None, vsn: str | None = None) -> str:
        query = []
        if token is not None:
            query.append(f"apikey={token}")
        if vsn is not None:
            query.append(f"vsn={vsn}")
        return f"{self.ws_url}/websocket" + ("?" + "&".join(query) if query else "")

    def log(self) -> str:
        return "".join(self.output)

    def lost_task_errors(self) -> list[str]:
        """asyncio's report of a task whose exception nobody retrieved: each is a bug
        (the server must log a task's failure itself and answer the client)."""
        return [line for line in self.output if LOST_TASK in line]

    def stop(self, sig: int = signal.SIGINT, timeout: float = 10_000 * MS) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.reader is not None:
            self.reader.join(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        return self.proc.returncode

    def drop_slots(self) -> None:
        """Drop this database's replication slots: a durable slot retains WAL forever."""
        with contextlib.suppress(psycopg.Error), psycopg.connect(self.database_url, autocommit=True) as conn:
            conn.execute(
                "select pg_drop_replication_slot(slot_name) from pg_replication_slots"
                " where database = current_database() and not active"
            )


def start_server(database_url: str, env: dict[str, str] | None = None, timeout: float = 30_000 * MS) -> ServerProcess:
    """Start `realtime-core serve --port 0` and wait for its "listening on" line."""
    dbname = conninfo_to_dict(database_url).get("dbname", "postgres")
    full_env = {
        **os.environ,
        **BASE_ENV,
        # Slot names are cluster-wide: one per database.
        "SLOT_NAME_SUFFIX": str(dbname),
        "DATABASE_URL": database_url,
        "REALTIME_JWT_SECRET": JWT_SECRET,
        "PYTHONUNBUFFERED": "1",
        **(env or {}),
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "realtime_core", "serve", "--port", "0"],
        cwd=ROOT,
        env=full_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    output: list[str] = []
    found = threading.Event()
    port: list[int] = []

    def drain() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            output.append(line)
            m = re.search(r"listening on http://[\d.]+:(\d+)", line)
            if m and not port:
                port.append(int(m.group(1)))
                found.set()
        found.set()

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    if not found.wait(timeout) or not port:
        proc.kill()
        proc.wait()
        reader.join(5)
        if proc.stdout is not None:
            proc.stdout.close()
        raise RuntimeError("server did not start:\n" + "".join(output))
    return ServerProcess(proc, port[0], database_url, full_env, output, reader)


@contextlib.contextmanager
def serving(admin_dsn: str, env: dict[str, str] | None = None) -> Iterator[ServerProcess]:
    """A server on a fresh database for the with block; stopped and its replication slots dropped on exit."""
    with scratch_database(admin_dsn) as url:
        server = start_server(url, env)
        try:
            yield server
        finally:
            server.stop()
        assert not server.lost_task_errors(), server.log()


@pytest.fixture(scope="session")
def server(pg_dsn: str) -> Iterator[ServerProcess]:
    """One server for the tests that need no special settings."""
    with serving(pg_dsn) as srv:
        yield srv


@pytest.fixture
def server_factory(pg_dsn: str) -> Iterator[object]:
    """Start servers with extra environment (limits, timeouts), each on a fresh database."""
    started: list[tuple[ServerProcess, bool]] = []

    def factory(env: dict[str, str] | None = None, database_url: str | None = None) -> ServerProcess:
        srv = start_server(database_url or _create_database(pg_dsn), env)
        started.append((srv, database_url is None))
        return srv

    yield factory
    for srv, own_database in started:
        with contextlib.suppress(Exception):
            srv.stop()
            if own_database:
                _drop_database(pg_dsn, srv.database_url)
            else:
                srv.drop_slots()
    for srv, _ in started:
        assert not srv.lost_task_errors(), srv.log()


CDC_ENV = {"REALTIME_POSTGRES_CHANGES": "true"}


@pytest.fixture(scope="module")
def cdc(pg_dsn: str) -> Iterator[ServerProcess]:
    """A server streaming Postgres Changes from a database of its own (one per test module)."""
    with serving(pg_dsn, CDC_ENV) as server:
        yield server


@pytest.fixture(scope="module")
def db(cdc: ServerProcess) -> Iterator[psycopg.Connection[Any]]:
    """An autocommit connection to the `cdc` server's database."""
    with psycopg.connect(cdc.database_url, autocommit=True) as conn:
        yield conn


@pytest.fixture
async def app() -> AsyncIterator[App]:
    """An App serving the test tenant, never start()ed (fakes.make_app); the sockets it still
    holds are closed after the test. Modules that need other settings define their own."""
    app = make_app()
    yield app
    close_sockets(app)


@pytest.fixture
def token() -> str:
    return make_token()


@pytest.fixture
def topic() -> str:
    """A topic no other test uses."""
    return f"room-{secrets.token_hex(4)}"
