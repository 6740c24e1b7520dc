"""Tests for realtime_core.tenant_services: where a tenant's database is, its replication slot
names, and its services' start/stop/reload/stats; and App's run-time add/update/remove of tenants."""

from __future__ import annotations

import asyncio
import dataclasses
import re
import secrets
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from conftest import scratch_database
from fakes import Client, make_token, settle
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from realtime_core import tenant_services
from realtime_core.app import DISCONNECT_TEXT, App
from realtime_core.authorization import Authorizer
from realtime_core.broker import Broker, InProcessBroker
from realtime_core.config import Limits, Settings
from realtime_core.hub import Hub
from realtime_core.incidents import Incidents
from realtime_core.jwt import KeySet
from realtime_core.postgres_changes.settings import CdcSettings
from realtime_core.tenant_services import Cluster, TenantDatabase, TenantServices, slot_names
from realtime_core.tenants import Tenant, TenantStore

SECRET = "tenant-services-secret-" + "x" * 32
SLOT_NAME = re.compile(r"[a-z0-9_]{1,63}\Z")


def tenant(external_id: str, extensions: list[dict[str, Any]] | None = None) -> Tenant:
    return Tenant(
        id=f"id-{external_id}",
        external_id=external_id,
        name=external_id,
        limits=Limits(),
        keys=KeySet(secret=SECRET),
        extensions=extensions or [],
    )


def cdc_rls(dsn: str, **extra: Any) -> list[dict[str, Any]]:
    """An upstream-shaped extension list naming the database of `dsn` (db_port a string)."""
    params = conninfo_to_dict(dsn)
    settings = {
        "db_host": params.get("host", "127.0.0.1"),
        "db_port": str(params.get("port", "5432")),
        "db_name": params["dbname"],
        "db_user": params.get("user", "postgres"),
        "db_password": params.get("password") or "unused-with-trust-auth",
        "region": "local",
        "ssl_enforced": False,
        **extra,
    }
    return [{"type": "postgres_cdc_rls", "settings": settings}]


class TestSlotNames:
    def test_the_default_tenant_keeps_the_names_existing_installs_have(self):
        assert slot_names(CdcSettings(), "realtime-dev", is_default=True) == (
            "supabase_realtime_replication_slot",
            "supabase_realtime_messages_replication_slot",
        )
        assert slot_names(CdcSettings(slot_name_suffix="db1"), "realtime-dev", is_default=True) == (
            "supabase_realtime_replication_slot_db1",
            "supabase_realtime_messages_replication_slot_db1",
        )

    def test_other_tenants_get_names_of_their_own(self):
        assert slot_names(CdcSettings(), "tenantb", is_default=False) == (
            "supabase_realtime_replication_slot_tenantb",
            "supabase_realtime_messages_replication_slot_tenantb",
        )

    def test_slot_name_suffix_still_applies(self):
        changes, broadcast = slot_names(CdcSettings(slot_name_suffix="eu"), "ab", is_default=False)
        assert (changes, broadcast) == (
            "supabase_realtime_replication_slot_ab_eu",
            "supabase_realtime_messages_replication_slot_ab_eu",
        )

    def test_an_explicit_slot_name_is_used_as_upstream_does(self):
        settings = CdcSettings(slot_name_suffix="x")
        changes, broadcast = slot_names(settings, "tenantb", is_default=False, slot_name="my_slot")
        assert changes == "my_slot_x"
        assert broadcast == "supabase_realtime_messages_replication_slot_tenantb_x"
        assert slot_names(settings, "realtime-dev", is_default=True, slot_name="my_slot")[0] == "my_slot_x"

    @pytest.mark.parametrize(
        "ids",
        [
            ("a-b", "a_b", "A_b"),
            ("x" * 80, "x" * 81, "x" * 80 + "y"),
            ("tenant.one", "tenant_one", "tenant one"),
        ],
    )
    def test_names_are_valid_and_distinct_per_tenant(self, ids):
        settings = CdcSettings(slot_name_suffix="rt_test_0123456789ab")
        names = [slot_names(settings, external_id, is_default=False) for external_id in ids]
        flat = [name for pair in names for name in pair]
        assert all(SLOT_NAME.match(name) for name in flat), flat
        assert len(set(flat)) == len(flat), flat

    def test_a_tenant_never_takes_the_default_tenants_names(self):
        settings = CdcSettings()
        default = set(slot_names(settings, "realtime-dev", is_default=True))
        for external_id in ("realtime-dev", "", "x"):
            assert default.isdisjoint(slot_names(settings, external_id, is_default=False))


class TestTenantDatabase:
    def test_the_default_tenants_database_is_the_servers_own(self):
        found = TenantDatabase.of(
            tenant("realtime-dev", cdc_rls("host=db.example port=6543 dbname=other user=u password=p")),
            default_dsn="host=127.0.0.1 port=5432 dbname=main",
            is_default=True,
        )
        assert found is not None
        assert (found.dsn, found.description) == ("host=127.0.0.1 port=5432 dbname=main", "127.0.0.1:5432/main")

    def test_a_tenant_without_database_settings_has_no_database(self):
        assert TenantDatabase.of(tenant("b"), default_dsn="dbname=main", is_default=False) is None
        settings = cdc_rls("host=h port=1 dbname=d user=u password=p")[0]["settings"]
        del settings["db_password"]
        broken = [{"type": "postgres_cdc_rls", "settings": settings}]
        assert TenantDatabase.of(tenant("b", broken), default_dsn="dbname=main", is_default=False) is None

    def test_a_tenants_extension_names_its_database(self):
        ext = cdc_rls("host=db.example port=6543 dbname=other user=u password=s3cr3t-pw", ssl_enforced=True)
        ext[0]["settings"].update(slot_name="custom", publication="pub", poll_interval_ms=250)
        found = TenantDatabase.of(tenant("b", ext), default_dsn="dbname=main", is_default=False)
        assert found is not None
        assert conninfo_to_dict(found.dsn) == {
            "host": "db.example",
            "port": "6543",
            "dbname": "other",
            "user": "u",
            "password": "s3cr3t-pw",
            "sslmode": "require",
        }
        assert (found.slot_name, found.publication, found.poll_interval_ms) == ("custom", "pub", 250)
        assert "s3cr3t-pw" not in repr(found)  # no password in logs


@dataclasses.dataclass
class Host:
    """What TenantServices needs of the app."""

    settings: Settings
    hub: Hub = dataclasses.field(default_factory=Hub)
    incidents: Incidents = dataclasses.field(default_factory=Incidents)
    broker: Broker = dataclasses.field(init=False)
    cluster: Cluster | None = None  # one process: it leads

    def __post_init__(self) -> None:
        self.broker = InProcessBroker(self.hub)

    def now(self) -> float:
        return 0.0


async def slot_made(services: TenantServices) -> None:
    """Wait until Postgres Changes made its slot (start() does not wait for it; subscriptions do)."""
    assert services.cdc is not None
    await asyncio.wait_for(services.cdc.stream.ready.wait(), timeout=30)


def slots_of(dsn: str) -> set[str]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute("select slot_name from pg_replication_slots where database = current_database()")
        return {row[0] for row in rows.fetchall()}


def has_table(dsn: str, name: str) -> bool:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("select to_regclass(%s) is not null", (name,)).fetchone()
        return bool(row and row[0])


def has_realtime_schema(dsn: str) -> bool:
    return has_table(dsn, "realtime.messages")


@pytest.fixture
def two_databases(pg_dsn: str) -> Iterator[tuple[str, str]]:
    with scratch_database(pg_dsn) as first, scratch_database(pg_dsn) as second:
        yield first, second


@pytest.mark.pg
async def test_start_migrates_the_tenants_database_and_stop_can_drop_its_slots(two_databases):
    first, second = two_databases
    settings = Settings(database_url=first, cdc=CdcSettings(slot_name_suffix="svc"))
    host = Host(settings)
    b = tenant("tenantb", cdc_rls(second))
    database = TenantDatabase.of(b, default_dsn=first, is_default=False)
    assert database is not None
    services = TenantServices(host, b, database, is_default=False)
    assert services.stats()["running"] is False
    await services.start()
    try:
        await slot_made(services)
        assert has_realtime_schema(second) and not has_realtime_schema(first)
        # The realtime schema, publications and roles, but not the server's tenants table.
        assert services.migrations and "0006_tenant_extensions" not in services.migrations
        assert not has_table(second, "_realtime.tenants")
        expected = {
            "supabase_realtime_replication_slot_tenantb_svc",
            "supabase_realtime_messages_replication_slot_tenantb_svc",
        }
        assert slots_of(second) == expected
        stats = services.stats()
        assert stats["running"] is True and stats["starts"] == 1
        assert stats["database"].endswith("/" + conninfo_to_dict(second)["dbname"])
        assert set(stats["slots"].values()) == expected
        assert stats["postgres_changes"]["subscriptions"] == 0
        assert stats["db_broadcast"] == {"delivered": 0, "dropped": 0, "connected": True}
        assert stats["janitor"]["runs"] >= 0 and services.janitor is not None
        assert services.authorizer is not None and services.replication_connected
        # The same settings: nothing restarts.
        assert await services.reload(database) is False
        assert services.stats()["starts"] == 1
    finally:
        await services.stop(drop_slots=True)
    assert slots_of(second) == set()
    assert services.stats()["running"] is False
    assert (services.pool, services.authorizer, services.cdc, services.db_broadcast, services.janitor) == (None,) * 5


@pytest.mark.pg
async def test_reload_moves_the_services_to_a_new_database(two_databases):
    first, second = two_databases
    host = Host(Settings(database_url=first, cdc=CdcSettings(slot_name_suffix="mv")))
    b = tenant("tenantb", cdc_rls(first))
    services = TenantServices(host, b, TenantDatabase.of(b, default_dsn=None, is_default=False), is_default=False)  # type: ignore[arg-type]
    await services.start()
    try:
        await slot_made(services)
        assert len(slots_of(first)) == 2
        moved = TenantDatabase.of(tenant("tenantb", cdc_rls(second)), default_dsn=None, is_default=False)
        assert await services.reload(moved) is True
        await slot_made(services)
        assert services.database == moved and services.stats()["starts"] == 2
        assert len(slots_of(second)) == 2 and has_realtime_schema(second)
        assert slots_of(first) == set()  # left behind, they would retain WAL and hold the names
    finally:
        await services.stop()
    # A plain stop keeps the slots: the next start resumes from them.
    assert len(slots_of(second)) == 2


@pytest.mark.pg
async def test_a_failed_start_stops_what_it_started(two_databases, monkeypatch):
    first, second = two_databases
    host = Host(Settings(database_url=first, cdc=CdcSettings(slot_name_suffix="fail")))
    b = tenant("tenantb", cdc_rls(second))
    services = TenantServices(host, b, TenantDatabase.of(b, default_dsn=None, is_default=False), is_default=False)  # type: ignore[arg-type]
    opened: list[Any] = []

    class Failing(Authorizer):
        async def open(self) -> None:
            opened.append(services.pool)
            raise RuntimeError("authorizer down")

    monkeypatch.setattr(tenant_services, "Authorizer", Failing)
    with pytest.raises(RuntimeError, match="authorizer down"):
        await services.start()
    assert opened and opened[0] is not None and opened[0].closed  # the pool it had opened is closed
    assert services.pool is None and services.stats()["running"] is False and services.starts == 0


@pytest.fixture
async def app(two_databases) -> Any:
    first, _ = two_databases
    settings = Settings(
        database_url=first,
        port=0,
        jwt_secret=SECRET,
        channel_error_backoff_ms=0,
        cdc=CdcSettings(slot_name_suffix="app"),
    )
    app = App(settings)
    await app.start()
    try:
        yield app
    finally:
        await app.stop()


async def store(app: App) -> Any:
    assert app.pool is not None
    return app.pool.connection()


@pytest.mark.pg
async def test_tenants_are_added_updated_and_removed_at_run_time(app, two_databases):
    first, second = two_databases
    await slot_made(app.services["realtime-dev"])
    assert set(app.services) == {"realtime-dev"}
    assert slots_of(first) == {
        "supabase_realtime_replication_slot_app",
        "supabase_realtime_messages_replication_slot_app",
    }
    async with await store(app) as conn:
        await TenantStore(conn).create("tenantb", SECRET, extensions=cdc_rls(second))
    b = await app.add_tenant("tenantb")
    await slot_made(app.services["tenantb"])
    assert app.tenants.get("tenantb") is b and set(app.services) == {"realtime-dev", "tenantb"}
    assert app.cdc_for(b) is app.services["tenantb"].cdc is not None
    assert app.authorizer_for(b) is not app.authorizer_for(app.tenants.get("realtime-dev"))  # type: ignore[arg-type]
    assert slots_of(second) == {
        "supabase_realtime_replication_slot_tenantb_app",
        "supabase_realtime_messages_replication_slot_tenantb_app",
    }

    client = Client(app, token=make_token(secret=SECRET), tenant_id="tenantb")
    client.join("realtime:room", "1")
    await settle()
    assert client.received()[0][4]["status"] == "ok"

    # A change that does not touch the database or the keys keeps sockets and services.
    async with await store(app) as conn:
        await conn.execute("update _realtime.tenants set max_events_per_second = 7 where external_id = 'tenantb'")
    services = app.services["tenantb"]
    assert await app.update_tenant("tenantb") is b
    assert b.limits.max_events_per_second == 7
    assert client.conn.closed_with is None and app.services["tenantb"] is services and services.starts == 1

    # Moving its database restarts its services there and disconnects its sockets.
    async with await store(app) as conn:
        await TenantStore(conn).set_extensions("tenantb", cdc_rls(first))
    await app.update_tenant("tenantb")
    await slot_made(services)
    assert services.starts == 2 and services.database.description.endswith("/" + conninfo_to_dict(first)["dbname"])
    assert client.conn.closed_with == (1012, "")
    assert client.received() == [
        [
            "1",
            None,
            "realtime:room",
            "system",
            {"extension": "system", "status": "ok", "message": DISCONNECT_TEXT, "channel": "room"},
        ]
    ]
    assert "supabase_realtime_replication_slot_tenantb_app" in slots_of(first)

    # Removal: sockets drained, services stopped, slots dropped, the tenant unknown.
    client = Client(app, token=make_token(secret=SECRET), tenant_id="tenantb")
    client.join("realtime:room", "1")
    await settle()
    client.received()
    async with await store(app) as conn:
        assert await TenantStore(conn).delete("tenantb") is True
    assert await app.remove_tenant("tenantb") is True
    assert client.conn.closed_with == (1012, "")
    assert [m[4]["message"] for m in client.received()] == [DISCONNECT_TEXT]
    assert app.tenants.get("tenantb") is None and "tenantb" not in app.services
    assert slots_of(first) == {
        "supabase_realtime_replication_slot_app",
        "supabase_realtime_messages_replication_slot_app",
    }
    assert services.stats()["running"] is False
    assert await app.remove_tenant("tenantb") is False


@pytest.mark.pg
async def test_a_tenant_whose_database_is_unreachable_is_served_and_its_services_start_once_it_is_up(
    app, pg_dsn, monkeypatch
):
    monkeypatch.setattr(TenantServices, "open_timeout", 1.0)
    name = f"rt_late_{secrets.token_hex(6)}"
    params = conninfo_to_dict(pg_dsn)
    late_dsn = make_conninfo(**{**params, "dbname": name})
    async with await store(app) as conn:
        await TenantStore(conn).create("late", SECRET, extensions=cdc_rls(late_dsn))
    late = await app.add_tenant("late")
    assert app.tenants.get("late") is late and "late" not in app.services  # served, without services yet
    with psycopg.connect(pg_dsn, autocommit=True) as admin:
        admin.execute(sql.SQL("create database {}").format(sql.Identifier(name)))
    try:
        async with asyncio.timeout(30):
            while "late" not in app.services:
                await asyncio.sleep(0.1)
        assert app.authorizer_for(late) is not None and has_realtime_schema(late_dsn)
        assert await app.remove_tenant("late") is True
        assert slots_of(late_dsn) == set()
    finally:
        with psycopg.connect(pg_dsn, autocommit=True) as admin:
            admin.execute(sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name)))
