"""console/client.py, the one client of the admin API, against a running server with
realtime-js clients: typed records, DataFrames, one error type, settings from the environment."""

from __future__ import annotations

import pandas as pd
import pytest
from conftest import admin_token, make_token
from jsclient import JsDriver

from console.client import AdminApiError, AdminClient, Connection, Node, Table

pytestmark = [pytest.mark.js, pytest.mark.pg]


@pytest.fixture
def admin(server):
    with AdminClient(server.http_url, admin_token()) as client:
        yield client


def test_url_and_token_come_from_the_environment(server, monkeypatch):
    monkeypatch.setenv("REALTIME_SERVER_URL", server.http_url)
    monkeypatch.setenv("REALTIME_ADMIN_TOKEN", admin_token())
    with AdminClient() as client:
        assert isinstance(client.node(), Node)
    monkeypatch.delenv("REALTIME_ADMIN_TOKEN")
    with AdminClient() as client, pytest.raises(AdminApiError) as refused:
        client.node()
    assert refused.value.status == 403


def test_errors_are_admin_api_errors(admin, server):
    with pytest.raises(AdminApiError) as missing:
        admin.tenant("nope")
    assert (missing.value.status, missing.value.message) == (404, "not found")
    tenant = admin.tenants()[0].id
    with pytest.raises(AdminApiError) as invalid:
        admin.connections(tenant, sort="nonsense")
    assert invalid.value.status == 422 and "sort" in invalid.value.errors
    with AdminClient("http://127.0.0.1:9", admin_token(), timeout=0.5) as down, pytest.raises(AdminApiError) as err:
        down.node()
    assert err.value.status is None


async def test_records_and_frames_follow_the_clients(admin, server, topic):
    tenant = admin.tenants()[0].id
    async with JsDriver() as js:
        await js.join("alice", server.ws_url, make_token(sub="alice"), topic, presence={"key": "alice"})
        await js.join("bob", server.ws_url, make_token(sub="bob"), topic)
        assert await js.request({"op": "track", "channel": "alice", "payload": {"mood": "calm"}}) == "ok"

        node = admin.node()
        assert node.connections == 2 and node.pid == server.proc.pid

        view = admin.tenant(tenant)
        assert (view.counts["connections"], view.counts["presence_keys"]) == (2, 1)

        connections = admin.connections(tenant, sort="sub")
        assert isinstance(connections, Table) and all(isinstance(c, Connection) for c in connections)
        assert [c.sub for c in connections] == ["alice", "bob"]
        frame = connections.to_frame()
        assert list(frame["sub"]) == ["alice", "bob"] and (frame["bytes_out"] > 0).all()

        first = admin.connections(tenant, sort="sub", limit=1)
        assert [c.sub for c in first] == ["alice"] and first.next_cursor
        assert [c.sub for c in admin.pages(admin.connections, tenant, sort="sub", limit=1)] == ["alice", "bob"]

        presence = admin.presence(tenant, topic)
        assert list(presence.to_frame()[["key", "mood"]].itertuples(index=False, name=None)) == [("alice", "calm")]

        assert admin.broadcast(tenant, topic, "ping", {"n": 1}) == 2
        token = admin.create_token(tenant, sub="tester", ttl_seconds=60)
        await js.join("carol", server.ws_url, token, topic)

        bob = next(c for c in connections if c.sub == "bob")
        gone = admin.disconnect(tenant, bob.id)
        assert (gone.close_code, gone.message) == (1012, "Server requested disconnect")

    errors = admin.errors(tenant)
    assert isinstance(errors.to_frame(), pd.DataFrame)
    audit = admin.audit(action="tenant.token")
    assert audit and audit[0].action == "tenant.token" and "tester" in str(audit.to_frame().to_dict())
