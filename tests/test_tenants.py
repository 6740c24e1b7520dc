"""Tests for realtime_core.tenants: tenant resolution from the Host header (docs/protocol.md §1.3) and the
payload limit of docs/protocol.md §4.1. TenantStore needs PostgreSQL and is covered by the server tests."""

from __future__ import annotations

import pytest

from realtime_core.config import Limits
from realtime_core.errors import TenantNotFound
from realtime_core.jwt import KeySet
from realtime_core.tenants import MissingHost, Tenant, TenantRegistry, external_id_from_host


def make_tenant(external_id: str, **limits: int) -> Tenant:
    return Tenant(
        id=f"id-{external_id}",
        external_id=external_id,
        name=external_id,
        limits=Limits(**limits),
        keys=KeySet(secret="secret"),
    )


class TestExternalIdFromHost:
    """docs/protocol.md §1.3: the host up to its first dot."""

    @pytest.mark.parametrize(
        ("host", "external_id"),
        [
            ("foo.supabase.co", "foo"),
            ("foo.supabase.co:443", "foo"),
            ("realtime-dev.supabase-realtime", "realtime-dev"),
            ("realtime-dev.supabase-realtime:4000", "realtime-dev"),
            ("localhost", "localhost"),
            ("localhost:4000", "localhost"),
            ("127.0.0.1", "127"),
            ("127.0.0.1:4000", "127"),
            ("[::1]:4000", "::1"),
            ("[::1]", "::1"),
            ("tenant", "tenant"),
        ],
    )
    def test_host_to_external_id(self, host, external_id):
        assert external_id_from_host(host) == external_id

    @pytest.mark.parametrize("host", [None, ""])
    def test_no_host_gives_an_empty_id(self, host):
        assert external_id_from_host(host) == ""


class TestRegistry:
    """Resolution by Host with several tenants; `realtime-dev` is the default (self-host) tenant."""

    @staticmethod
    def registry() -> TenantRegistry:
        return TenantRegistry([make_tenant("realtime-dev"), make_tenant("foo"), make_tenant("bar")], "realtime-dev")

    def test_resolve_finds_the_tenant_of_the_host(self):
        assert self.registry().resolve("bar.supabase.co").external_id == "bar"
        assert self.registry().resolve("foo.localhost:4000").external_id == "foo"

    @pytest.mark.parametrize(
        "host",
        [
            "localhost",
            "localhost:4000",
            "LOCALHOST.",
            "127.0.0.1",
            "127.0.0.1:4000",
            "10.1.2.3:80",
            "[::1]",
            "[::1]:4000",
            "::1",
            "[fe80::1%eth0]:4000",
        ],
    )
    def test_localhost_and_ip_literals_reach_the_default_tenant(self, host):
        assert self.registry().resolve(host).external_id == "realtime-dev"

    @pytest.mark.parametrize("host", ["nosuch.localhost", "nosuch.example.com:443", "127.0.0.1.nip.io", "foo-x"])
    def test_a_host_naming_no_tenant_is_tenant_not_found(self, host):
        with pytest.raises(TenantNotFound):
            self.registry().resolve(host)

    @pytest.mark.parametrize("host", [None, "", "  "])
    def test_a_missing_host_is_missing_host(self, host):
        with pytest.raises(MissingHost, match="Host header is missing"):
            self.registry().resolve(host)

    def test_the_only_tenant_serves_every_host(self):
        registry = TenantRegistry([make_tenant("realtime-dev")], "realtime-dev")
        for host in ("localhost:4000", "127.0.0.1", "other.example.com"):
            assert registry.resolve(host).external_id == "realtime-dev", host
        with pytest.raises(MissingHost):
            registry.resolve(None)

    def test_without_the_default_tenant_local_hosts_name_no_tenant(self):
        registry = TenantRegistry([make_tenant("foo"), make_tenant("bar")], "realtime-dev")
        with pytest.raises(TenantNotFound):
            registry.resolve("localhost:4000")

    def test_an_empty_registry_resolves_nothing(self):
        with pytest.raises(TenantNotFound):
            TenantRegistry().resolve("foo.supabase.co")

    def test_put_get_remove(self):
        registry = TenantRegistry()
        tenant = make_tenant("foo")
        registry.put(tenant)
        assert registry.get("foo") is tenant
        assert len(registry) == 1
        assert list(registry) == [tenant]
        assert registry.remove("foo") is tenant
        assert registry.get("foo") is None
        assert registry.remove("foo") is None

    def test_put_replaces_a_tenant_with_the_same_external_id(self):
        registry = TenantRegistry([make_tenant("foo")])
        newer = make_tenant("foo")
        registry.put(newer)
        assert registry.get("foo") is newer
        assert len(registry) == 1

    def test_iterating_while_removing_is_safe(self):
        registry = TenantRegistry([make_tenant("a"), make_tenant("b")])
        for tenant in registry:
            registry.remove(tenant.external_id)
        assert len(registry) == 0


class TestPayloadTooLarge:
    """docs/protocol.md §4.1: the payload must not exceed max_payload_size_in_kb * 1000 + 500 bytes."""

    @pytest.mark.parametrize(("kb", "limit"), [(1, 1_500), (3_000, 3_000_500), (0, 500)])
    def test_boundary(self, kb, limit):
        tenant = make_tenant("foo", max_payload_size_in_kb=kb)
        assert not tenant.payload_too_large(limit)
        assert tenant.payload_too_large(limit + 1)

    def test_an_empty_payload_is_never_too_large(self):
        assert not make_tenant("foo").payload_too_large(0)


class TestFromRow:
    """Rows of `_realtime.tenants` as TenantStore reads them."""

    ROW = {
        "id": 7,
        "external_id": "foo",
        "name": None,
        "jwt_secret": "s3cret",
        "jwt_jwks": '{"keys": []}',
        "max_events_per_second": 10,
        "max_joins_per_second": None,
        "private_only": True,
        "suspend": None,
        "presence_enabled": False,
    }

    def test_null_limits_take_the_plans(self):
        from realtime_core.plans import PLANS

        tenant = Tenant.from_row({**self.ROW, "plan": "team"}, now=0.0)
        assert tenant.limits.max_events_per_second == 10
        assert tenant.limits.max_joins_per_second == PLANS["team"].limits.max_joins_per_second == 2_500

    def test_fields(self):
        tenant = Tenant.from_row(self.ROW, now=0.0)
        assert (tenant.id, tenant.external_id, tenant.name) == ("7", "foo", "foo")
        assert (tenant.private_only, tenant.suspend, tenant.presence_enabled) == (True, False, False)
        assert tenant.keys.secret == "s3cret"
        assert tenant.keys.jwks == {"keys": []}
        assert tenant.users == 0


@pytest.mark.pg
class TestTenantStore:
    """The default tenant in _realtime.tenants: created once, env-named limits applied at every start."""

    async def test_env_limits_win_at_every_start_and_others_only_seed_a_new_tenant(self, fresh_database):
        import psycopg

        from realtime_core import db
        from realtime_core.config import Settings
        from realtime_core.tenants import TenantStore

        async with await psycopg.AsyncConnection.connect(fresh_database, autocommit=True) as conn:
            await db.migrate(conn)
            store = TenantStore(conn)
            first = Settings.from_env({"TENANT_MAX_EVENTS_PER_SECOND": "50", "TENANT_MAX_CHANNELS_PER_CLIENT": "7"})
            await store.ensure_default(first, "secret-1")
            # An operator lowers the joins limit by hand; the env does not name it.
            await conn.execute("update _realtime.tenants set max_joins_per_second = 3")
            second = Settings.from_env({"TENANT_MAX_EVENTS_PER_SECOND": "60"})
            await store.ensure_default(second, "secret-2")
            [tenant] = await store.load_all(0.0)
        assert tenant.external_id == "realtime-dev"
        assert tenant.limits.max_events_per_second == 60  # named again: updated
        assert tenant.limits.max_channels_per_client == 7  # not named any more: kept
        assert tenant.limits.max_joins_per_second == 3  # the operator's change stays
        assert tenant.keys.secret == "secret-2"


def test_plan_names_in_config_are_the_plans() -> None:
    from realtime_core.config import PLAN_NAMES
    from realtime_core.plans import PLANS

    assert tuple(PLANS) == PLAN_NAMES


def test_a_tenant_takes_the_limits_it_does_not_set_from_its_plan() -> None:
    from realtime_core.plans import PLANS

    row = {"id": "1", "external_id": "t", "jwt_secret": "s", "plan": "free", "max_events_per_second": 7}
    tenant = Tenant.from_row(row, 0.0)
    assert tenant.plan is PLANS["free"]
    assert tenant.explicit_limits == {"max_events_per_second": 7}
    assert tenant.limits.max_events_per_second == 7
    assert tenant.limits.max_concurrent_users == PLANS["free"].limits.max_concurrent_users == 200
    assert tenant.limits.max_payload_size_in_kb == 256


def test_an_enterprise_tenant_prices_from_its_own_fields_and_team_otherwise() -> None:
    row = {"id": "1", "external_id": "t", "jwt_secret": "s", "plan": "enterprise", "included_messages": 50_000_000}
    plan = Tenant.from_row(row, 0.0).plan
    assert (plan.included_messages, plan.included_peak_connections, plan.base_fee_usd) == (50_000_000, 500, 599.0)
    pro = Tenant.from_row({**row, "plan": "pro"}, 0.0).plan
    assert pro.included_messages == 5_000_000  # custom fields shape enterprise only
