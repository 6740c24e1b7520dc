"""Background tasks never fail silently: each failure is logged once and the client is answered.

A task whose exception nobody retrieves is reported by asyncio only as "Task
exception was never retrieved", to the loop's exception handler, when the task
is garbage collected; the `loop_errors` fixture records every call of that
handler during a test and fails the test if there was one."""

from __future__ import annotations

import asyncio
import gc
import logging
from typing import Any

import pytest
from fakes import TOPIC, Client, give_services, settle

from realtime_core import tasks
from realtime_core.postgres_changes import cdc as cdc_module
from realtime_core.postgres_changes.cdc import PostgresChanges
from realtime_core.postgres_changes.settings import CdcSettings

TASK_LOG = "realtime_core.tasks"


@pytest.fixture
async def loop_errors():
    """The contexts passed to the loop's exception handler during the test; must stay empty."""
    loop = asyncio.get_running_loop()
    seen: list[dict[str, Any]] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: seen.append(context))
    try:
        yield seen
        await settle()
        gc.collect()  # an unretrieved task exception is reported when the task is collected
        await settle()
    finally:
        loop.set_exception_handler(previous)
    assert not seen, [c.get("message") for c in seen]


def task_failures(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == TASK_LOG and r.levelno == logging.ERROR]


class Authorizer:
    """Reads allowed; a write check fails with an error nobody planned for."""

    async def read(self, topic: str, claims: Any, headers: Any, extensions: Any) -> dict[str, bool]:
        return dict.fromkeys(extensions, True)

    async def write(self, topic: str, claims: Any, headers: Any, extensions: Any) -> dict[str, bool]:
        raise RuntimeError("boom")


async def test_spawn_logs_a_failure_once_and_hands_it_to_on_error(loop_errors, caplog):
    handled: list[BaseException] = []

    async def fail() -> None:
        raise ValueError("broken")

    task = tasks.spawn(fail(), name="failing", on_error=handled.append)
    await settle()
    assert task.done() and isinstance(handled[0], ValueError) and len(handled) == 1
    [record] = task_failures(caplog)
    assert record.getMessage() == "task failing failed" and record.exc_info[1] is handled[0]


async def test_spawn_does_not_report_a_cancelled_task(loop_errors, caplog):
    handled: list[BaseException] = []
    group: set[asyncio.Task[Any]] = set()
    task = tasks.spawn(asyncio.sleep(10), on_error=handled.append, group=group)
    assert group == {task}
    task.cancel()
    await settle()
    assert not handled and not task_failures(caplog) and not group


async def test_a_write_check_that_fails_unexpectedly_errors_the_channel(app, loop_errors, caplog):
    give_services(app, authorizer=Authorizer())
    client = Client(app)
    client.join(config={"private": True})
    await settle()
    assert client.received()[0][4]["status"] == "ok"
    client.push("1", "2", TOPIC, "broadcast", {"type": "broadcast", "event": "e", "payload": {}})
    await settle()
    # As upstream's crashed channel process: phx_error (ref = join_ref), the channel is gone.
    assert client.received() == [["1", "1", TOPIC, "phx_error", {}]]
    assert TOPIC not in client.socket.channels
    assert len(task_failures(caplog)) == 1


async def test_a_channel_that_fails_to_start_errors_after_its_join_reply(app, loop_errors, caplog):
    class Cdc:
        def subscribe(self, channel: Any, entries: Any, legacy: bool) -> None:
            raise RuntimeError("boom")

        def unsubscribe(self, channel: Any) -> None:
            pass

    give_services(app, cdc=Cdc())
    client = Client(app)
    client.join(config={"postgres_changes": [{"event": "*", "schema": "public", "table": "t"}]})
    await settle()
    reply, error = client.received()
    assert reply[3] == "phx_reply" and reply[4]["status"] == "ok"
    assert error == ["1", "1", TOPIC, "phx_error", {}]
    assert TOPIC not in client.socket.channels
    assert any("failed to start" in r.getMessage() for r in caplog.records)


async def test_an_unexpected_subscribe_failure_reaches_the_client_as_a_system_error(
    app, loop_errors, caplog, monkeypatch
):
    def parse_params(params: object) -> Any:
        raise RuntimeError("unforeseen")

    monkeypatch.setattr(cdc_module, "parse_params", parse_params)
    tenant = app.tenants.get("realtime-dev")
    cdc = PostgresChanges(tenant, "dbname=unused", CdcSettings(), app.now, app.hub)  # never started: no connection
    give_services(app, cdc=cdc)
    client = Client(app)
    client.join(config={"postgres_changes": [{"event": "*", "schema": "public", "table": "t"}]})
    await settle()
    reply, system = client.received()
    assert reply[4]["status"] == "ok"
    assert system == [
        "1",
        None,
        TOPIC,
        "system",
        {
            "extension": "postgres_changes",
            "status": "error",
            "message": "UnableToSubscribeToPostgres: RuntimeError: unforeseen",
            "channel": "room",
        },
    ]
    assert len(task_failures(caplog)) == 1
    assert TOPIC in client.socket.channels  # only the subscription failed, not the channel
