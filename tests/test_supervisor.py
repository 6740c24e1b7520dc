"""tasks.Supervisor: the background tasks of one owner, cancelled and awaited at its stop,
within a bound; and App.stop() ending the joins and checks its sessions left running."""

from __future__ import annotations

import asyncio

from fakes import Client, settle

from realtime_core.app import App
from realtime_core.tasks import Supervisor


async def test_stop_cancels_every_running_task_and_waits_for_its_cleanup():
    supervisor = Supervisor()
    cleaned: list[str] = []

    async def worker(name: str) -> None:
        try:
            await asyncio.sleep(3600)
        finally:
            await asyncio.sleep(0)  # cleanup that itself awaits: stop() must wait for it
            cleaned.append(name)

    tasks = [supervisor.spawn(worker(f"w{i}"), name=f"w{i}") for i in range(3)]
    await settle()
    assert len(supervisor) == 3
    assert await supervisor.stop(timeout=5) == []
    assert sorted(cleaned) == ["w0", "w1", "w2"]
    assert all(task.cancelled() for task in tasks)
    assert len(supervisor) == 0


async def test_stop_is_bounded_and_names_a_task_that_ignores_cancellation():
    supervisor = Supervisor()
    release = asyncio.Event()

    async def stubborn() -> None:
        while not release.is_set():
            try:
                await release.wait()
            except asyncio.CancelledError:
                continue  # a task that does not stop when told to

    task = supervisor.spawn(stubborn(), name="stubborn")
    await settle()
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert await supervisor.stop(timeout=0.2) == ["stubborn"]
    assert loop.time() - started < 2
    release.set()
    await task
    assert len(supervisor) == 0


async def test_finished_tasks_leave_and_stop_without_tasks_returns_at_once():
    supervisor = Supervisor()
    await supervisor.spawn(asyncio.sleep(0), name="quick")
    await settle()
    assert len(supervisor) == 0
    assert await supervisor.stop(timeout=5) == []


async def test_app_stop_cancels_and_awaits_a_join_still_running(app: App, monkeypatch):
    """A join waiting on something slow (here its authorization) when the server stops is
    cancelled and has ended once stop() returns: nothing of it runs after the pools close."""
    entered = asyncio.Event()
    ended: list[bool] = []

    async def slow_join(self, msg):  # stands in for a join blocked on the database
        entered.set()
        try:
            await asyncio.sleep(3600)
        finally:
            ended.append(True)

    monkeypatch.setattr("realtime_core.socket.RealtimeSocket._join", slow_join)
    client = Client(app)
    client.join()
    await asyncio.wait_for(entered.wait(), 5)
    assert len(app.tasks) == 1
    await app.stop()
    assert ended == [True]
    assert len(app.tasks) == 0
