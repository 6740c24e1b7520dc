"""Egress in the bills of a running server (realtime_core/admin/usage_api.py): a tenant's and an
organisation's current cycle bill their metered egress bytes, the organisation's summed and its
included bytes counted once; the projection runs the window's byte rate to the cycle's end."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal

import httpx
import psycopg
import pytest
from conftest import admin_headers, make_token, scratch_database, start_server
from wire import V2, RawClient

pytestmark = pytest.mark.pg

TENANT = "realtime-dev"
GB = 10**9
# No flush during the test: what the bills show is what the test stored (the server's own
# unflushed bytes, none here without sockets, would be added live).
ENV = {"REALTIME_USAGE_FLUSH_INTERVAL_MS": "60000"}


def cents(value: Decimal) -> float:
    return float(value.quantize(Decimal("0.01"), rounding=ROUND_HALF_UP))


def store(dsn: str, rows: list[tuple[str, int]]) -> None:
    """Egress bytes of this hour for each (tenant, bytes), split over two kinds."""
    now = datetime.now(UTC)
    with psycopg.connect(dsn, autocommit=True) as conn:
        for tenant, size in rows:
            for kind, part in (("broadcast", size // 2), ("protocol", size - size // 2)):
                conn.execute(
                    "insert into _realtime.usage_egress values (%s, %s, %s, %s, %s)",
                    (tenant, now.date(), now.hour, kind, part),
                )


def test_a_tenant_bill_has_its_egress(pg_dsn: str) -> None:
    with scratch_database(pg_dsn) as dsn:
        server = start_server(dsn, ENV)
        server.stop()
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("update _realtime.tenants set plan = 'pro'")
        store(dsn, [(TENANT, 260 * GB + 1)])
        server = start_server(dsn, ENV)
        try:
            answer = httpx.get(f"{server.http_url}/admin/v1/tenants/{TENANT}/bill", headers=admin_headers())
            assert answer.status_code == 200, answer.text
            bill = answer.json()
        finally:
            server.stop()
    assert bill["quota"]["egress"] == {"used": 260 * GB + 1, "included": 250 * GB, "percent": 104.0}
    line = bill["so_far"]["lines"][2]
    assert (line["item"], line["used"], line["overage"], line["usd"]) == ("egress", 260 * GB + 1, 10 * GB + 1, 0.9)
    assert "Realtime share" in bill["so_far"]["notes"][0]
    # The stored hour is in the window: its byte rate carries on to the end of the cycle.
    assert bill["window"]["egress_bytes"] == 260 * GB + 1
    projected = bill["projected"]["lines"][2]
    assert projected["used"] > 260 * GB + 1
    assert projected["usd"] == cents(Decimal(projected["used"] - 250 * GB) * Decimal("0.09") / GB)


def test_an_organisation_sums_egress_and_includes_it_once(pg_dsn: str) -> None:
    with scratch_database(pg_dsn) as dsn:
        server = start_server(dsn, ENV)
        server.stop()
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(
                "insert into _realtime.tenants (external_id, name, jwt_secret, plan)"
                " values ('second', 'second', 'x', 'pro')"
            )
            conn.execute("update _realtime.tenants set organization = 'acme', plan = 'pro'")
        store(dsn, [(TENANT, 200 * GB), ("second", 200 * GB)])
        server = start_server(dsn, ENV)
        try:
            answer = httpx.get(f"{server.http_url}/admin/v1/organizations/acme/bill", headers=admin_headers())
            assert answer.status_code == 200, answer.text
            bill = answer.json()
        finally:
            server.stop()
    assert sorted((t["tenant"], t["egress_bytes"]) for t in bill["tenants"]) == [
        (TENANT, 200 * GB),
        ("second", 200 * GB),
    ]
    assert all(t["projected_egress_bytes"] >= t["egress_bytes"] for t in bill["tenants"])
    # Each tenant is under Pro's 250 GB, together they are 150 GB past it: 150 × $0.09.
    assert bill["quota"]["egress"] == {"used": 400 * GB, "included": 250 * GB, "percent": 160.0}
    line = bill["so_far"]["lines"][2]
    assert (line["used"], line["included"], line["overage"], line["usd"]) == (400 * GB, 250 * GB, 150 * GB, 13.5)
    assert bill["so_far"]["total_usd"] == 13.5 and bill["so_far"]["base_fee_usd"] == 25.0
    assert bill["window"]["egress_bytes"] == 400 * GB


def test_an_enterprise_tenant_sets_its_own_egress_figures(pg_dsn: str) -> None:
    """The tenant API stores included_egress_bytes and egress_usd_per_gb (migration 0011, read back
    from a numeric column) and the bill prices with them; out-of-range values are 422s naming them."""
    with scratch_database(pg_dsn) as dsn:
        server = start_server(dsn, ENV)
        try:
            with httpx.Client(base_url=server.http_url, headers=admin_headers()) as api:
                fields = {"plan": "enterprise", "included_egress_bytes": 10 * GB, "egress_usd_per_gb": 0.05}
                body = {"tenant": {"external_id": "ent", "name": "ent", "jwt_secret": "s" * 32, **fields}}
                created = api.post("/api/tenants", json=body)
                assert created.status_code == 201, created.text
                assert {k: created.json()["data"][k] for k in fields} == fields
                store(dsn, [("ent", 30 * GB)])
                bill = api.get("/admin/v1/tenants/ent/bill").json()
                for field, value in (("egress_usd_per_gb", -0.01), ("included_egress_bytes", 10**19)):
                    refused = api.patch("/admin/v1/tenants/ent/settings", json={field: value})
                    assert (refused.status_code, list(refused.json()["errors"])) == (422, [field])
                kept = api.get("/api/tenants/ent").json()["data"]
        finally:
            server.stop()
    assert bill["quota"]["egress"]["included"] == 10 * GB
    line = bill["so_far"]["lines"][2]
    assert (line["overage"], line["package_usd"], line["usd"]) == (20 * GB, 0.05, 1.0)
    assert {k: kept[k] for k in fields} == fields  # nothing lost to the refused changes


async def test_the_bill_counts_the_bytes_just_sent(pg_dsn: str) -> None:
    """Live: the bytes a socket was just sent (not yet flushed) are in the tenant's bill."""
    with scratch_database(pg_dsn) as dsn:
        server = start_server(dsn, ENV)
        try:
            url = f"{server.http_url}/admin/v1/tenants/{TENANT}/bill"
            before = httpx.get(url, headers=admin_headers()).json()["quota"]["egress"]["used"]
            async with await RawClient.open(server.socket_url(make_token(), V2)) as client:
                await client.join("realtime:billed")
                for _ in range(3):
                    await client.heartbeat()
                bill = httpx.get(url, headers=admin_headers()).json()
        finally:
            server.stop()
    used = bill["quota"]["egress"]["used"]
    # at least the 101 answer, the join's reply and three heartbeat replies
    assert used - before > 5 * len('[null,"1","phoenix","phx_reply",{"status":"ok","response":{}}]')
    assert bill["so_far"]["lines"][2]["used"] == used == bill["window"]["egress_bytes"]


def test_a_bill_too_large_to_give_to_the_cent_is_a_422_on_the_plan(pg_dsn: str) -> None:
    """A JSON number holds about 15 digits: custom prices that make a bill longer than that to the
    cent get a clear refusal naming the plan and the item, never an amount silently rounded."""
    with scratch_database(pg_dsn) as dsn:
        server = start_server(dsn, ENV)
        try:
            with httpx.Client(base_url=server.http_url, headers=admin_headers()) as api:
                fields = {"plan": "enterprise", "included_egress_bytes": 0, "egress_usd_per_gb": 999_999_999.99}
                body = {"tenant": {"external_id": "ent", "name": "ent", "jwt_secret": "s" * 32, **fields}}
                assert api.post("/api/tenants", json=body).status_code == 201
                store(dsn, [("ent", 10**18 + 2)])  # $999,999,999,990,000,000.99… to the cent
                answer = api.get("/admin/v1/tenants/ent/bill")
        finally:
            server.stop()
    assert answer.status_code == 422, answer.text
    assert answer.json() == {
        "errors": {"plan": ["egress: this bill is too large to give to the cent as a JSON number"]}
    }
