"""Tenant resolution by Host with two tenants, over raw HTTP and raw WebSocket upgrades.

The server's database holds the default tenant (`realtime-dev`, the test secret)
and `tenantb` (a secret of its own), created through TenantStore before the
server starts. Which tenant a request reached shows in which secret its token
must be signed with. Requests are written byte by byte, so the Host header is
exactly the one under test, or absent."""

from __future__ import annotations

import asyncio
import base64
import json
import os
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from conftest import ServerProcess, make_token, scratch_database, start_server

from realtime_core import db
from realtime_core.tenants import TenantStore

pytestmark = pytest.mark.pg

SECRET_B = "tenant-b-secret-" + "y" * 32
LOCAL_HOSTS = ["127.0.0.1", "127.0.0.1:{port}", "localhost", "localhost:{port}", "[::1]:{port}", "[::1]"]
NOT_FOUND_HOSTS = ["nosuch.localhost:{port}", "nosuch.example.com"]


@pytest.fixture(scope="module")
def two_tenants(pg_dsn: str) -> Iterator[ServerProcess]:
    async def create_tenant_b(dsn: str) -> None:
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            await db.migrate(conn)
            await TenantStore(conn).create("tenantb", SECRET_B)

    with scratch_database(pg_dsn) as url:
        asyncio.run(create_tenant_b(url))
        server = start_server(url)
        try:
            yield server
        finally:
            server.stop()


async def exchange(port: int, head: list[str], body: bytes = b"") -> tuple[int, bytes]:
    """Send one request (its head lines and body) and return the status and the response body."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + body)
        await writer.drain()
        response_head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        lines = response_head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        length = next((int(v) for k, _, v in (h.partition(": ") for h in lines[1:]) if k == "content-length"), 0)
        return status, await asyncio.wait_for(reader.readexactly(length), 10) if length else b""
    finally:
        writer.close()


async def rest(port: int, host: str | None, token: str) -> tuple[int, Any]:
    body = json.dumps({"messages": [{"topic": "room", "event": "e", "payload": {}}]}).encode()
    head = [
        "POST /api/broadcast HTTP/1.1",
        *([f"Host: {host}"] if host is not None else []),
        f"Authorization: Bearer {token}",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
        "Connection: close",
    ]
    status, data = await exchange(port, head, body)
    return status, json.loads(data) if data else None


async def upgrade(port: int, host: str | None, token: str) -> tuple[int, Any]:
    key = base64.b64encode(os.urandom(16)).decode()
    head = [
        f"GET /socket/websocket?apikey={token}&vsn=2.0.0 HTTP/1.1",
        *([f"Host: {host}"] if host is not None else []),
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        "Sec-WebSocket-Version: 13",
    ]
    status, data = await exchange(port, head)
    return status, json.loads(data) if data else None


@pytest.mark.parametrize("host", LOCAL_HOSTS)
async def test_localhost_and_ip_literals_reach_the_default_tenant(two_tenants, host):
    host = host.format(port=two_tenants.port)
    assert await rest(two_tenants.port, host, make_token()) == (202, None)
    assert (await upgrade(two_tenants.port, host, make_token()))[0] == 101
    # Tenant b's token is not valid there.
    assert await rest(two_tenants.port, host, make_token(secret=SECRET_B)) == (401, {"message": "Unauthorized"})
    assert (await upgrade(two_tenants.port, host, make_token(secret=SECRET_B)))[0] == 401


@pytest.mark.parametrize("host", ["tenantb.localhost", "tenantb.localhost:{port}", "TenantB.example.com"])
async def test_the_first_label_names_the_tenant(two_tenants, host):
    host = host.format(port=two_tenants.port)
    token_b = make_token(secret=SECRET_B)
    assert await rest(two_tenants.port, host, token_b) == (202, None)
    assert (await upgrade(two_tenants.port, host, token_b))[0] == 101
    assert await rest(two_tenants.port, host, make_token()) == (401, {"message": "Unauthorized"})
    assert (await upgrade(two_tenants.port, host, make_token()))[0] == 401


@pytest.mark.parametrize("host", NOT_FOUND_HOSTS)
async def test_a_host_naming_no_tenant_gets_upstreams_tenant_not_found(two_tenants, host):
    host = host.format(port=two_tenants.port)
    # upstream assign_tenant.ex (REST) and user_socket.ex error_response/1 (upgrade).
    assert await rest(two_tenants.port, host, make_token()) == (401, {"message": "Tenant not found in database"})
    assert await upgrade(two_tenants.port, host, make_token()) == (404, {"error": "Tenant not found"})


async def test_a_request_without_host_is_400(two_tenants):
    assert await rest(two_tenants.port, None, make_token()) == (400, {"message": "Host header is missing"})
    assert await upgrade(two_tenants.port, None, make_token()) == (400, {"error": "Host header is missing"})
