"""The RLS policy tester (`POST /admin/v1/tenants/{id}/authorization/check`, admin/rls_tester.py)
against real realtime-js clients: on a grid of subjects × topics × actions its answer is what the
client gets, including a policy that raises; and its own input errors."""

from __future__ import annotations

import secrets
from typing import Any

import httpx
import pytest
from conftest import MS, admin_headers, make_token, messages_policy
from jsclient import JsDriver
from wire import eventually

pytestmark = [pytest.mark.js, pytest.mark.pg]

TENANT = "realtime-dev"
SUB = "current_setting('request.jwt.claims', true)::jsonb ->> 'sub'"


def raising_on(topic: str, otherwise: str) -> str:
    """Raises division_by_zero on `topic` (row-dependent: the planner cannot fold it), else `otherwise`."""
    return (
        f"case when realtime.topic() = '{topic}'"
        " then 1 / (length(realtime.topic()) - length(realtime.topic())) = 1"
        f" else {otherwise} end"
    )


def check(http_url: str, **body: Any) -> httpx.Response:
    return httpx.post(
        f"{http_url}/admin/v1/tenants/{TENANT}/authorization/check", json=body, headers=admin_headers(), timeout=10
    )


def write_checks(http_url: str) -> float:
    """The write checks clients caused (the count of the write check latency histogram)."""
    text = httpx.get(f"{http_url}/metrics").text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("realtime_tenants_write_authorization_check_count")
    )


async def test_the_tester_agrees_with_realtime_js_on_joins_and_sends(cdc, db):
    p = f"t{secrets.token_hex(3)}"
    messages_policy(db, "select", raising_on(f"{p}:boom", f"realtime.topic() like '{p}:%' and {SUB} <> 'mallory'"))
    messages_policy(db, "insert", raising_on(f"{p}:wboom", f"realtime.topic() = '{p}:' || ({SUB})"))
    subjects = {
        "alice": {"jwt": make_token("authenticated", sub="alice")},
        "mallory": {"role": "authenticated", "claims": {"sub": "mallory"}},
        "anon": {"jwt": make_token("anon")},
    }
    tokens = {"alice": subjects["alice"]["jwt"], "mallory": make_token("authenticated", sub="mallory")}
    tokens["anon"] = subjects["anon"]["jwt"]
    topics = [f"{p}:alice", f"{p}:bob", f"{p}:boom", f"{p}:wboom"]
    seen: dict[tuple[str, str, str], bool] = {}
    async with JsDriver() as js:
        for name, subject in subjects.items():
            await js.client(name, cdc.ws_url, tokens[name])
            for i, topic in enumerate(topics):
                read = check(cdc.http_url, topic=topic, action="read", **subject).json()
                write = check(cdc.http_url, topic=topic, action="write", **subject).json()
                channel = f"{name}{i}"
                await js.channel(channel, name, topic, private=True, broadcast={"self": True})
                await js.on(channel, "broadcast", event="*")
                status = await js.subscribe(channel)
                seen[(name, topic, "read")] = read["allowed"]
                if not read["allowed"]:
                    assert status["status"] == "CHANNEL_ERROR", (name, topic, status)
                    assert read["error"] is None or read["error"].startswith(status["error"])
                    continue
                assert (status["status"], status["error"]) == ("SUBSCRIBED", None), (name, topic, read)
                seen[(name, topic, "write")] = write["allowed"]
                mark = js.mark()
                checks = write_checks(cdc.http_url)
                message = {"type": "broadcast", "event": "probe", "payload": {"n": i}}
                await js.request({"op": "send", "channel": channel, "message": message})
                is_own = lambda ev, c=channel: ev["ev"] == "broadcast" and ev["channel"] == c  # noqa: E731
                if write["allowed"]:
                    await js.wait_for(is_own, 5_000 * MS, mark)
                else:
                    # The held broadcast is handled in the step that ends its write check: once
                    # /metrics counts the check, a copy would be ahead of the heartbeat reply.
                    await eventually(lambda c=checks: write_checks(cdc.http_url) > c, what="the write check")
                    await js.nothing_pending(name, is_own, mark)
    # The grid holds every case: allowed and denied reads and writes, for both subject forms.
    assert seen[("alice", f"{p}:alice", "read")] and seen[("alice", f"{p}:alice", "write")]
    assert seen[("alice", f"{p}:bob", "read")] and not seen[("alice", f"{p}:bob", "write")]
    assert not seen[("alice", f"{p}:wboom", "write")] and not seen[("alice", f"{p}:boom", "read")]
    assert not any(seen[("mallory", topic, "read")] for topic in topics)
    assert not any(seen[("anon", topic, "read")] for topic in topics)


def test_a_raising_policy_is_reported_with_its_error_and_the_policies_are_listed(cdc, db):
    p = f"t{secrets.token_hex(3)}"
    messages_policy(db, "select", raising_on(f"{p}:boom", "true"))
    messages_policy(db, "insert", f"realtime.topic() = '{p}:ok'")
    body = check(cdc.http_url, topic=f"{p}:boom", role="authenticated", claims={"sub": "x"}).json()
    assert body["allowed"] is False
    assert body["error"] == (
        f"Unauthorized: You do not have permissions to read from this Channel topic: {p}:boom"
        " (policy error: division by zero)"
    )
    assert body["duration_ms"] > 0
    mine = [policy for policy in body["policies"] if p in (policy["using"] or "")]
    assert len(mine) == 1 and mine[0]["command"] == "SELECT" and mine[0]["roles"] == ["authenticated"]
    assert mine[0]["permissive"] is True and mine[0]["with_check"] is None
    assert all(policy["command"] in ("SELECT", "ALL") for policy in body["policies"])
    write = check(cdc.http_url, topic=f"{p}:ok", action="write", role="authenticated").json()
    assert (write["allowed"], write["error"]) == (True, None)
    assert all(policy["command"] in ("INSERT", "ALL") for policy in write["policies"])
    assert any(p in (policy["with_check"] or "") for policy in write["policies"])
    # anon has no policy of these: none is listed for it.
    anon = check(cdc.http_url, topic=f"{p}:ok", action="write", role="anon").json()
    assert anon["allowed"] is False and not any(p in (pol["with_check"] or "") for pol in anon["policies"])


def test_bad_subjects_and_input_are_422s_naming_the_field(cdc):
    expired = check(cdc.http_url, topic="t", jwt=make_token("authenticated", exp_in=-60))
    assert expired.status_code == 422
    [reason] = expired.json()["errors"]["jwt"]
    assert reason.startswith("InvalidJWTToken: Token has expired")
    forged = check(cdc.http_url, topic="t", jwt=make_token("authenticated", secret="not-the-tenant-secret" * 2))
    assert forged.status_code == 422 and "jwt" in forged.json()["errors"]
    assert check(cdc.http_url, topic="t").json() == {"errors": {"role": ["can't be blank without jwt"]}}
    assert "action" in check(cdc.http_url, topic="t", role="anon", action="delete").json()["errors"]
    assert "headers" in check(cdc.http_url, topic="t", role="anon", headers={"host": "x"}).json()["errors"]
    assert check(cdc.http_url, topic="t", role="anon", private=False).json()["allowed"] is True
    unknown = httpx.post(
        f"{cdc.http_url}/admin/v1/tenants/nope/authorization/check", json={"topic": "t"}, headers=admin_headers()
    )
    assert unknown.status_code == 404
