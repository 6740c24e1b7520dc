"""Schemathesis against the admin API's OpenAPI document (/admin/v1/openapi.json) on a running
server: no input it generates makes the server answer 5xx, and answers match the document."""

from __future__ import annotations

import httpx
import pytest
import schemathesis
from conftest import admin_headers
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance, status_code_conformance

pytestmark = pytest.mark.pg


@pytest.fixture(scope="module")
def admin_schema(server):
    document = httpx.get(f"{server.http_url}/admin/v1/openapi.json", headers=admin_headers(), timeout=10).json()
    schema = schemathesis.openapi.from_dict(document)
    schema.config.base_url = server.http_url
    return schema


schema = schemathesis.pytest.from_fixture("admin_schema")


@schema.parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_input_makes_a_server_error(case, server):
    response = case.call(headers=admin_headers(), timeout=10)
    case.validate_response(
        response,
        checks=[not_a_server_error, status_code_conformance, response_schema_conformance],
    )
