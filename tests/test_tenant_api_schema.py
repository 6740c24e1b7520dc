"""The tenant API against its own OpenAPI document (`/api/openapi`), with schemathesis: whatever
valid or invalid request it generates, the server answers without a 5xx, within the document's
statuses."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
import schemathesis
from conftest import MS, ServerProcess, admin_headers, serving
from hypothesis import HealthCheck, settings

pytestmark = pytest.mark.pg


@pytest.fixture(scope="module")
def server(pg_dsn: str) -> Iterator[ServerProcess]:
    # No database services: tenants created here name unreachable databases, and the answers
    # are what is tested, not the services.
    env = {"REALTIME_POSTGRES_CHANGES": "false", "REALTIME_DB_BROADCAST": "false"}
    with serving(pg_dsn, env) as srv:
        yield srv


@pytest.fixture(scope="module")
def tenant_schema(server: ServerProcess):  # type: ignore[no-untyped-def]
    document = httpx.get(f"{server.http_url}/api/openapi", headers=admin_headers(), timeout=10).json()
    return schemathesis.openapi.from_dict(document)


schema = schemathesis.pytest.from_fixture("tenant_schema")


@schema.parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_request_gets_a_server_error(case, server: ServerProcess) -> None:  # type: ignore[no-untyped-def]
    response = case.call(base_url=server.http_url, headers=admin_headers(), timeout=30_000 * MS)
    assert response.status_code < 500, (case.method, case.formatted_path, case.body, response.text)
