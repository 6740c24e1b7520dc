"""The one validation of tenant settings (realtime_core/admin/tenant_models.py), without a
server: what changes() writes for a request against a stored row, and the Studio warnings."""

from __future__ import annotations

from typing import Any

import pytest

from realtime_core.admin.endpoints import ApiError
from realtime_core.admin.tenant_models import TenantParams, TenantSettings, changes, studio_warnings, tenant_out

SETTINGS = {
    "region": "local",
    "db_host": "db.internal",
    "db_port": "5432",
    "db_name": "app",
    "db_user": "postgres",
    "db_password": "pw",
}


def params(**fields: Any) -> TenantParams:
    return TenantParams.model_validate(fields)


def stored(**fields: Any) -> dict[str, Any]:
    row: dict[str, Any] = {"id": "1", "external_id": "acme", "name": "acme", "jwt_secret": "s", "plan": "pro"}
    return {**row, **fields}


def errors(exc: pytest.ExceptionInfo[ApiError]) -> dict[str, list[str]]:
    assert exc.value.status == 422
    return exc.value.body["errors"]


def test_a_new_tenant_is_named_by_its_id_and_takes_only_the_fields_given():
    assert changes(None, params(jwt_secret="s"), external_id="acme", merge_extensions=False) == {
        "jwt_secret": "s",
        "external_id": "acme",
        "name": "acme",
    }


def test_an_update_replaces_the_fields_given_and_null_limits_return_to_the_plan():
    out = changes(
        stored(max_concurrent_users=5),
        params(max_concurrent_users=None, suspend=True),
        external_id="acme",
        merge_extensions=False,
    )
    assert out == {"max_concurrent_users": None, "suspend": True}


def test_put_replaces_the_extensions_and_patch_merges_their_settings():
    row = stored(extensions=[{"type": "postgres_cdc_rls", "settings": SETTINGS}])
    change = params(extensions=[{"type": "postgres", "settings": {"db_port": "6543", "slot_name": None}}])
    merged = changes(row, change, external_id="acme", merge_extensions=True)
    assert merged == {"extensions": [{"type": "postgres_cdc_rls", "settings": {**SETTINGS, "db_port": "6543"}}]}
    with pytest.raises(ApiError) as exc:
        changes(row, change, external_id="acme", merge_extensions=False)
    assert errors(exc)["extensions.0.settings.db_password"] == ["can't be blank"]


def test_postgres_changes_pool_is_upstreams_name_of_the_subscriber_pool():
    settings = {**SETTINGS, "postgres_changes_pool": 3}
    change = params(jwt_secret="s", extensions=[{"type": "postgres_cdc_rls", "settings": settings}])
    [ext] = changes(None, change, external_id="acme", merge_extensions=False)["extensions"]
    assert ext["settings"]["subcriber_pool_size"] == 3 and "postgres_changes_pool" not in ext["settings"]


def test_an_extension_type_given_twice_is_refused():
    twice = [{"type": "postgres_cdc_rls", "settings": SETTINGS}, {"type": "postgres", "settings": SETTINGS}]
    with pytest.raises(ApiError) as exc:
        changes(None, params(jwt_secret="s", extensions=twice), external_id="acme", merge_extensions=False)
    assert errors(exc) == {"extensions.1.type": ["has already been taken"]}


def test_removing_the_last_key_is_refused():
    with pytest.raises(ApiError) as exc:
        changes(stored(), params(jwt_secret=None), external_id="acme", merge_extensions=False)
    assert errors(exc) == {"jwt_secret": ["either jwt_secret or jwt_jwks must be provided"]}
    jwks = {"keys": [{"kty": "oct", "kid": "k", "k": "c2VjcmV0"}]}
    assert changes(stored(), params(jwt_secret=None, jwt_jwks=jwks), external_id="acme", merge_extensions=False)


def test_the_body_may_not_name_another_tenant_and_a_new_id_must_be_a_host_label():
    with pytest.raises(ApiError) as exc:
        changes(stored(), params(external_id="other"), external_id="acme", merge_extensions=False)
    assert "external_id" in errors(exc)
    with pytest.raises(ApiError) as exc:
        changes(None, params(jwt_secret="s"), external_id="Has.Dots", merge_extensions=False)
    assert "external_id" in errors(exc)


def test_settings_take_no_identity_or_keys():
    assert "jwt_secret" not in TenantSettings.model_fields and "external_id" not in TenantSettings.model_fields


def test_warnings_name_each_limit_above_studios_bounds():
    row = stored(plan="free", max_events_per_second=20_000, max_payload_size_in_kb=300, max_joins_per_second=5_000)
    assert studio_warnings(row) == [
        "max_events_per_second is 20000, above Supabase Studio's bound of 10000",
        "max_payload_size_in_kb is 300, above Supabase Studio's bound of 256",
    ]


def test_the_json_of_a_tenant_has_no_secret():
    row = stored(extensions=[{"type": "postgres_cdc_rls", "settings": SETTINGS}], jwt_jwks={"keys": []})
    out = tenant_out(row).model_dump()
    assert "jwt_secret" not in out and "jwt_jwks" not in out
    assert out["extensions"][0]["settings"] == {k: v for k, v in SETTINGS.items() if k != "db_password"}
    assert (out["has_jwt_secret"], out["has_jwt_jwks"]) == (True, True)
