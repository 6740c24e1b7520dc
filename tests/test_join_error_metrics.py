"""Refused joins on GET /metrics: the total, and upstream's realtime_channel_global_error by code."""

from __future__ import annotations

from typing import Any

import pytest
from fakes import Client, close_sockets, make_app, settle

from realtime_core.authorization import UNREACHABLE_TEXT
from realtime_core.errors import UnableToConnectToProject


class UnreachableAuthorizer:
    async def read(self, topic: str, claims: Any, headers: Any, extensions: Any) -> dict[str, bool]:
        raise UnableToConnectToProject(UNREACHABLE_TEXT)


@pytest.fixture
async def app():
    app = make_app()
    yield app
    close_sockets(app)


async def test_refused_joins_are_counted_by_code(app):
    app.authorizers["realtime-dev"] = UnreachableAuthorizer()  # type: ignore[assignment]
    client = Client(app)
    client.join("realtime:", "1")
    client.join("realtime:", "2")
    client.join("realtime:private", "3", config={"private": True})
    await settle()
    reasons = [message[4]["response"]["reason"] for message in client.received()]
    assert reasons == [
        "TopicNameRequired: You must provide a topic name",
        "TopicNameRequired: You must provide a topic name",
        "UnableToConnectToProject: Realtime was unable to connect to the project database",
    ]
    del app.authorizers["realtime-dev"]  # its latency histograms are not what this test reads
    lines = app.metrics.render().splitlines()
    assert "realtime_channel_join_errors_total 3" in lines
    assert "# TYPE realtime_channel_global_error counter" in lines
    assert [line for line in lines if line.startswith("realtime_channel_global_error{")] == [
        'realtime_channel_global_error{code="TopicNameRequired"} 2',
        'realtime_channel_global_error{code="UnableToConnectToProject"} 1',
    ]
