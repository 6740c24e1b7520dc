"""Schemathesis against the channel, time-series and replication routes of
`/admin/v1/openapi.json`: whatever it sends, no server error, and every answer matches the document."""

from __future__ import annotations

import pytest
import schemathesis
from conftest import admin_headers
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error, response_schema_conformance

pytestmark = pytest.mark.pg


@pytest.fixture
def admin_schema(server):  # type: ignore[no-untyped-def]
    schema = schemathesis.openapi.from_url(f"{server.http_url}/admin/v1/openapi.json", headers=admin_headers())
    schema.config.base_url = server.http_url
    return schema


schema = schemathesis.pytest.from_fixture("admin_schema").include(
    path_regex=r"/(channels|timeseries|replication|publication)"
)


@schema.parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_server_error(case):  # type: ignore[no-untyped-def]
    response = case.call(headers=admin_headers())
    case.validate_response(response, checks=[not_a_server_error, response_schema_conformance])
