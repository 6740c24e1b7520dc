"""The pricing endpoints of a running server (realtime_core/admin/pricing_api.py):
`POST /admin/v1/pricing/bill` and `POST /admin/v1/pricing/estimate` answer the issue's
examples exactly, may be called with a read-only token, record nothing, and refuse bad input
with a 422 naming the field."""

from __future__ import annotations

from typing import Any

import httpx
import orjson
import pytest
import schemathesis
from conftest import admin_headers
from hypothesis import HealthCheck, settings
from pricing_examples import ESTIMATE_INPUTS, PRO_BILL
from schemathesis.specs.openapi.checks import (
    missing_required_header,
    positive_data_acceptance,
)

pytestmark = pytest.mark.pg

BILL = "/admin/v1/pricing/bill"
ESTIMATE = "/admin/v1/pricing/estimate"


@pytest.fixture
def http(server):  # type: ignore[no-untyped-def]
    with httpx.Client(base_url=server.http_url, headers=admin_headers()) as client:
        yield client


def post(http: httpx.Client, path: str, body: Any, **headers: str) -> httpx.Response:
    raw = body if isinstance(body, bytes) else orjson.dumps(body)
    return http.post(path, content=raw, headers={"content-type": "application/json", **headers})


def test_the_bill_example(http) -> None:  # type: ignore[no-untyped-def]
    answer = post(http, BILL, {"plan": "pro", "messages": 8500000, "peak_connections": 1700})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    contract = PRO_BILL
    keys = ("item", "included", "overage", "packages", "usd")
    assert {k: body[k] for k in contract if k != "lines"} == {k: v for k, v in contract.items() if k != "lines"}
    assert [{k: line[k] for k in keys} for line in body["lines"]] == contract["lines"]
    assert body["monthly_usd"] == 55.0
    assert b'"total_usd":30.0' in answer.content  # a JSON number, not a string


def test_a_hard_quota_plan_is_restricted_not_billed(http) -> None:  # type: ignore[no-untyped-def]
    body = post(http, BILL, {"plan": "free", "messages": 2_000_001, "peak_connections": 0}).json()
    assert (body["restricted"], body["total_usd"], body["lines"][0]["overage"]) == (True, 0.0, 1)


def test_the_estimate_example(http) -> None:  # type: ignore[no-untyped-def]
    answer = post(http, ESTIMATE, ESTIMATE_INPUTS)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    # By hand, from the formulas:
    broadcast = 1000 * 6 * 60 * 8 * 30 * (1 + 10)  # 950,400,000
    presence = 1000 * 0 * 8 * 30 * (1 + 0)
    changes = 5 * 3600 * 8 * 30 * 200  # × visible share 1.0: 864,000,000
    total = broadcast + presence + changes
    assert body["messages_per_month"] == {
        "broadcast": 950_400_000,
        "presence": 0,
        "postgres_changes": 864_000_000,
        "all": 1_814_400_000,
    }
    assert (broadcast, changes, total) == (950_400_000, 864_000_000, 1_814_400_000)
    assert body["peak_connections"] == 1000
    # Overage on pro/team/enterprise: ceil((1,814,400,000 − 5,000,000) / 1M) = 1,810 packages × $2.50,
    # and 1,000 − 500 connections = 1 package × $10: $4,535.
    overage = 1_810 * 2.5 + 1 * 10
    assert overage == 4535.0
    plans = [{k: p[k] for k in ("plan", "monthly_usd", "total_usd", "fits", "custom")} for p in body["plans"]]
    assert plans == [
        # 1,000 clients > 200 and > 500 allowed; the month is past both hard quotas too.
        {"plan": "free", "monthly_usd": 0.0, "total_usd": 0.0, "fits": False, "custom": False},
        {"plan": "pro_capped", "monthly_usd": 25.0, "total_usd": 0.0, "fits": False, "custom": False},
        {"plan": "pro", "monthly_usd": 25 + overage, "total_usd": overage, "fits": True, "custom": False},
        {"plan": "team", "monthly_usd": 599 + overage, "total_usd": overage, "fits": True, "custom": False},
        {"plan": "enterprise", "monthly_usd": 599 + overage, "total_usd": overage, "fits": True, "custom": True},
    ]
    assert body["cheapest_plan"] == "pro"
    assert body["warnings"] == []
    assert all(p["warnings"] == [] for p in body["plans"] if p["fits"])
    free = body["plans"][0]["warnings"]
    assert "concurrent_clients 1,000 exceeds max_concurrent_users 200 of Free" in free
    # 1,000 × 6 / 60 × (1 + 10) broadcasts + 5 × 200 changes delivered per second.
    assert body["rates"]["events_per_second"] == 1000 * 6 / 60 * 11 + 5 * 200
    assumptions = body["assumptions"]
    assert assumptions[0] == (
        "broadcast messages per month = clients × messages per client per minute × 60 × hours per day × days"
        " × (1 + fan-out) = 1000 × 6 × 60 × 8 × 30 × (1 + 10) = 950,400,000"
    )
    assert assumptions[1].startswith(
        "presence messages per month = clients × updates per client per hour × hours per day × days"
        " × (1 + members per channel)"
    )
    assert assumptions[2].startswith(
        "postgres_changes messages per month = changes per second × 3,600 × hours per day × days × listening"
        " clients × visible share under RLS"
    )
    assert "peak connections = concurrent clients = 1000" in assumptions


def test_the_bill_with_egress(http) -> None:  # type: ignore[no-untyped-def]
    body = post(http, BILL, {"plan": "pro", "messages": 8500000, "peak_connections": 1700, "egress_bytes": 260 * 10**9})
    assert body.status_code == 200, body.text
    answer = body.json()
    assert answer["lines"][2] == {
        "item": "egress",
        "used": 260 * 10**9,
        "included": 250 * 10**9,
        "overage": 10 * 10**9,
        "packages": None,
        "package_size": 10**9,
        "package_usd": 0.09,
        "usd": 0.9,
    }
    assert (answer["total_usd"], answer["monthly_usd"]) == (30.9, 55.9)
    assert "Realtime share" in answer["notes"][0]
    # the example, without egress: exactly two lines and no notes, as before
    plain = post(http, BILL, {"plan": "pro", "messages": 8500000, "peak_connections": 1700}).json()
    assert [line["item"] for line in plain["lines"]] == ["messages", "peak_connections"] and "notes" not in plain


def test_the_estimate_with_a_payload_size(http) -> None:  # type: ignore[no-untyped-def]
    plain = post(http, ESTIMATE, ESTIMATE_INPUTS).json()
    assert plain["egress_bytes_per_month"] is None
    assert [f["vsn"] for f in plain["envelope"]["frames"]] == ["1.0.0", "2.0.0", "2.0.0"]
    body = post(http, ESTIMATE, {**ESTIMATE_INPUTS, "payload_bytes": 100, "vsn": "2.0.0"}).json()
    egress = body["egress_bytes_per_month"]
    assert set(egress) == {"1.0.0", "2.0.0"} and egress["2.0.0"]["all"] < egress["1.0.0"]["all"]
    frames = {f["serializer"]: f for f in body["envelope"]["frames"]}
    binary, text = frames["binary frame"]["frame_bytes"], frames["JSON text frame"]["frame_bytes"]
    assert body["envelope"]["saving_bytes"] == text - binary
    # 260,928,000,000 bytes on vsn 2.0.0: 10.928 GB past Pro's 250 × $0.09 = $0.98352 → $0.98
    assert egress["2.0.0"]["all"] == 260_928_000_000
    pro = next(p for p in body["plans"] if p["plan"] == "pro")
    assert pro["monthly_usd"] == next(p for p in plain["plans"] if p["plan"] == "pro")["monthly_usd"] + 0.98
    assert pro["bill"]["lines"][2]["used"] == egress["2.0.0"]["all"]
    assert body["messages_per_month"] == plain["messages_per_month"]


def test_the_last_three_estimate_fields_default(http) -> None:  # type: ignore[no-untyped-def]
    short = {k: v for k, v in ESTIMATE_INPUTS.items() if k not in ("rls_visible_share", "hours_per_day", "days")}
    body = post(http, ESTIMATE, short).json()
    assert body["messages_per_month"]["broadcast"] == 1000 * 6 * 60 * 24 * 30 * 11
    assert body["messages_per_month"]["postgres_changes"] == 5 * 3600 * 24 * 30 * 200


def test_a_read_only_token_may_price_and_nothing_is_recorded(http) -> None:  # type: ignore[no-untyped-def]
    read = admin_headers(admin="read")
    assert post(http, BILL, {"plan": "team", "messages": 0, "peak_connections": 501}, **read).json()["total_usd"] == 10
    assert post(http, ESTIMATE, ESTIMATE_INPUTS, **read).status_code == 200
    audit = http.get("/admin/v1/audit", params={"limit": 1000}).json()["data"]
    assert not [e for e in audit if "pricing" in e["action"]]


@pytest.mark.parametrize("path", [BILL, ESTIMATE])
def test_no_token_or_a_client_token_is_refused(server, path) -> None:  # type: ignore[no-untyped-def]
    with httpx.Client(base_url=server.http_url) as http:
        assert http.post(path, json={}).status_code == 403
        refused = http.post(path, json={}, headers=admin_headers(role="anon"))
        assert (refused.status_code, refused.content) == (403, b"")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b'{"plan": "pro", "messages": 1', "body"),
        (b"[1, 2]", "body"),
        ({"plan": "platinum", "messages": 1, "peak_connections": 1}, "plan"),
        ({"plan": "pro", "messages": "8500000", "peak_connections": 1}, "messages"),
        ({"plan": "pro", "messages": 1.5, "peak_connections": 1}, "messages"),
        ({"plan": "pro", "messages": -1, "peak_connections": 1}, "messages"),
        ({"plan": "pro", "messages": 10**19, "peak_connections": 1}, "messages"),
        (b'{"plan": "pro", "messages": 100000000000000000000000000000, "peak_connections": 1}', "messages"),
        ({"plan": "pro", "messages": 1, "peak_connections": 10**13}, "peak_connections"),
        ({"plan": "pro", "messages": 1}, "peak_connections"),
        ({"plan": "pro", "messages": 1, "peak_connections": 1, "discount": 5}, "discount"),
        ({"plan": "pro", "messages": 1, "peak_connections": 1, "egress_bytes": -1}, "egress_bytes"),
        ({"plan": "pro", "messages": 1, "peak_connections": 1, "egress_bytes": 10**19}, "egress_bytes"),
        ({"plan": "pro", "messages": 1, "peak_connections": 1, "egress_bytes": "1"}, "egress_bytes"),
        ({"plan": "pro", "messages": 1, "peak_connections": 1, "egress_bytes": 1.5}, "egress_bytes"),
    ],
)
def test_bad_bills_name_the_field(http, body, field) -> None:  # type: ignore[no-untyped-def]
    answer = post(http, BILL, body)
    assert answer.status_code == 422, answer.text
    assert list(answer.json()["errors"]) == [field]


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"concurrent_clients": 10**12}, "concurrent_clients"),
        ({"concurrent_clients": -1}, "concurrent_clients"),
        ({"fanout": "10"}, "fanout"),
        ({"db_changes_per_second": 1e300}, "db_changes_per_second"),
        ({"rls_visible_share": 2}, "rls_visible_share"),
        ({"hours_per_day": 0}, "hours_per_day"),
        ({"days": 365}, "days"),
        ({"days": None}, "days"),
        ({"channels": 2}, "channels"),
        ({"payload_bytes": 0}, "payload_bytes"),
        ({"payload_bytes": 10**9}, "payload_bytes"),
        ({"payload_bytes": "100"}, "payload_bytes"),
        ({"payload_bytes": 100, "vsn": "3.0.0"}, "vsn"),
        # each input within its bounds, but a month too large to price to the cent
        (
            {"payload_bytes": 3_000_000, "concurrent_clients": 10**6, "fanout": 10**6, "db_listeners": 10**6},
            "payload_bytes",
        ),
    ],
)
def test_bad_estimates_name_the_field(http, change, field) -> None:  # type: ignore[no-untyped-def]
    answer = post(http, ESTIMATE, {**ESTIMATE_INPUTS, **change})
    assert answer.status_code == 422, answer.text
    assert list(answer.json()["errors"]) == [field]
    missing = post(http, ESTIMATE, {k: v for k, v in ESTIMATE_INPUTS.items() if k != "db_listeners"})
    assert missing.json() == {"errors": {"db_listeners": ["can't be blank"]}}


def test_the_largest_estimate_answers_at_once(http) -> None:  # type: ignore[no-untyped-def]
    biggest = {
        "concurrent_clients": 1_000_000,
        "channels_per_client": 10_000,
        "messages_per_client_per_minute": 6_000,
        "fanout": 1_000_000,
        "presence_updates_per_client_per_hour": 36_000,
        "presence_members_per_channel": 1_000_000,
        "db_changes_per_second": 100_000,
        "db_listeners": 1_000_000,
        "rls_visible_share": 1,
        "hours_per_day": 24,
        "days": 31,
    }
    answer = post(http, ESTIMATE, biggest)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["cheapest_plan"] is None
    assert body["messages_per_month"]["broadcast"] == 10**6 * 6_000 * 60 * 24 * 31 * (1 + 10**6)


def test_the_admin_openapi_document_describes_both(http) -> None:  # type: ignore[no-untyped-def]
    paths = http.get("/admin/v1/openapi.json").json()["paths"]
    for path in (BILL, ESTIMATE):
        operation = paths[path]["post"]
        assert "requestBody" in operation and "200" in operation["responses"]
    assert BILL not in http.get("/api/openapi").json()["paths"]


@pytest.fixture
def admin_schema(server):  # type: ignore[no-untyped-def]
    return schemathesis.openapi.from_url(f"{server.http_url}/admin/v1/openapi.json", headers=admin_headers())


schema = schemathesis.pytest.from_fixture("admin_schema")


@schema.include(path_regex="^/admin/v1/pricing/").parametrize()
@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
def test_the_pricing_endpoints_keep_to_their_documented_schema(case) -> None:  # type: ignore[no-untyped-def]
    """Generated bodies, valid and not: never a 500, and every answer is as documented.
    One check is left out: an authentication failure is upstream's 403 (documented), not the
    401 schemathesis expects."""
    excluded = [missing_required_header]
    response = case.call(headers=admin_headers())
    if (
        response.status_code == 422
        and isinstance(case.body, dict)
        and case.body.get("payload_bytes") is not None
        and list(response.json()["errors"]) == ["payload_bytes"]
        and response.json()["errors"]["payload_bytes"][0].endswith("to be priced to the cent")
    ):
        # The one bound a JSON schema cannot state: inputs each within their bounds whose month
        # is too large to price to the cent (documented; tests/test_pricing_egress.py).
        excluded.append(positive_data_acceptance)
    case.validate_response(response, excluded_checks=excluded)
