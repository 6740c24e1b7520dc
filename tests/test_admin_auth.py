"""Admin authentication and the operator APIs' framework (realtime_core/admin/auth.py,
endpoints.py): who may call, what a refusal looks like, request validation, list pages,
the audit log and the OpenAPI documents."""

from __future__ import annotations

import time
from typing import Any

import httpx
import orjson
import pytest
from conftest import ADMIN_SECRET, admin_headers, admin_token
from pydantic import Field

from realtime_core.admin.auth import AdminAuth
from realtime_core.admin.endpoints import AdminApi, Call, ListQuery, Model, invalid, not_found, paginate
from realtime_core.config import Settings
from realtime_core.net.http import Request, Router

NEXT_SECRET = "next-secret-" + "z" * 32


class Thing(Model):
    name: str = Field(min_length=1, max_length=20)
    size: int = Field(ge=0, le=100)


class Recorder:
    def __init__(self) -> None:
        self.entries: list[tuple[Any, ...]] = []

    async def append(self, identity, action, target, status, detail) -> None:  # type: ignore[no-untyped-def]
        self.entries.append((identity.sub, action, target, status, detail))


def make_api(blocklist: tuple[str, ...] = ()) -> tuple[Router, Recorder]:
    audit = Recorder()
    api = AdminApi(AdminAuth([ADMIN_SECRET, NEXT_SECRET], blocklist), audit)  # type: ignore[arg-type]

    @api.route("GET", "/admin/v1/things/:id")
    async def get_thing(call: Call) -> dict[str, Any]:
        if call.params["id"] == "missing":
            raise not_found()
        return {"id": call.params["id"]}

    @api.route("POST", "/admin/v1/things", body=Thing, status=201, action="thing.create")
    async def create(call: Call) -> dict[str, Any]:
        if call.body.name == "taken":
            raise invalid("name", "has already been taken")
        call.target = call.body.name
        return call.body.model_dump()

    @api.route("PUT", "/api/things/:id", body=Thing, envelope="thing", document="tenants")
    async def put(call: Call) -> None:
        return None

    router = Router()
    api.register(router)
    return router, audit


async def call(router: Router, method: str, path: str, body: Any = None, token: str | None = None, **headers: str):
    handler, params, _ = router.match(method, path)
    assert handler is not None, (method, path)
    if token is not None:
        headers["authorization"] = f"Bearer {token}"
    raw = body if isinstance(body, bytes) else (b"" if body is None else orjson.dumps(body))
    response = await handler(Request(method, path, "", headers, raw, params=params))
    return response.status, (orjson.loads(response.body) if response.body else None)


@pytest.mark.parametrize(
    ("why", "token"),
    [
        ("wrong secret", admin_token(secret="another-secret-" + "q" * 32)),
        ("anon role", admin_token(role="anon")),
        ("authenticated role", admin_token(role="authenticated")),
        ("expired", admin_token(exp=int(time.time()) - 10)),
        ("unknown admin claim", admin_token(admin="root")),
        ("not a JWT", "not-a-token"),
    ],
)
async def test_a_bad_token_gets_403_with_an_empty_body(why: str, token: str) -> None:
    router, audit = make_api()
    for method, path in (("GET", "/admin/v1/things/a"), ("POST", "/admin/v1/things")):
        status, body = await call(router, method, path, {"name": "a", "size": 1}, token=token)
        assert (status, body) == (403, None), why
    assert audit.entries == []


async def test_no_token_and_a_non_bearer_header_are_refused() -> None:
    router, _ = make_api()
    assert await call(router, "GET", "/admin/v1/things/a") == (403, None)
    basic = {"authorization": "Basic " + admin_token()}
    assert await call(router, "GET", "/admin/v1/things/a", **basic) == (403, None)


async def test_a_blocklisted_token_is_refused_although_it_verifies() -> None:
    blocked = admin_token(sub="leaked")
    router, _ = make_api(blocklist=(blocked,))
    assert await call(router, "GET", "/admin/v1/things/a", token=blocked) == (403, None)
    assert (await call(router, "GET", "/admin/v1/things/a", token=admin_token()))[0] == 200


async def test_the_next_secret_is_accepted_for_rotation() -> None:
    router, _ = make_api()
    assert await call(router, "GET", "/admin/v1/things/a", token=admin_token(secret=NEXT_SECRET)) == (
        200,
        {"id": "a"},
    )


async def test_other_roles_and_no_role_are_admins() -> None:
    router, _ = make_api()
    for claims in ({}, {"role": "service_role"}, {"role": "supabase_admin"}):
        assert (await call(router, "GET", "/admin/v1/things/a", token=admin_token(**claims)))[0] == 200


async def test_a_read_only_token_may_get_but_not_write() -> None:
    router, audit = make_api()
    reader = admin_token(admin="read")
    assert (await call(router, "GET", "/admin/v1/things/a", token=reader))[0] == 200
    assert await call(router, "POST", "/admin/v1/things", {"name": "a", "size": 1}, token=reader) == (403, None)
    assert audit.entries == []
    writer = admin_token(admin="write")
    assert (await call(router, "POST", "/admin/v1/things", {"name": "a", "size": 1}, token=writer))[0] == 201


async def test_no_secret_closes_the_apis() -> None:
    api = AdminApi(AdminAuth([]))
    assert not api.auth.enabled

    @api.route("GET", "/admin/v1/x")
    async def x(call: Call) -> dict[str, Any]:
        return {}

    router = Router()
    api.register(router)
    assert await call(router, "GET", "/admin/v1/x", token=admin_token()) == (403, None)


@pytest.mark.parametrize(
    ("body", "errors"),
    [
        (b"{not json", {"body": ["is not valid JSON"]}),
        ([1, 2], {"body": ["must be a JSON object"]}),
        ({"name": "a"}, {"size": ["can't be blank"]}),
        ({"name": "a", "size": "5"}, {"size": ["Input should be a valid integer"]}),
        ({"name": "a", "size": 5.5}, {"size": ["Input should be a valid integer"]}),
        ({"name": "a", "size": 101}, {"size": ["Input should be less than or equal to 100"]}),
        ({"name": "a", "size": 1, "colour": "red"}, {"colour": ["is not a known field"]}),
        ({"name": "taken", "size": 1}, {"name": ["has already been taken"]}),
    ],
)
async def test_bad_bodies_get_422_naming_the_field_and_are_audited(body: Any, errors: dict[str, list[str]]) -> None:
    router, audit = make_api()
    assert await call(router, "POST", "/admin/v1/things", body, token=admin_token()) == (422, {"errors": errors})
    assert [(e[0], e[1], e[3]) for e in audit.entries] == [("test-operator", "thing.create", 422)]


async def test_a_whole_number_written_as_a_float_is_an_integer() -> None:
    router, _ = make_api()
    assert await call(router, "POST", "/admin/v1/things", b'{"name": "a", "size": 5.0}', token=admin_token()) == (
        201,
        {"name": "a", "size": 5},
    )


async def test_an_envelope_is_required_and_its_fields_are_named_without_it() -> None:
    router, _ = make_api()
    token = admin_token()
    assert await call(router, "PUT", "/api/things/a", {"name": "a", "size": 1}, token=token) == (
        422,
        {"errors": {"thing": ['is required: send {"thing": {...}}']}},
    )
    assert await call(router, "PUT", "/api/things/a", {"thing": {"name": "a", "size": -1}}, token=token) == (
        422,
        {"errors": {"size": ["Input should be greater than or equal to 0"]}},
    )
    assert await call(router, "PUT", "/api/things/a", {"thing": {"name": "a", "size": 1}}, token=token) == (204, None)


async def test_writes_are_audited_with_the_target_the_handler_names() -> None:
    router, audit = make_api()
    await call(router, "POST", "/admin/v1/things", {"name": "box", "size": 3}, token=admin_token(sub="alice"))
    await call(router, "PUT", "/api/things/a%2Fb", {"thing": {"name": "a", "size": 1}}, token=admin_token(sub="bob"))
    await call(router, "GET", "/admin/v1/things/a", token=admin_token())
    assert audit.entries == [
        ("alice", "thing.create", "box", 201, {}),
        ("bob", "PUT /api/things/:id", "a/b", 204, {}),
    ]


async def test_a_missing_object_is_404_with_a_message() -> None:
    router, _ = make_api()
    assert await call(router, "GET", "/admin/v1/things/missing", token=admin_token()) == (
        404,
        {"message": "not found"},
    )


def test_paginate_sorts_pages_and_refuses_unknown_sorts_and_cursors() -> None:
    rows = [{"n": n, "m": None if n % 3 == 0 else -n} for n in range(7)]
    first = paginate(rows, ListQuery(limit=3, sort="-n"), sortable=["n", "m"])
    assert [r["n"] for r in first["data"]] == [6, 5, 4]
    second = paginate(rows, ListQuery(limit=3, sort="-n", cursor=first["next_cursor"]), sortable=["n", "m"])
    assert [r["n"] for r in second["data"]] == [3, 2, 1]
    last = paginate(rows, ListQuery(limit=3, sort="-n", cursor=second["next_cursor"]), sortable=["n", "m"])
    assert ([r["n"] for r in last["data"]], last["next_cursor"]) == ([0], None)
    by_m = paginate(rows, ListQuery(sort="m"), sortable=["n", "m"])
    assert [r["n"] for r in by_m["data"]] == [5, 4, 2, 1, 0, 3, 6]  # nulls last
    for query, field in ((ListQuery(sort="x"), "sort"), (ListQuery(cursor="garbage!"), "cursor")):
        with pytest.raises(Exception) as info:
            paginate(rows, query, sortable=["n"])
        assert info.value.status == 422 and field in info.value.body["errors"]  # type: ignore[attr-defined]


async def test_openapi_documents_split_by_api() -> None:
    router, _ = make_api()
    status, admin = await call(router, "GET", "/admin/v1/openapi.json", token=admin_token(admin="read"))
    assert status == 200
    assert set(admin["paths"]) == {"/admin/v1/things/{id}", "/admin/v1/things"}
    post = admin["paths"]["/admin/v1/things"]["post"]
    schema_ref = post["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    thing = admin["components"]["schemas"][schema_ref.rsplit("/", 1)[1]]
    assert thing["required"] == ["name", "size"] and thing["additionalProperties"] is False
    status, tenants = await call(router, "GET", "/api/openapi", token=admin_token())
    assert status == 200 and set(tenants["paths"]) == {"/api/things/{id}"}
    envelope = tenants["paths"]["/api/things/{id}"]["put"]["requestBody"]["content"]["application/json"]["schema"]
    assert envelope["required"] == ["thing"]
    assert await call(router, "GET", "/api/openapi") == (403, None)


def test_the_api_secret_comes_from_the_environment_before_the_data_dir(tmp_path) -> None:  # type: ignore[no-untyped-def]
    settings = Settings(data_dir=tmp_path)
    assert settings.resolve_api_jwt_secret() is None  # serve without a secret: the APIs stay closed
    generated = settings.resolve_api_jwt_secret(create=True)  # up generates one
    assert generated and (tmp_path / "api_jwt_secret").read_text().strip() == generated
    assert oct((tmp_path / "api_jwt_secret").stat().st_mode & 0o777) == "0o600"
    assert settings.resolve_api_jwt_secret() == generated  # serve reads it
    assert Settings(data_dir=tmp_path, api_jwt_secret="explicit").resolve_api_jwt_secret() == "explicit"
    env = {"API_TOKEN_BLOCKLIST": " a.b.c , d.e.f ,", "API_JWT_SECRET_NEXT": "n"}
    parsed = Settings.from_env(env)
    assert parsed.api_token_blocklist == ("a.b.c", "d.e.f") and parsed.api_jwt_secret_next == "n"


@pytest.mark.pg
async def test_the_audit_log_of_a_running_server(server) -> None:  # type: ignore[no-untyped-def]
    async with httpx.AsyncClient(base_url=server.http_url) as http:
        assert (await http.get("/admin/v1/audit")).status_code == 403
        first = await http.get("/admin/v1/audit", headers=admin_headers(admin="read"), params={"limit": 1})
        assert first.status_code == 200, first.text
        assert set(first.json()) == {"data", "next_cursor"}
        bad = await http.get("/admin/v1/audit", headers=admin_headers(), params={"limit": 0})
        assert bad.status_code == 422 and "limit" in bad.json()["errors"]
        nul = await http.get("/admin/v1/audit", headers=admin_headers(), params={"target": "a\x00b"})
        assert (nul.status_code, nul.json()) == (422, {"errors": {"target": ["must not contain NUL characters"]}})
        doc = await http.get("/admin/v1/openapi.json", headers=admin_headers())
        assert "/admin/v1/audit" in doc.json()["paths"]
