"""App.verify_token: the one check of a client's JWT at connect, join, refresh, expiry re-check and REST.

JWT_CLAIM_VALIDATORS is the setting only this check applies, so each entry point is shown
refusing a token whose `iss` does not match, with the answer upstream gives there."""

from __future__ import annotations

import time
from typing import Any

import httpx
import orjson
import pytest
from conftest import make_token as server_token
from fakes import SECRET, TENANT, TOPIC, Client, close_sockets, make_tenant, make_token, settle
from wire import V2, connect_refused

from realtime_core.app import App
from realtime_core.config import Settings
from realtime_core.errors import InvalidJWTToken, MalformedJWT
from realtime_core.jwt import sign

VALIDATORS = {"iss": "supabase"}


@pytest.fixture
async def app():
    app = App(Settings(channel_error_backoff_ms=0, jwt_claim_validators=VALIDATORS))
    app.tenants.put(make_tenant())
    yield app
    close_sockets(app)


def test_verify_token_cleans_checks_and_requires_role_and_exp(app: App):
    tenant = app.tenants.get(TENANT)
    token = make_token(iss="supabase", sub="alice")
    assert app.verify_token(tenant, f" {token[:8]}%0A{token[8:]} ")["sub"] == "alice"
    with pytest.raises(InvalidJWTToken, match=r"^Invalid claim: iss$"):
        app.verify_token(tenant, make_token(iss="someone-else"))
    with pytest.raises(InvalidJWTToken, match=r"^Fields `role` and `exp` are required in JWT$"):
        app.verify_token(tenant, sign({"exp": int(time.time()) + 60}, SECRET))
    with pytest.raises(MalformedJWT):
        app.verify_token(tenant, "not-a-jwt")


async def test_a_join_token_is_checked_with_the_claim_validators(app: App):
    client = Client(app)
    client.join(access_token=make_token(iss="someone-else"))
    await settle()
    [reply] = client.received()
    assert reply[4] == {"status": "error", "response": {"reason": "InvalidJWTToken: Invalid claim: iss"}}


async def test_a_refreshed_token_is_checked_with_the_claim_validators(app: App):
    client = Client(app, token=make_token(iss="supabase"))
    client.join()
    await settle()
    assert client.received()[0][4]["status"] == "ok"
    client.push("1", "2", TOPIC, "access_token", {"access_token": make_token(iss="someone-else")})
    [system, close] = client.received()
    assert system[4]["message"] == "Invalid claim: iss"
    assert close[3] == "phx_close"


@pytest.mark.pg
async def test_connect_and_rest_check_tokens_with_the_claim_validators(server_factory: Any):
    srv = server_factory({"JWT_CLAIM_VALIDATORS": orjson.dumps(VALIDATORS).decode()})
    refused = await connect_refused(srv.socket_url(server_token(iss="someone-else"), V2))
    assert (refused.status, refused.json()) == (500, {"error": "Error connecting to Realtime"})
    body = {"messages": [{"topic": "room", "event": "e", "payload": {}}]}

    def post(token: str) -> httpx.Response:
        return httpx.post(f"{srv.http_url}/api/broadcast", json=body, headers={"Authorization": f"Bearer {token}"})

    refused_rest = post(server_token(iss="someone-else"))
    assert (refused_rest.status_code, refused_rest.json()) == (401, {"message": "Unauthorized"})
    assert post(server_token(iss="supabase")).status_code == 202
