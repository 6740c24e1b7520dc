"""Secrets at rest (tenants.TenantStore with a secret_box.SecretBox, app.App.start): tenants'
`jwt_secret` and `db_password` are sealed in the control table, rows written in plain text are
sealed at start, and a wrong DB_ENC_KEY stops the server at start with a message naming it."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from typing import Any

import psycopg
import pytest
from conftest import BASE_ENV, JWT_SECRET, ROOT, scratch_database, start_server
from psycopg.rows import dict_row
from test_tenant_services import cdc_rls

from realtime_core import db
from realtime_core.secret_box import PREFIX, SecretBox, SecretBoxError
from realtime_core.tenants import TenantStore

pytestmark = pytest.mark.pg

KEY = "test-db-enc-key-" + "k" * 32
SECRET_B = "tenant-b-secret-" + "c" * 40
PASSWORD = "db-password-" + "q" * 30
EXTENSIONS = [
    {
        "type": "postgres_cdc_rls",
        "settings": {
            "region": "local",
            "db_host": "127.0.0.1",
            "db_port": "1",
            "db_name": "nowhere",
            "db_user": "postgres",
            "db_password": PASSWORD,
        },
    }
]


def raw(dsn: str, external_id: str) -> dict[str, Any]:
    with psycopg.connect(dsn) as conn, conn.cursor(row_factory=dict_row) as cur:
        cur.execute("select jwt_secret, extensions from _realtime.tenants where external_id = %s", (external_id,))
        row = cur.fetchone()
    assert row is not None
    return row


async def store_call(dsn: str, box: SecretBox | None, method: str, *args: Any) -> Any:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await db.migrate(conn)
        return await getattr(TenantStore(conn, box), method)(*args)


async def test_a_store_with_a_box_writes_sealed_and_reads_plain(fresh_database):
    box = SecretBox(KEY)
    await store_call(fresh_database, box, "create", "tenantb", SECRET_B, None, EXTENSIONS)
    row = raw(fresh_database, "tenantb")
    assert row["jwt_secret"].startswith(PREFIX) and SECRET_B not in str(row)
    assert row["extensions"][0]["settings"]["db_password"].startswith(PREFIX) and PASSWORD not in str(row)
    tenant = await store_call(fresh_database, box, "get", "tenantb", 0.0)
    assert tenant.keys.secret == SECRET_B
    assert tenant.extension("postgres_cdc_rls")["db_password"] == PASSWORD
    with pytest.raises(SecretBoxError):
        await store_call(fresh_database, SecretBox("another-key-" + "x" * 32), "get", "tenantb", 0.0)


async def test_sealing_plaintext_rows_is_idempotent_and_checks_the_key_first(fresh_database):
    await store_call(fresh_database, None, "create", "tenantb", SECRET_B, None, EXTENSIONS)
    assert raw(fresh_database, "tenantb")["jwt_secret"] == SECRET_B  # written without a box
    box = SecretBox(KEY)
    assert await store_call(fresh_database, box, "seal_plaintext") == ["tenantb"]
    sealed = raw(fresh_database, "tenantb")
    assert sealed["jwt_secret"].startswith(PREFIX)
    assert await store_call(fresh_database, box, "seal_plaintext") == []
    assert raw(fresh_database, "tenantb") == sealed
    with pytest.raises(SecretBoxError):
        await store_call(fresh_database, SecretBox("wrong-" + "w" * 32), "seal_plaintext")
    assert raw(fresh_database, "tenantb") == sealed


def test_the_server_seals_plaintext_rows_at_start_and_a_wrong_key_stops_it_with_a_clear_message(pg_dsn):
    with scratch_database(pg_dsn) as dsn, scratch_database(pg_dsn) as dsn_b:
        # Tenant B's database is reachable (the server waits for every tenant's services at start).
        extensions = cdc_rls(dsn_b, db_password=PASSWORD)  # trust authentication: any password
        asyncio.run(store_call(dsn, None, "create", "tenantb", SECRET_B, None, extensions))
        server = start_server(dsn, {"DB_ENC_KEY": KEY})
        try:
            for external_id in ("tenantb", "realtime-dev"):
                row = raw(dsn, external_id)
                assert row["jwt_secret"].startswith(PREFIX), external_id
                assert JWT_SECRET not in str(row) and SECRET_B not in str(row)
            assert raw(dsn, "tenantb")["extensions"][0]["settings"]["db_password"].startswith(PREFIX)
        finally:
            server.stop()
            server.drop_slots()
        log = server.log()
        assert SECRET_B not in log and PASSWORD not in log and JWT_SECRET not in log

        env = {**os.environ, **BASE_ENV, "DATABASE_URL": dsn, "DB_ENC_KEY": "not-the-key-" + "n" * 32}
        env["REALTIME_JWT_SECRET"] = JWT_SECRET
        done = subprocess.run(
            [sys.executable, "-m", "realtime_core", "serve", "--port", "0"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode != 0
        assert "DB_ENC_KEY does not open the tenant secrets" in done.stderr
        assert "Traceback" not in done.stderr and "Traceback" not in done.stdout
