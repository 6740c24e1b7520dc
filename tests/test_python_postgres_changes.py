"""Postgres Changes with the PyPI `realtime` client (vsn 1.0.0, pydantic-validated messages, docs/protocol.md §10.7)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from conftest import MS, make_token
from realtime import AsyncRealtimeClient, RealtimeSubscribeStates
from test_postgres_changes import new_table, run

pytestmark = pytest.mark.pg


async def test_the_python_client_receives_every_event_type(cdc, db, topic):
    table = new_table(db, "id int primary key, title text")
    client = AsyncRealtimeClient(cdc.ws_url, make_token())
    await client.connect()
    try:
        received: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        subscribed = asyncio.Event()
        system: list[dict[str, Any]] = []
        channel = client.channel(topic)
        channel.on_postgres_changes("*", schema="public", table=table, callback=received.put_nowait)
        channel.on_system(lambda payload: (system.append(payload), subscribed.set()))
        states: list[RealtimeSubscribeStates] = []
        await channel.subscribe(lambda state, error: states.append(state))
        await asyncio.wait_for(subscribed.wait(), 10_000 * MS)
        assert states == [RealtimeSubscribeStates.SUBSCRIBED]
        assert system[0].message == "Subscribed to PostgreSQL"

        run(db, "insert into {t} values (1, 'a')", table)
        run(db, "update {t} set title = 'b' where id = 1", table)
        run(db, "delete from {t} where id = 1", table)
        events = [await asyncio.wait_for(received.get(), 5_000 * MS) for _ in range(3)]
        assert [e["data"]["type"] for e in events] == ["INSERT", "UPDATE", "DELETE"]
        assert events[0]["data"]["record"] == {"id": 1, "title": "a"}
        assert events[1]["data"]["old_record"] == {"id": 1}
        assert events[2]["data"]["old_record"] == {"id": 1}
    finally:
        await client.close()
