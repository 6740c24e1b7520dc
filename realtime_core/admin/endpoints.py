"""The small framework of the operator APIs: routes with pydantic models, admin authentication,
the audit log, upstream-shaped errors, list pages and the OpenAPI documents.

A module adds a route with `@api.route(...)` on an async handler taking a Call. The
framework authenticates (auth.py; GET needs a read token, anything else a write token),
decodes and validates the JSON body and the query with the route's pydantic models, runs
the handler and encodes what it returns: a pydantic model or plain JSON values (status
`status`), None (204), or a net.http.Response as is. Raise ApiError (not_found(),
invalid()) for 404 and 422 answers. Every write is appended to the audit log with its
result, whatever it was.

Errors answer as upstream's Phoenix controllers do: 422 `{"errors": {"<field>": ["…"]}}`,
404 `{"message": "…"}`, 403 with an empty body for any authentication failure."""

from __future__ import annotations

import base64
import binascii
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar
from urllib.parse import unquote

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.json_schema import models_json_schema

from .. import __version__
from ..net.http import Request, Response, Router, json_response
from .auth import AdminAuth, Identity, Refused

if TYPE_CHECKING:
    from ..tenants import Tenant

__all__ = [
    "AdminApi",
    "ApiError",
    "AuditSink",
    "Call",
    "ListQuery",
    "Model",
    "Page",
    "invalid",
    "not_found",
    "paginate",
    "tenant_of",
]

log = logging.getLogger(__name__)

T = TypeVar("T")

ADMIN = "admin"  # the /admin/v1 document
TENANTS = "tenants"  # upstream's tenant API document (/api/openapi)
_DOCUMENTS = {
    ADMIN: ("/admin/v1/openapi.json", "realtime-core admin API"),
    TENANTS: ("/api/openapi", "realtime-core tenant API"),
}
_READ_METHODS = frozenset({"GET", "HEAD"})


class Model(BaseModel):
    """Base of request bodies: unknown fields are errors, nothing is coerced silently (`"5"` is
    not an integer). Query models derive from BaseModel instead: query values are text."""

    model_config = ConfigDict(extra="forbid", strict=True)


class ApiError(Exception):
    """An answer other than success: `status` and its JSON body."""

    def __init__(self, status: int, body: dict[str, Any]) -> None:
        super().__init__(status, body)
        self.status = status
        self.body = body


def not_found(message: str = "not found") -> ApiError:
    """404 `{"message": message}` (upstream's fallback controller)."""
    return ApiError(404, {"message": message})


def invalid(errors: dict[str, list[str]] | str, message: str | None = None) -> ApiError:
    """422 `{"errors": {...}}`: `invalid("limit", "must be at most 1000")` or a dict of fields."""
    if isinstance(errors, str):
        errors = {errors: [message or "is invalid"]}
    return ApiError(422, {"errors": errors})


class Tenants(Protocol):
    """The tenants the admin routes look up (tenants.Tenants)."""

    def get(self, external_id: str, /) -> Tenant | None: ...


def tenant_of(tenants: Tenants, call: Call) -> Tenant:
    """The tenant the path's `:id` names; a 404 when there is none."""
    tenant = tenants.get(call.params["id"])
    if tenant is None:
        raise not_found()
    return tenant


class AuditSink:
    """Where admin writes are recorded (audit.AuditLog); this one records nothing."""

    async def append(
        self, identity: Identity, action: str, target: str, status: int, detail: dict[str, Any]
    ) -> None:  # pragma: no cover - the interface
        return None


@dataclass(slots=True)
class Call:
    """One admin request as a handler sees it. A handler may set `target` and add to
    `detail` (never a secret) for the audit log."""

    request: Request
    params: dict[str, str]
    identity: Identity
    body: Any = None
    query: Any = None
    target: str = ""
    detail: dict[str, Any] = field(default_factory=dict)


Handler = Callable[[Call], Awaitable[Any]]


@dataclass(frozen=True, slots=True)
class Route:
    method: str
    path: str  # the Router's pattern: `:name` segments
    handler: Handler
    document: str
    body: type[BaseModel] | None
    envelope: str | None
    query: type[BaseModel] | None
    response: Any
    status: int
    write: bool
    action: str
    summary: str


class ListQuery(BaseModel):
    """The parameters of every list: page size, the opaque cursor of the next page, and the sort."""

    model_config = ConfigDict(extra="ignore")

    limit: int = Field(100, ge=1, le=1000)
    cursor: str | None = None
    sort: str | None = Field(None, description="a field name, or -name for descending")


class Page(BaseModel, Generic[T]):
    """A list answer: one page of rows, and the cursor of the next (null on the last page)."""

    data: list[T]
    next_cursor: str | None = None


def paginate(
    rows: Iterable[dict[str, Any]],
    query: ListQuery,
    *,
    sortable: Iterable[str],
    default: str | None = None,
) -> dict[str, Any]:
    """One page of `rows` as `{"data": [...], "next_cursor": ...}`, sorted by `query.sort`
    (one of `sortable`, `-` for descending; else `default`). Nulls sort last. Raises ApiError
    (422) for an unknown sort field or a cursor this function did not make."""
    sort = query.sort or default
    rows = list(rows)
    if sort:
        name = sort.removeprefix("-")
        allowed = sorted(sortable)
        if name not in allowed:
            raise invalid("sort", f"must be one of {', '.join(allowed)}, optionally prefixed with -")
        descending = sort.startswith("-")
        present = [r for r in rows if r.get(name) is not None]
        present.sort(key=lambda r: r[name], reverse=descending)
        rows = present + [r for r in rows if r.get(name) is None]
    start = _offset(query.cursor)
    end = start + query.limit
    next_cursor = _cursor(end) if end < len(rows) else None
    return {"data": rows[start:end], "next_cursor": next_cursor}


def _cursor(offset: int) -> str:
    return base64.urlsafe_b64encode(f"o:{offset}".encode()).decode().rstrip("=")


def _offset(cursor: str | None) -> int:
    if not cursor:
        return 0
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        kind, _, number = text.partition(":")
        offset = int(number)
        if kind != "o" or offset < 0:
            raise ValueError(text)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise invalid("cursor", "is not a cursor of this list") from None
    return offset


def _errors(exc: ValidationError, prefix: str | None = None) -> dict[str, list[str]]:
    """pydantic's errors as Ecto's `{"<field>": ["<message>"]}` (dotted paths for nested fields)."""
    errors: dict[str, list[str]] = {}
    for error in exc.errors(include_url=False):
        loc = [str(part) for part in error["loc"]]
        name = ".".join(loc) or (prefix or "body")
        message = error["msg"]
        if error["type"] == "extra_forbidden":
            message = "is not a known field"
        elif error["type"] == "missing":
            message = "can't be blank"
        errors.setdefault(name, []).append(message)
    return errors


class AdminApi:
    """The routes of the operator APIs, their authentication, audit and OpenAPI documents."""

    def __init__(self, auth: AdminAuth, audit: AuditSink | None = None) -> None:
        self.auth = auth
        self.audit = audit or AuditSink()
        self.routes: list[Route] = []

    def route(
        self,
        method: str,
        path: str,
        *,
        document: str = ADMIN,
        body: type[BaseModel] | None = None,
        envelope: str | None = None,
        query: type[BaseModel] | None = None,
        response: Any = None,
        status: int = 200,
        write: bool | None = None,
        action: str | None = None,
        summary: str = "",
    ) -> Callable[[Handler], Handler]:
        """Register the decorated handler for `method` `path` (`:name` segments).

        `body`: the model of the JSON body, found under the key `envelope` when given
        (upstream's `{"tenant": {...}}`). `query`: the model of the query parameters.
        `response`: the type of what a success returns, for the OpenAPI document.
        `write` (default: any method but GET) needs a write token and is audited as
        `action` (default: "METHOD path")."""

        def add(handler: Handler) -> Handler:
            self.routes.append(
                Route(
                    method=method,
                    path=path,
                    handler=handler,
                    document=document,
                    body=body,
                    envelope=envelope,
                    query=query,
                    response=response,
                    status=status,
                    write=method not in _READ_METHODS if write is None else write,
                    action=action or f"{method} {path}",
                    summary=summary or (handler.__doc__ or "").strip().split("\n")[0],
                )
            )
            return handler

        return add

    def register(self, router: Router) -> None:
        """Add every route, and the OpenAPI documents, to `router`."""
        for route in self.routes:
            router.add(route.method, route.path, self._handler(route))
        for name, (path, _) in _DOCUMENTS.items():
            router.add("GET", path, self._document_handler(name))

    def _document_handler(self, name: str) -> Callable[[Request], Awaitable[Response]]:
        document: dict[str, Any] | None = None

        async def serve(request: Request) -> Response:
            nonlocal document
            try:
                self.auth.identify(request, write=False)
            except Refused:
                return Response(403)
            if document is None:
                document = self.openapi(name)
            return json_response(200, document)

        return serve

    def _handler(self, route: Route) -> Callable[[Request], Awaitable[Response]]:
        async def handle(request: Request) -> Response:
            try:
                identity = self.auth.identify(request, write=route.write)
            except Refused as exc:
                log.info("admin request %s %s refused: %s", request.method, request.path, exc)
                return Response(403)
            params = {k: unquote(v) for k, v in request.params.items()}
            call = Call(request, params, identity, target=next(iter(params.values()), ""))
            try:
                if route.query is not None:
                    call.query = _validate(route.query, _query(request), None)
                if route.body is not None:
                    call.body = _validate(route.body, _json_body(request, route.envelope), route.envelope)
                result = await route.handler(call)
                response = _encode(result, route.status)
            except ApiError as exc:
                response = json_response(exc.status, exc.body)
            if route.write:
                try:
                    await self.audit.append(identity, route.action, call.target, response.status, call.detail)
                except Exception:
                    log.exception("admin audit: could not record %s %s", route.action, call.target)
            return response

        return handle

    def openapi(self, document: str) -> dict[str, Any]:
        """The OpenAPI 3.1 document of the routes of `document` (`admin` or `tenants`)."""
        routes = [r for r in self.routes if r.document == document]
        models: list[tuple[Any, Any]] = []
        for route in routes:
            if route.body is not None:
                models.append((route.body, "validation"))
            if route.response is not None:
                models.append((_as_model(route.response), "serialization"))
        refs, defs = models_json_schema(models, ref_template="#/components/schemas/{model}") if models else ({}, {})
        paths: dict[str, dict[str, Any]] = {}
        for route in routes:
            openapi_path = _openapi_path(route.path)
            operation: dict[str, Any] = {
                "summary": route.summary,
                "operationId": f"{route.method.lower()}_{openapi_path.strip('/').replace('/', '_')}".replace(
                    "{", ""
                ).replace("}", ""),
                "parameters": _parameters(route),
                "responses": {
                    "403": {"description": "admin authentication failed (empty body)"},
                    "422": {"description": "invalid input", "content": _json({"$ref": "#/components/schemas/Errors"})},
                },
            }
            if route.write:
                operation["description"] = "Needs a write token; recorded in the audit log."
            if route.body is not None:
                schema = refs[(route.body, "validation")]
                if route.envelope:
                    schema = {
                        "type": "object",
                        "properties": {route.envelope: schema},
                        "required": [route.envelope],
                    }
                operation["requestBody"] = {"required": True, "content": _json(schema)}
            if route.status == 204 or route.response is None:
                operation["responses"][str(route.status)] = {"description": "done"}
            else:
                schema = refs[(_as_model(route.response), "serialization")]
                operation["responses"][str(route.status)] = {"description": "success", "content": _json(schema)}
            if ":" in route.path:
                operation["responses"]["404"] = {
                    "description": "not found",
                    "content": _json({"$ref": "#/components/schemas/NotFound"}),
                }
            paths.setdefault(openapi_path, {})[route.method.lower()] = operation
        schemas = dict(defs.get("$defs", {}))
        schemas["Errors"] = {
            "type": "object",
            "properties": {
                "errors": {"type": "object", "additionalProperties": {"type": "array", "items": {"type": "string"}}}
            },
            "required": ["errors"],
        }
        schemas["NotFound"] = {
            "type": "object",
            "properties": {"message": {"type": "string"}},
            "required": ["message"],
        }
        _, title = _DOCUMENTS[document]
        return {
            "openapi": "3.1.0",
            "info": {"title": title, "version": __version__},
            "paths": paths,
            "components": {
                "schemas": schemas,
                "securitySchemes": {"admin": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}},
            },
            "security": [{"admin": []}],
        }


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def _as_model(response: Any) -> Any:
    """A response type as something models_json_schema takes: a model, or a TypeAdapter-able type
    wrapped in a RootModel."""
    if isinstance(response, type) and issubclass(response, BaseModel):
        return response
    from pydantic import RootModel

    return RootModel[response]  # type: ignore[valid-type]


def _openapi_path(pattern: str) -> str:
    return "/".join(f"{{{part[1:]}}}" if part.startswith(":") else part for part in pattern.split("/"))


def _parameters(route: Route) -> list[dict[str, Any]]:
    parameters: list[dict[str, Any]] = [
        {"name": part[1:], "in": "path", "required": True, "schema": {"type": "string"}}
        for part in route.path.split("/")
        if part.startswith(":")
    ]
    if route.query is not None:
        schema = route.query.model_json_schema()
        required = set(schema.get("required", ()))
        for name, prop in schema.get("properties", {}).items():
            parameters.append({"name": name, "in": "query", "required": name in required, "schema": prop})
    return parameters


def _integral(value: Any) -> Any:
    """`value` with every float that is a whole number made an int: JSON has one number type, so
    `219.0` is the integer 219 (as JSON Schema's `integer` says), while `"219"` stays a string."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**63:
        return int(value)
    if isinstance(value, dict):
        return {k: _integral(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_integral(v) for v in value]
    return value


def _query(request: Request) -> dict[str, str]:
    """The query parameters; a NUL character in one is a 422 (no text column or name holds one)."""
    query = request.query
    for name, value in query.items():
        if "\x00" in value:
            raise invalid(name, "must not contain NUL characters")
    return query


def _json_body(request: Request, envelope: str | None) -> Any:
    try:
        data = _integral(orjson.loads(request.body)) if request.body.strip() else None
    except orjson.JSONDecodeError:
        raise invalid("body", "is not valid JSON") from None
    if envelope is None:
        return {} if data is None else data
    if not isinstance(data, dict) or not isinstance(data.get(envelope), dict):
        raise invalid(envelope, f'is required: send {{"{envelope}": {{...}}}}')
    return data[envelope]


def _validate(model: type[BaseModel], data: Any, prefix: str | None) -> BaseModel:
    if not isinstance(data, dict):
        raise invalid(prefix or "body", "must be a JSON object")
    try:
        # As JSON: strict models then take JSON's own forms (a date as a string) and nothing looser.
        return model.model_validate_json(orjson.dumps(data))
    except ValidationError as exc:
        raise ApiError(422, {"errors": _errors(exc, prefix)}) from None


def _encode(result: Any, status: int) -> Response:
    if isinstance(result, Response):
        return result
    if result is None:
        return Response(204)
    if isinstance(result, BaseModel):
        return Response(status, result.__pydantic_serializer__.to_json(result), [], "application/json; charset=utf-8")
    return json_response(status, result)
