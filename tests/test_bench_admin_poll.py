"""bench/admin_poll.py: what `bench fanout --admin-pollers N` runs beside our server reads every
console view of the admin API, and fails loudly when the API does."""

from __future__ import annotations

import pytest
from conftest import admin_token, make_token
from wire import V2, RawClient

from bench.admin_poll import poll_once
from console.client import AdminApiError, AdminClient

pytestmark = pytest.mark.pg


async def test_one_refresh_reads_every_view_and_the_busiest_channel(server, topic):
    async with await RawClient.open(server.socket_url(make_token(), V2)) as client:
        await client.join(f"realtime:{topic}")
        with AdminClient(server.http_url, admin_token(admin="read")) as admin:
            tenant = admin.tenants()[0].id
            # 11 views, and the busiest channel's detail and presence.
            assert poll_once(admin, tenant) == 13


def test_a_refused_token_is_a_failure_not_a_silent_zero(server):
    with AdminClient(server.http_url, admin_token(role="anon")) as admin, pytest.raises(AdminApiError) as info:
        poll_once(admin, "realtime-dev")
    assert info.value.status == 403
