"""Tests for realtime_core.postgres_changes.pgoutput: the replication envelope and pgoutput proto_version 1.

Fixtures follow PostgreSQL's "Logical Replication Message Formats" and
"Streaming Replication Protocol" pages, one commented line per field."""

from __future__ import annotations

import contextlib
import copy
import pickle
import secrets
import struct
from collections.abc import Iterator

import psycopg
import pytest
from conftest import scratch_database

from realtime_core.postgres_changes.pgoutput import (
    UNCHANGED,
    Begin,
    Commit,
    Delete,
    Insert,
    Keepalive,
    LogicalMessage,
    Origin,
    PgOutputError,
    Relation,
    RelationColumn,
    Truncate,
    TypeInfo,
    Update,
    XLogData,
    decode,
    format_lsn,
    parse_copy_data,
    parse_lsn,
    pg_now_us,
    standby_status,
)

# -- fixtures: pgoutput messages --

BEGIN = (
    b"B"  # type
    b"\x00\x00\x00\x01\x6a\x00\x00\x28"  # final LSN 1/6A000028
    b"\x00\x02\xe5\x5c\x9a\x1f\x40\x00"  # commit time, µs since 2000-01-01
    b"\x00\x00\x02\xee"  # xid 750
)

COMMIT = (
    b"C"  # type
    b"\x00"  # flags
    b"\x00\x00\x00\x01\x6a\x00\x00\x28"  # commit LSN 1/6A000028
    b"\x00\x00\x00\x01\x6a\x00\x00\x58"  # end LSN 1/6A000058
    b"\x00\x02\xe5\x5c\x9a\x1f\x40\x00"  # commit time
)

ORIGIN = (
    b"O"  # type
    b"\x00\x00\x00\x00\x12\x34\x56\x78"  # commit LSN on the origin 0/12345678
    b"node_a\x00"  # origin name
)

RELATION = (
    b"R"  # type
    b"\x00\x00\x40\x00"  # relation oid 16384
    b"public\x00"  # namespace
    b"todos\x00"  # relation name
    b"d"  # replica identity: default
    b"\x00\x03"  # 3 columns
    b"\x01"  # column 1 flags: part of the key
    b"id\x00"  # name
    b"\x00\x00\x00\x14"  # type oid 20 (int8)
    b"\xff\xff\xff\xff"  # type modifier -1
    b"\x00"  # column 2 flags
    b"title\x00"  # name
    b"\x00\x00\x04\x13"  # type oid 1043 (varchar)
    b"\x00\x00\x00\x68"  # type modifier 104: varchar(100)
    b"\x00"  # column 3 flags
    b"done\x00"  # name
    b"\x00\x00\x00\x10"  # type oid 16 (bool)
    b"\xff\xff\xff\xff"  # type modifier -1
)

RELATION_CATALOG = (
    b"R"  # type
    b"\x00\x00\x00\x01"  # relation oid 1
    b"\x00"  # namespace: empty for pg_catalog
    b"t\x00"  # relation name
    b"f"  # replica identity: full
    b"\x00\x00"  # no columns
)

TYPE = (
    b"Y"  # type
    b"\x00\x00\x40\x10"  # type oid 16400
    b"public\x00"  # namespace
    b"mood\x00"  # type name
)

INSERT = (
    b"I"  # type
    b"\x00\x00\x40\x00"  # relation oid 16384
    b"N"  # new tuple follows
    b"\x00\x03"  # 3 columns
    b"t"  # column 1: text
    b"\x00\x00\x00\x01"  # length 1
    b"1"  # value
    b"t"  # column 2: text
    b"\x00\x00\x00\x06"  # length 6 (bytes, not characters)
    b"h\xc3\xa9llo"  # value "héllo"
    b"n"  # column 3: NULL
)

INSERT_EMPTY_TEXT = (
    b"I"  # type
    b"\x00\x00\x40\x00"  # relation oid 16384
    b"N"  # new tuple follows
    b"\x00\x01"  # 1 column
    b"t"  # column 1: text
    b"\x00\x00\x00\x00"  # length 0
)

INSERT_BINARY = (
    b"I"  # type
    b"\x00\x00\x40\x00"  # relation oid 16384
    b"N"  # new tuple follows
    b"\x00\x01"  # 1 column
    b"b"  # column 1: binary
    b"\x00\x00\x00\x04"  # length 4
    b"\x00\x00\x00\x2a"  # int4 42 in binary send format
)

UPDATE_NEW_ONLY = (
    b"U"  # type
    b"\x00\x00\x40\x00"  # relation oid 16384
    b"N"  # new tuple, no old one: default identity, key unchanged
    b"\x00\x03"  # 3 columns
    b"t"  # column 1: text
    b"\x00\x00\x00\x01"  # length 1
    b"1"  # value
    b"u"  # column 2: unchanged TOAST
    b"t"  # column 3: text
    b"\x00\x00\x00\x01"  # length 1
    b"t"  # value
)

UPDATE_KEY = (
    b"U"  # type
    b"\x00\x00\x40\x00"  # relation oid 16384
    b"K"  # old key tuple follows: the key changed
    b"\x00\x03"  # 3 columns
    b"t"  # column 1: text
    b"\x00\x00\x00\x01"  # length 1
    b"1"  # old key value
    b"n"  # column 2: not part of the key
    b"n"  # column 3: not part of the key
    b"N"  # new tuple follows
    b"\x00\x03"  # 3 columns
    b"t"  # column 1: text
    b"\x00\x00\x00\x01"  # length 1
    b"2"  # new key value
    b"n"  # column 2: NULL
    b"t"  # column 3: text
    b"\x00\x00\x00\x01"  # length 1
    b"f"  # value
)

UPDATE_FULL = (
    b"U"  # type
    b"\x00\x00\x40\x00"  # relation oid 16384
    b"O"  # old row follows: replica identity full
    b"\x00\x02"  # 2 columns
    b"t"  # column 1: text
    b"\x00\x00\x00\x01"  # length 1
    b"1"  # value
    b"t"  # column 2: text
    b"\x00\x00\x00\x03"  # length 3
    b"big"  # the TOASTed value, detoasted in the old row
    b"N"  # new tuple follows
    b"\x00\x02"  # 2 columns
    b"t"  # column 1: text
    b"\x00\x00\x00\x01"  # length 1
    b"1"  # value
    b"u"  # column 2: unchanged TOAST
)

DELETE_KEY = (
    b"D"  # type
    b"\x00\x00\x40\x00"  # relation oid 16384
    b"K"  # old key tuple follows
    b"\x00\x03"  # 3 columns
    b"t"  # column 1: text
    b"\x00\x00\x00\x01"  # length 1
    b"7"  # key value
    b"n"  # column 2: not part of the key
    b"n"  # column 3: not part of the key
)

DELETE_FULL = (
    b"D"  # type
    b"\x00\x00\x40\x00"  # relation oid 16384
    b"O"  # old row follows
    b"\x00\x02"  # 2 columns
    b"t"  # column 1: text
    b"\x00\x00\x00\x01"  # length 1
    b"7"  # value
    b"t"  # column 2: text
    b"\x00\x00\x00\x02"  # length 2
    b"ok"  # value
)

TRUNCATE = (
    b"T"  # type
    b"\x00\x00\x00\x02"  # 2 relations
    b"\x03"  # options: CASCADE | RESTART IDENTITY
    b"\x00\x00\x40\x00"  # relation oid 16384
    b"\x00\x00\x40\x08"  # relation oid 16392
)

MESSAGE = (
    b"M"  # type
    b"\x01"  # flags: transactional
    b"\x00\x00\x00\x01\x6a\x00\x00\x40"  # LSN 1/6A000040
    b"rt\x00"  # prefix
    b"\x00\x00\x00\x03"  # content length 3
    b"\x00\xffz"  # content (binary)
)

MESSAGE_NON_TRANSACTIONAL = (
    b"M"  # type
    b"\x00"  # flags: not transactional
    b"\x00\x00\x00\x01\x6a\x00\x00\x40"  # LSN 1/6A000040
    b"heartbeat\x00"  # prefix
    b"\x00\x00\x00\x00"  # content length 0
)

ALL_MESSAGES = [
    BEGIN,
    COMMIT,
    ORIGIN,
    RELATION,
    RELATION_CATALOG,
    TYPE,
    INSERT,
    INSERT_EMPTY_TEXT,
    INSERT_BINARY,
    UPDATE_NEW_ONLY,
    UPDATE_KEY,
    UPDATE_FULL,
    DELETE_KEY,
    DELETE_FULL,
    TRUNCATE,
    MESSAGE,
    MESSAGE_NON_TRANSACTIONAL,
]

# -- fixtures: the CopyData envelope --

XLOGDATA = (
    b"w"  # type
    b"\x00\x00\x00\x01\x6a\x00\x00\x28"  # WAL start 1/6A000028
    b"\x00\x00\x00\x01\x6a\x00\x00\x58"  # WAL end 1/6A000058
    b"\x00\x02\xe5\x5c\x9a\x1f\x40\x01"  # send time
) + BEGIN  # payload: one pgoutput message

KEEPALIVE = (
    b"k"  # type
    b"\x00\x00\x00\x01\x6a\x00\x00\x58"  # WAL end 1/6A000058
    b"\x00\x02\xe5\x5c\x9a\x1f\x40\x02"  # send time
    b"\x01"  # reply requested
)

STATUS = (
    b"r"  # type
    b"\x00\x00\x00\x01\x6a\x00\x00\x58"  # written 1/6A000058
    b"\x00\x00\x00\x01\x6a\x00\x00\x50"  # flushed 1/6A000050
    b"\x00\x00\x00\x01\x6a\x00\x00\x48"  # applied 1/6A000048
    b"\x00\x00\x00\x00\x00\x0f\x42\x40"  # client time: 1 s after 2000-01-01
    b"\x00"  # no reply requested
)

TIME = 0x0002_E55C_9A1F_4000


class TestTransactionMessages:
    def test_begin(self):
        assert decode(BEGIN) == Begin(final_lsn=0x1_6A00_0028, commit_time_us=TIME, xid=750)

    def test_commit(self):
        assert decode(COMMIT) == Commit(flags=0, commit_lsn=0x1_6A00_0028, end_lsn=0x1_6A00_0058, commit_time_us=TIME)

    def test_origin(self):
        assert decode(ORIGIN) == Origin(commit_lsn=0x1234_5678, name="node_a")


class TestRelationMessages:
    def test_relation(self):
        assert decode(RELATION) == Relation(
            oid=16384,
            namespace="public",
            name="todos",
            replica_identity="d",
            columns=(
                RelationColumn(flags=1, name="id", type_oid=20, type_modifier=-1, is_key=True),
                RelationColumn(flags=0, name="title", type_oid=1043, type_modifier=104, is_key=False),
                RelationColumn(flags=0, name="done", type_oid=16, type_modifier=-1, is_key=False),
            ),
        )

    def test_relation_in_pg_catalog_has_empty_namespace(self):
        assert decode(RELATION_CATALOG) == Relation(1, "", "t", "f", ())

    def test_type(self):
        assert decode(TYPE) == TypeInfo(oid=16400, namespace="public", name="mood")


class TestChanges:
    def test_insert_text_and_null(self):
        assert decode(INSERT) == Insert(relation_oid=16384, new=("1", "héllo", None))

    def test_insert_empty_text(self):
        assert decode(INSERT_EMPTY_TEXT).new == ("",)

    def test_insert_binary_value_is_bytes(self):
        assert decode(INSERT_BINARY).new == (b"\x00\x00\x00\x2a",)

    def test_update_without_old_tuple(self):
        msg = decode(UPDATE_NEW_ONLY)
        assert msg == Update(relation_oid=16384, new=("1", UNCHANGED, "t"), old=None, old_kind=None)
        assert msg.new[1] is UNCHANGED

    def test_update_with_old_key(self):
        assert decode(UPDATE_KEY) == Update(16384, new=("2", None, "f"), old=("1", None, None), old_kind="K")

    def test_update_with_old_row(self):
        assert decode(UPDATE_FULL) == Update(16384, new=("1", UNCHANGED), old=("1", "big"), old_kind="O")

    def test_delete_with_old_key(self):
        assert decode(DELETE_KEY) == Delete(relation_oid=16384, old=("7", None, None), old_kind="K")

    def test_delete_with_old_row(self):
        assert decode(DELETE_FULL) == Delete(relation_oid=16384, old=("7", "ok"), old_kind="O")

    def test_truncate(self):
        assert decode(TRUNCATE) == Truncate(options=3, relation_oids=(16384, 16392))

    def test_truncate_of_nothing(self):
        assert decode(b"T\x00\x00\x00\x00\x00") == Truncate(0, ())


class TestLogicalMessages:
    def test_transactional(self):
        assert decode(MESSAGE) == LogicalMessage(
            transactional=True, lsn=0x1_6A00_0040, prefix="rt", content=b"\x00\xffz"
        )

    def test_non_transactional_empty(self):
        msg = decode(MESSAGE_NON_TRANSACTIONAL)
        assert msg == LogicalMessage(False, 0x1_6A00_0040, "heartbeat", b"")
        assert type(msg.content) is bytes


class TestInputs:
    @pytest.mark.parametrize("wrap", [bytes, bytearray, memoryview], ids=["bytes", "bytearray", "memoryview"])
    def test_any_bytes_like(self, wrap):
        assert decode(wrap(INSERT)) == decode(INSERT)

    def test_memoryview_slice(self):
        assert decode(memoryview(b"xx" + INSERT)[2:]) == decode(INSERT)

    def test_values_do_not_share_the_buffer(self):
        buf = bytearray(INSERT_BINARY)
        msg = decode(buf)
        buf[-1] = 0
        assert msg.new == (b"\x00\x00\x00\x2a",)

    def test_invalid_utf8_is_replaced(self):
        msg = decode(
            b"I"  # type
            b"\x00\x00\x40\x00"  # relation oid
            b"N"  # new tuple
            b"\x00\x02"  # 2 columns
            b"t"  # column 1: text
            b"\x00\x00\x00\x03"  # length 3
            b"a\xffb"  # not UTF-8
            b"u"  # column 2: unchanged
        )
        assert msg.new == ("a\ufffdb", UNCHANGED)

    def test_unchanged_is_a_singleton(self):
        assert copy.deepcopy(UNCHANGED) is UNCHANGED
        assert pickle.loads(pickle.dumps(UNCHANGED)) is UNCHANGED
        assert repr(UNCHANGED) == "UNCHANGED"

    def test_messages_are_frozen(self):
        msg = decode(INSERT)
        with pytest.raises(AttributeError):
            msg.relation_oid = 1  # type: ignore[misc]


class TestErrors:
    def test_pgoutput_error_is_a_value_error(self):
        assert issubclass(PgOutputError, ValueError)

    def test_empty(self):
        with pytest.raises(PgOutputError, match="empty"):
            decode(b"")

    @pytest.mark.parametrize("kind", [b"S", b"E", b"c", b"A", b"b", b"P", b"K", b"r", b"p", b"\x00"])
    def test_unknown_type_names_the_byte(self, kind):
        # stream start/stop/commit/abort and two-phase messages need proto_version >= 2
        with pytest.raises(PgOutputError, match=f"0x{kind[0]:02x}"):
            decode(kind + b"\x00" * 16)

    @pytest.mark.parametrize("fixture", ALL_MESSAGES)
    def test_every_truncation_is_an_error(self, fixture):
        for cut in range(len(fixture)):
            with pytest.raises(PgOutputError):
                decode(fixture[:cut])

    @pytest.mark.parametrize("fixture", ALL_MESSAGES)
    def test_trailing_bytes_are_an_error(self, fixture):
        with pytest.raises(PgOutputError, match="trailing"):
            decode(fixture + b"\x00")

    def test_unknown_tuple_kind(self):
        with pytest.raises(PgOutputError, match="'x'"):
            decode(b"I\x00\x00\x40\x00N\x00\x01x")

    def test_insert_without_new_tuple(self):
        with pytest.raises(PgOutputError, match="expected a new tuple"):
            decode(b"I\x00\x00\x40\x00K\x00\x00")

    def test_update_without_new_tuple(self):
        with pytest.raises(PgOutputError, match="expected a new tuple"):
            decode(b"U\x00\x00\x40\x00K\x00\x00O\x00\x00")

    def test_delete_without_old_tuple(self):
        with pytest.raises(PgOutputError, match="expected an old tuple"):
            decode(b"D\x00\x00\x40\x00N\x00\x00")


class TestEnvelope:
    def test_xlogdata(self):
        msg = parse_copy_data(XLOGDATA)
        assert isinstance(msg, XLogData)
        assert (msg.wal_start, msg.wal_end, msg.send_time) == (0x1_6A00_0028, 0x1_6A00_0058, TIME + 1)
        assert isinstance(msg.payload, memoryview)
        assert bytes(msg.payload) == BEGIN
        assert decode(msg.payload) == decode(BEGIN)

    def test_xlogdata_from_memoryview(self):
        msg = parse_copy_data(memoryview(XLOGDATA))
        assert bytes(msg.payload) == BEGIN

    def test_keepalive(self):
        assert parse_copy_data(KEEPALIVE) == Keepalive(wal_end=0x1_6A00_0058, send_time=TIME + 2, reply_requested=True)

    def test_keepalive_without_reply(self):
        assert parse_copy_data(KEEPALIVE[:-1] + b"\x00").reply_requested is False

    def test_unknown(self):
        with pytest.raises(PgOutputError, match="'x'"):
            parse_copy_data(b"x" + bytes(24))

    @pytest.mark.parametrize("data", [b"", b"w" + bytes(23), b"k" + bytes(16)])
    def test_truncated(self, data):
        with pytest.raises(PgOutputError):
            parse_copy_data(data)

    def test_standby_status(self):
        assert standby_status(0x1_6A00_0058, 0x1_6A00_0050, 0x1_6A00_0048, 1_000_000) == STATUS

    def test_standby_status_asking_for_reply(self):
        assert standby_status(0, 0, 0, 0, reply=True) == b"r" + bytes(32) + b"\x01"

    def test_pg_now_us(self):
        assert pg_now_us(946_684_800.0) == 0
        assert pg_now_us(946_684_801.5) == 1_500_000
        assert pg_now_us(0.0) == -946_684_800_000_000
        assert pg_now_us(1_767_225_600.000001) == 820_540_800_000_001  # 2026-01-01


class TestLsn:
    @pytest.mark.parametrize(
        ("value", "text"),
        [
            (0, "0/00000000"),
            (0x16_B374_D848, "16/B374D848"),
            (0x1_0000_00AB, "1/000000AB"),
            (2**64 - 1, "FFFFFFFF/FFFFFFFF"),
        ],
    )
    def test_round_trip(self, value, text):
        assert format_lsn(value) == text
        assert parse_lsn(text) == value

    @pytest.mark.parametrize("text", ["0/0", "0/00000000", "16/b374d848"])
    def test_parse_unpadded_and_lowercase(self, text):
        assert format_lsn(parse_lsn(text)).lower() == format_lsn(parse_lsn(text.upper())).lower()

    @pytest.mark.parametrize(
        "text", ["", "16B374D848", "0x1/2", "1/123456789", " 1/2", "1/2 ", "-1/2", "1_0/2", "1/2/3"]
    )
    def test_parse_invalid(self, text):
        with pytest.raises(ValueError, match="invalid LSN"):
            parse_lsn(text)

    @pytest.mark.parametrize("value", [-1, 2**64])
    def test_format_out_of_range(self, value):
        with pytest.raises(ValueError):
            format_lsn(value)


# -- against a real server --


@pytest.fixture(scope="module")
def db_dsn(pg_dsn: str) -> Iterator[str]:
    """A database of this module's own, dropped at the end."""
    with scratch_database(pg_dsn, "rt_pgoutput") as dsn:
        yield dsn


@pytest.mark.pg
def test_decodes_real_pgoutput(db_dsn: str) -> None:
    slot = f"rt_test_{secrets.token_hex(4)}"
    big = secrets.token_urlsafe(9000)  # ~12 kB of random text: stored out of line
    with psycopg.connect(db_dsn, autocommit=True) as conn:
        conn.execute("create type mood as enum ('sad', 'happy')")
        conn.execute(
            "create table items (id int8 primary key, title text, price numeric(10,2), mood mood, tags text[])"
        )
        conn.execute("create table docs (id int4 primary key, note text, body text)")
        conn.execute("alter table docs replica identity full")
        conn.execute("alter table docs alter column body set storage external")  # never compressed
        conn.execute("create publication pub for table items, docs")
        conn.execute("select pg_create_logical_replication_slot(%s, 'pgoutput')", (slot,))
        try:
            conn.execute("insert into items values (1, 'it''s é', 9.9, 'happy', '{a,NULL,\"b c\"}')")
            conn.execute("update items set title = null where id = 1")
            conn.execute("update items set id = 2 where id = 1")
            conn.execute("delete from items where id = 2")
            conn.execute("insert into docs values (1, 'n1', %s)", (big,))
            conn.execute("update docs set note = 'n2' where id = 1")
            conn.execute("delete from docs where id = 1")
            conn.execute("truncate items, docs restart identity")
            with conn.transaction():
                conn.execute("select pg_logical_emit_message(true, 'rt', 'in txn')")
                conn.execute("insert into items (id) values (3)")
            conn.execute("select pg_logical_emit_message(false, 'hb', '\\x00ff'::bytea)")
            conn.execute("select pg_replication_origin_create('node_a')")
            conn.execute("select pg_replication_origin_session_setup('node_a')")
            with conn.transaction():
                conn.execute("select pg_replication_origin_xact_setup('0/12345678', now())")
                conn.execute("insert into items (id) values (4)")
            conn.execute("select pg_replication_origin_session_reset()")
            rows = conn.execute(
                "select lsn, data from pg_logical_slot_get_binary_changes("
                "%s, null, null, 'proto_version', '1', 'publication_names', 'pub', 'messages', 'true')",
                (slot,),
            ).fetchall()
            items_oid = conn.execute("select 'items'::regclass::oid").fetchone()[0]
            docs_oid = conn.execute("select 'docs'::regclass::oid").fetchone()[0]
            mood_oid = conn.execute("select 'mood'::regtype::oid").fetchone()[0]
        finally:
            conn.execute("select pg_drop_replication_slot(%s)", (slot,))
            with contextlib.suppress(psycopg.Error):
                conn.execute("select pg_replication_origin_drop('node_a')")

    decoded = [(parse_lsn(lsn), decode(data)) for lsn, data in rows]
    # pgoutput describes a relation (and its non-built-in types) before its
    # first change, and again after anything that may have changed it, such
    # as a TRUNCATE: check them apart from the changes.
    relations = {m.oid: m for _, m in decoded if isinstance(m, Relation)}
    types = {m.oid: m for _, m in decoded if isinstance(m, TypeInfo)}
    described: set[int] = set()
    for _, m in decoded:
        if isinstance(m, Relation):
            described.add(m.oid)
        elif isinstance(m, Insert | Update | Delete):
            assert m.relation_oid in described
    lsns = [lsn for lsn, m in decoded if not isinstance(m, Relation | TypeInfo)]
    messages = [m for _, m in decoded if not isinstance(m, Relation | TypeInfo)]
    kinds = [type(m).__name__ for m in messages]
    assert kinds == [
        *["Begin", "Insert", "Commit"],
        *["Begin", "Update", "Commit"],
        *["Begin", "Update", "Commit"],
        *["Begin", "Delete", "Commit"],
        *["Begin", "Insert", "Commit"],
        *["Begin", "Update", "Commit"],
        *["Begin", "Delete", "Commit"],
        *["Begin", "Truncate", "Commit"],
        *["Begin", "LogicalMessage", "Insert", "Commit"],
        "LogicalMessage",
        *["Begin", "Origin", "Insert", "Commit"],
    ]
    # the enum's type is described before the relation that uses it
    assert [type(m).__name__ for _, m in decoded][:4] == ["Begin", "TypeInfo", "Relation", "Insert"]

    assert types == {mood_oid: TypeInfo(mood_oid, "public", "mood")}
    assert relations[items_oid] == Relation(
        items_oid,
        "public",
        "items",
        "d",
        (
            RelationColumn(1, "id", 20, -1, True),
            RelationColumn(0, "title", 25, -1, False),
            RelationColumn(0, "price", 1700, (10 << 16 | 2) + 4, False),
            RelationColumn(0, "mood", mood_oid, -1, False),
            RelationColumn(0, "tags", 1009, -1, False),
        ),
    )
    docs = relations[docs_oid]
    assert (docs.name, docs.replica_identity) == ("docs", "f")
    assert [c.is_key for c in docs.columns] == [True, True, True]  # full: every column identifies the row

    begin, insert, commit = messages[:3]
    assert insert == Insert(items_oid, ("1", "it's é", "9.90", "happy", '{a,NULL,"b c"}'))
    assert begin.final_lsn == commit.commit_lsn
    assert commit.end_lsn > commit.commit_lsn
    assert begin.commit_time_us == commit.commit_time_us
    assert messages[4] == Update(items_oid, ("1", None, "9.90", "happy", '{a,NULL,"b c"}'), None, None)
    assert messages[7] == Update(
        items_oid, ("2", None, "9.90", "happy", '{a,NULL,"b c"}'), ("1", None, None, None, None), "K"
    )
    assert messages[10] == Delete(items_oid, ("2", None, None, None, None), "K")

    assert messages[13] == Insert(docs_oid, ("1", "n1", big))
    # REPLICA IDENTITY FULL: the unchanged TOASTed value is only in the old row
    assert messages[16] == Update(docs_oid, ("1", "n2", UNCHANGED), ("1", "n1", big), "O")
    assert messages[16].new[2] is UNCHANGED
    assert messages[19] == Delete(docs_oid, ("1", "n2", big), "O")
    truncate = messages[22]
    assert truncate.options == 2  # RESTART IDENTITY
    assert sorted(truncate.relation_oids) == sorted([items_oid, docs_oid])

    in_txn, insert3 = messages[25:27]
    assert (in_txn.transactional, in_txn.prefix, in_txn.content) == (True, "rt", b"in txn")
    assert insert3 == Insert(items_oid, ("3", None, None, None, None))
    heartbeat = messages[28]
    assert (heartbeat.transactional, heartbeat.prefix, heartbeat.content) == (False, "hb", b"\x00\xff")
    assert heartbeat.lsn == lsns[28]
    assert messages[30] == Origin(0x1234_5678, "node_a")
    assert messages[31] == Insert(items_oid, ("4", None, None, None, None))


def test_fixture_layouts_match_struct_sizes():
    # Guards against a fixture losing a byte unnoticed: each fixed part is its documented size.
    assert len(BEGIN) == 1 + 8 + 8 + 4
    assert len(COMMIT) == 1 + 1 + 8 + 8 + 8
    assert len(XLOGDATA) == 1 + 8 + 8 + 8 + len(BEGIN)
    assert len(KEEPALIVE) == 1 + 8 + 8 + 1
    assert len(STATUS) == 1 + 8 + 8 + 8 + 8 + 1
    assert struct.unpack(">q", STATUS[25:33]) == (1_000_000,)
