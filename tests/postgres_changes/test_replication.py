"""Tests for realtime_core.postgres_changes.replication: the slot, both transports, and what the slot confirms.

Each test runs a ReplicationStream in "stream" (START_REPLICATION) and "poll"
(pg_logical_slot_peek_binary_changes) mode against a database of this module,
with a slot and a publication of its own. The slot's confirmed_flush_lsn is
read from pg_replication_slots: it is what a restart resumes from, so it must
never pass a transaction that on_batch has not finished (docs/design.md §3)."""

from __future__ import annotations

import asyncio
import inspect
import secrets
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import psycopg
import pytest
from conftest import MS, _create_database
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from realtime_core.postgres_changes.pgoutput import Begin, Commit, Delete, Insert, Relation, Update, parse_lsn
from realtime_core.postgres_changes.replication import ReplicationStream, SlotConflict, Transaction

pytestmark = pytest.mark.pg

MODES = ["stream", "poll"]
WAIT = 5000 * MS


# -- fixtures and helpers --


def _database(admin_dsn: str, prefix: str) -> tuple[str, str]:
    dsn = _create_database(admin_dsn, prefix)
    return conninfo_to_dict(dsn)["dbname"], dsn


def _drop_database(admin_dsn: str, name: str) -> None:
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        # A database with a logical slot cannot be dropped, even WITH (FORCE).
        conn.execute(
            "select pg_terminate_backend(active_pid) from pg_replication_slots where database = %s and active",
            (name,),
        )
        for _ in range(100):
            cur = conn.execute("select count(*) from pg_replication_slots where database = %s and active", (name,))
            if cur.fetchone()[0] == 0:  # type: ignore[index]
                break
            time.sleep(20 * MS)
        conn.execute(
            "select pg_drop_replication_slot(slot_name) from pg_replication_slots where database = %s", (name,)
        )
        conn.execute(sql.SQL("drop database {} with (force)").format(sql.Identifier(name)))


@pytest.fixture(scope="module")
def db_dsn(pg_dsn: str) -> Iterator[str]:
    """A database of this module's own; its slots and itself are dropped at the end."""
    name, dsn = _database(pg_dsn, "rt_replication")
    yield dsn
    _drop_database(pg_dsn, name)


@pytest.fixture
def db(db_dsn: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(db_dsn, autocommit=True) as conn:
        yield conn


class Recorder:
    """An on_batch that records every call; it can be made to block or to fail."""

    def __init__(self) -> None:
        self.calls: list[list[Transaction]] = []  # every call, as it started
        self.done: list[Transaction] = []  # transactions of the calls that returned
        self.gate: asyncio.Event | None = None  # when set to an unset Event, calls wait for it
        self.failures = 0  # the next this-many calls raise

    async def __call__(self, transactions: list[Transaction]) -> None:
        self.calls.append(transactions)
        if self.failures:
            self.failures -= 1
            raise RuntimeError("dispatch failed")
        if self.gate is not None:
            await self.gate.wait()
        self.done.extend(transactions)


class Setup:
    """Names for one test: a slot, a publication, a published and an unpublished table."""

    def __init__(self, db: psycopg.Connection[Any], dsn: str) -> None:
        self.db = db
        self.dsn = dsn
        token = secrets.token_hex(4)
        self.slot = f"rt_repl_{token}"
        self.publication = f"pub_{token}"
        self.table = f"t_{token}"
        self.other = f"u_{token}"
        self.streams: list[ReplicationStream] = []

    def tables(self, publish: bool = True) -> None:
        for name in (self.table, self.other):
            self.db.execute(sql.SQL("create table {} (id int primary key, v text)").format(sql.Identifier(name)))
        if publish:
            self.db.execute(
                sql.SQL("create publication {} for table {}").format(
                    sql.Identifier(self.publication), sql.Identifier(self.table)
                )
            )

    def stream(self, mode: str, on_batch: Recorder, **kwargs: Any) -> ReplicationStream:
        kwargs.setdefault("poll_interval", 20 * MS)
        stream = ReplicationStream(
            self.dsn, slot=self.slot, publication=self.publication, on_batch=on_batch, mode=mode, **kwargs
        )
        self.streams.append(stream)
        return stream

    def run(self, query: str, *params: Any) -> None:
        self.db.execute(sql.SQL(query).format(t=sql.Identifier(self.table), u=sql.Identifier(self.other)), params)

    def slot_row(self) -> tuple[Any, ...] | None:
        return self.db.execute(
            "select confirmed_flush_lsn::text, active, temporary, plugin, database from pg_replication_slots"
            " where slot_name = %s",
            (self.slot,),
        ).fetchone()

    def confirmed(self) -> int:
        row = self.slot_row()
        assert row is not None and row[0] is not None
        return parse_lsn(row[0])

    def feedback_since(self, when: float) -> bool:
        """Whether the slot's walsender got a standby status update sent after `when` (epoch s)."""
        row = self.db.execute(
            "select r.reply_time > to_timestamp(%s) from pg_stat_replication r"
            " join pg_replication_slots s on s.active_pid = r.pid where s.slot_name = %s",
            (when, self.slot),
        ).fetchone()
        return bool(row and row[0])

    def current_lsn(self) -> int:
        return parse_lsn(self.db.execute("select pg_current_wal_lsn()::text").fetchone()[0])  # type: ignore[index]


@pytest.fixture
async def setup(db: psycopg.Connection[Any], db_dsn: str) -> AsyncIterator[Setup]:
    s = Setup(db, db_dsn)
    yield s
    for stream in s.streams:
        await stream.stop()
    with psycopg.connect(db_dsn, autocommit=True) as conn:
        for _ in range(100):  # the walsender may take a moment to release the slot
            row = conn.execute("select active from pg_replication_slots where slot_name = %s", (s.slot,)).fetchone()
            if row is None:
                break
            if not row[0]:
                conn.execute("select pg_drop_replication_slot(%s)", (s.slot,))
                break
            await asyncio.sleep(20 * MS)


async def wait_until(check: Callable[[], Any], what: str, timeout: float = WAIT) -> None:
    """Poll `check` (sync or async) every 20 MS until it is true."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        result = check()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"{what} not reached within {timeout:.2f}s")
        await asyncio.sleep(20 * MS)


def changes(txn: Transaction) -> list[Any]:
    """The row changes of a transaction (Relation messages left out)."""
    return [m for m in txn.messages if not isinstance(m, Relation)]


async def started(stream: ReplicationStream) -> None:
    stream.start()
    await asyncio.wait_for(stream.ready.wait(), WAIT)
    await wait_until(lambda: stream.connected, "connected")


# -- the slot and the publication --


@pytest.mark.parametrize("mode", MODES)
async def test_creates_the_publication_and_a_durable_pgoutput_slot_when_missing(setup, mode):
    setup.tables(publish=False)
    assert setup.slot_row() is None
    stream = setup.stream(mode, Recorder())
    await started(stream)
    confirmed, _, temporary, plugin, database = setup.slot_row()
    assert (temporary, plugin) == (False, "pgoutput")
    assert database == setup.db.execute("select current_database()").fetchone()[0]
    assert confirmed is not None
    row = setup.db.execute("select 1 from pg_publication where pubname = %s", (setup.publication,)).fetchone()
    assert row is not None


@pytest.mark.parametrize("mode", MODES)
async def test_an_existing_slot_is_reused_from_its_confirmed_lsn(setup, mode):
    setup.tables()
    setup.db.execute("select pg_create_logical_replication_slot(%s, 'pgoutput')", (setup.slot,))
    setup.run("insert into {t} values (1, 'before start')")  # committed after the slot existed
    recorder = Recorder()
    stream = setup.stream(mode, recorder)
    await stream.ensure_slot()
    assert stream.confirmed_lsn == setup.confirmed()
    await started(stream)
    await wait_until(lambda: recorder.done, "delivery")
    [insert] = changes(recorder.done[0])
    assert isinstance(insert, Insert) and insert.new == ("1", "before start")


async def test_a_slot_of_another_database_is_a_slot_conflict(setup, pg_dsn):
    name, other_dsn = _database(pg_dsn, "rt_replication_other")
    try:
        with psycopg.connect(other_dsn, autocommit=True) as other:
            other.execute("select pg_create_logical_replication_slot(%s, 'pgoutput')", (setup.slot,))
        stream = setup.stream("stream", Recorder())
        with pytest.raises(SlotConflict) as info:
            await stream.ensure_slot()
        assert str(info.value) == (
            f"replication slot {setup.slot} belongs to database {name!r} (plugin pgoutput); "
            "give this server its own slot with SLOT_NAME_SUFFIX or REALTIME_SLOT_NAME"
        )
        # Running, the stream keeps retrying and reports why; it never becomes ready.
        stream.start()
        await wait_until(lambda: stream.last_error is not None, "an error")
        assert stream.last_error.startswith("SlotConflict: replication slot")
        assert not stream.ready.is_set() and not stream.connected
    finally:
        await stream.stop()
        _drop_database(pg_dsn, name)


async def test_a_slot_of_another_plugin_is_a_slot_conflict(setup):
    # test_decoding ships with PostgreSQL itself (the embedded one and the distributions'); a
    # server without it fails here rather than leaving the check unrun.
    setup.db.execute("select pg_create_logical_replication_slot(%s, 'test_decoding')", (setup.slot,))
    with pytest.raises(SlotConflict, match=r"\(plugin test_decoding\)"):
        await setup.stream("poll", Recorder()).ensure_slot()


# -- delivery --


@pytest.mark.parametrize("mode", MODES)
async def test_committed_transactions_arrive_in_commit_order_with_their_messages(setup, mode):
    setup.tables()
    recorder = Recorder()
    await started(setup.stream(mode, recorder))
    with setup.db.transaction():
        setup.run("insert into {t} values (1, 'a')")
        setup.run("update {t} set v = 'b' where id = 1")
        setup.run("insert into {u} values (1, 'unpublished')")
        setup.run("delete from {t} where id = 1")
    with setup.db.transaction():
        setup.run("insert into {t} values (2, 'x')")
        setup.db.execute("savepoint s")
        setup.run("insert into {t} values (3, 'rolled back')")
        setup.db.execute("rollback to savepoint s")
    with setup.db.transaction(force_rollback=True):
        setup.run("insert into {t} values (4, 'never committed')")
    for i in range(5, 10):
        setup.run("insert into {t} values (%s, 'one by one')", i)
    setup.run("insert into {t} values (10, 'marker')")  # delivered after anything committed before
    await wait_until(lambda: len(recorder.done) >= 8, "eight transactions")
    txns = recorder.done[:-1]
    assert [changes(t)[0].new[0] for t in recorder.done[-1:]] == ["10"]
    assert len(txns) == 7
    for txn in txns:
        assert isinstance(txn.begin, Begin) and isinstance(txn.commit, Commit)
        assert txn.begin.final_lsn == txn.commit.commit_lsn
        assert txn.begin.commit_time_us == txn.commit.commit_time_us
    assert [t.commit.commit_lsn for t in txns] == sorted(t.commit.commit_lsn for t in txns)
    assert len({t.begin.xid for t in txns}) == 7
    # The relation is described before its first change.
    assert isinstance(txns[0].messages[0], Relation) and txns[0].messages[0].name == setup.table
    first = changes(txns[0])
    assert [type(m) for m in first] == [Insert, Update, Delete]
    assert first[0].new == ("1", "a") and first[1].new == ("1", "b") and first[2].old[0] == "1"
    assert [m.new for m in changes(txns[1])] == [("2", "x")]
    assert [changes(t)[0].new[0] for t in txns[2:]] == ["5", "6", "7", "8", "9"]


# -- what the slot confirms --


@pytest.mark.parametrize("mode", MODES)
async def test_the_slot_confirms_a_transaction_only_after_on_batch_returned(setup, mode):
    setup.tables()
    recorder = Recorder()
    recorder.gate = asyncio.Event()
    stream = setup.stream(mode, recorder)
    await started(stream)
    setup.run("insert into {t} values (1, 'held')")
    await wait_until(lambda: recorder.calls, "on_batch called")
    end_lsn = recorder.calls[0][0].commit.end_lsn
    setup.run("insert into {u} values (1, 'traffic the stream skips')")  # more WAL, more keepalives
    if mode == "stream":
        # Feedback goes out from a task of its own: wait until PostgreSQL got one sent after the
        # batch was held. (In poll mode the loop that would advance the slot is held in on_batch.)
        held = time.time()
        await wait_until(lambda: setup.feedback_since(held), "feedback sent while on_batch is held")
    assert setup.confirmed() < end_lsn
    assert stream.confirmed_lsn < end_lsn
    assert recorder.done == []
    recorder.gate.set()
    await wait_until(lambda: setup.confirmed() >= end_lsn, "confirmed past the commit")
    assert len(recorder.done) == 1


@pytest.mark.parametrize("mode", MODES)
async def test_a_stream_stopped_during_on_batch_redelivers_that_transaction(setup, mode):
    setup.tables()
    first = Recorder()
    first.gate = asyncio.Event()
    stream = setup.stream(mode, first)
    await started(stream)
    setup.run("insert into {t} values (1, 'in flight')")
    await wait_until(lambda: first.calls, "on_batch called")
    await stream.stop()  # cancels on_batch while it waits
    assert first.done == []
    second = Recorder()
    await started(setup.stream(mode, second))
    await wait_until(lambda: second.done, "redelivery")
    assert [m.new for m in changes(second.done[0])] == [("1", "in flight")]
    assert second.done[0].begin.xid == first.calls[0][0].begin.xid


@pytest.mark.parametrize("mode", MODES)
async def test_a_failing_on_batch_reconnects_and_gets_the_same_transaction_again(setup, mode):
    setup.tables()
    recorder = Recorder()
    recorder.failures = 1
    stream = setup.stream(mode, recorder)
    await started(stream)
    setup.run("insert into {t} values (1, 'retry me')")
    await wait_until(lambda: recorder.done, "redelivery")
    assert len(recorder.calls) == 2
    failed, delivered = recorder.calls[0][0], recorder.calls[1][0]
    assert delivered.begin.xid == failed.begin.xid
    assert delivered.commit.end_lsn == failed.commit.end_lsn
    assert [m.new for m in changes(delivered)] == [("1", "retry me")]
    assert stream.reconnects == 1
    await wait_until(lambda: setup.confirmed() >= delivered.commit.end_lsn, "confirmed")
    setup.run("insert into {t} values (2, 'marker')")  # delivered after anything committed before
    await wait_until(lambda: len(recorder.calls) >= 3, "the marker")
    assert [m.new for m in changes(recorder.calls[2][0])] == [("2", "marker")]  # nothing delivered twice


@pytest.mark.parametrize("mode", MODES)
async def test_an_idle_slot_confirms_wal_of_unpublished_tables(setup, mode):
    # Without this, writes to tables outside the publication would pile up
    # WAL behind the slot for as long as the published tables stay quiet.
    setup.tables()
    recorder = Recorder()
    await started(setup.stream(mode, recorder))
    for i in range(20):
        setup.run("insert into {u} values (%s, 'not published')", i)
    target = setup.current_lsn()
    await wait_until(lambda: setup.confirmed() >= target, "the slot confirming past unpublished writes")
    assert recorder.calls == []


@pytest.mark.parametrize("mode", MODES)
async def test_no_transaction_is_lost_while_unpublished_writes_move_the_slot(setup, db_dsn, mode):
    setup.tables()
    recorder = Recorder()
    await started(setup.stream(mode, recorder, poll_interval=2 * MS))
    async with await psycopg.AsyncConnection.connect(db_dsn, autocommit=True) as writer:
        published = sql.SQL("insert into {} values (%s, 'p')").format(sql.Identifier(setup.table))
        unpublished = sql.SQL("insert into {} values (%s, 'u')").format(sql.Identifier(setup.other))
        for i in range(300):
            await writer.execute(unpublished if i % 3 else published, (i,))
            if i % 10 == 0:
                await asyncio.sleep(1 * MS)  # let the stream run between commits
    expected = [str(i) for i in range(0, 300, 3)]
    await wait_until(lambda: len(recorder.done) >= len(expected), "every published row")
    assert [changes(t)[0].new[0] for t in recorder.done] == expected


# -- reconnecting and stopping --


def terminate_backend(setup: Setup, mode: str) -> list[tuple[Any, ...]]:
    """Terminate the stream's server process, found the way an operator would."""
    if mode == "stream":
        query = (
            "select pg_terminate_backend(r.pid) from pg_stat_replication r"
            " join pg_replication_slots s on s.active_pid = r.pid"
            " where r.application_name = 'realtime_replication_connection' and s.slot_name = %s"
        )
        return setup.db.execute(query, (setup.slot,)).fetchall()
    query = (
        "select pg_terminate_backend(pid) from pg_stat_activity"
        " where application_name = 'realtime_replication_poller' and datname = current_database()"
    )
    return setup.db.execute(query).fetchall()


@pytest.mark.parametrize("mode", MODES)
async def test_the_stream_reconnects_after_its_backend_is_terminated(setup, mode):
    setup.tables()
    recorder = Recorder()
    stream = setup.stream(mode, recorder)
    await started(stream)
    setup.run("insert into {t} values (1, 'before')")
    await wait_until(lambda: len(recorder.done) == 1, "first delivery")
    assert terminate_backend(setup, mode) == [(True,)]
    setup.run("insert into {t} values (2, 'while reconnecting')")
    await wait_until(lambda: stream.reconnects >= 1, "a reconnect")
    setup.run("insert into {t} values (3, 'after')")
    setup.run("insert into {t} values (4, 'marker')")  # delivered after anything committed before
    await wait_until(lambda: len(recorder.done) >= 4, "later deliveries")
    assert [changes(t)[0].new[0] for t in recorder.done] == ["1", "2", "3", "4"]
    assert stream.connected and stream.last_error is None


@pytest.mark.parametrize("mode", MODES)
async def test_stop_closes_the_connection_and_releases_the_slot(setup, mode):
    setup.tables()
    stream = setup.stream(mode, Recorder())
    await started(stream)
    await stream.stop()
    assert not stream.connected
    app = "realtime_replication_connection" if mode == "stream" else "realtime_replication_poller"

    def gone() -> bool:
        row = setup.db.execute(
            "select count(*) from pg_stat_activity where application_name = %s and datname = current_database()",
            (app,),
        ).fetchone()
        return row[0] == 0 and setup.slot_row()[1] is False

    await wait_until(gone, "the connection closed and the slot inactive", 2000 * MS)
    await stream.stop()  # a second stop is harmless
    # The slot stays: a later start resumes from it.
    assert setup.slot_row() is not None


def test_an_unknown_mode_is_refused():
    with pytest.raises(ValueError, match="replication mode must be 'stream' or 'poll', got 'copy'"):
        ReplicationStream("", slot="s", publication="p", on_batch=Recorder(), mode="copy")
