"""The pgoutput logical replication format (proto_version 1), decoded without I/O.

replication.py reads CopyData messages from a `START_REPLICATION ... LOGICAL`
stream, passes each to parse_copy_data(), hands the payload of every XLogData
to decode(), and answers keepalives with standby_status(). The polling
fallback passes each `data` row of `pg_logical_slot_get_binary_changes` to
decode() directly. Tuple values come out as PostgreSQL's text output (str),
None for NULL, or UNCHANGED for an unchanged TOASTed column; values.py turns
the text into JSON values.

Formats: PostgreSQL docs, "Streaming Replication Protocol" (XLogData 'w',
Primary keepalive 'k', Standby status update 'r') and "Logical Replication
Message Formats". Only proto_version 1 is decoded: no streamed in-progress
transactions, no two-phase commit messages. All integers are big-endian; LSNs
are unsigned 64-bit; timestamps are microseconds since 2000-01-01 00:00 UTC."""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from typing import Literal

__all__ = [
    "UNCHANGED",
    "Begin",
    "Commit",
    "Delete",
    "Insert",
    "Keepalive",
    "LogicalMessage",
    "Message",
    "Origin",
    "PgOutputError",
    "Relation",
    "RelationColumn",
    "Truncate",
    "TypeInfo",
    "Update",
    "XLogData",
    "decode",
    "format_lsn",
    "parse_copy_data",
    "parse_lsn",
    "pg_now_us",
    "standby_status",
]

# Seconds from the Unix epoch to PostgreSQL's epoch, 2000-01-01 00:00 UTC.
PG_EPOCH_UNIX = 946_684_800

# Fixed layouts, each named for what follows the type byte.
_XLOGDATA = struct.Struct(">QQq")  # wal_start, wal_end, send_time
_KEEPALIVE = struct.Struct(">QqB")  # wal_end, send_time, reply_requested
_STATUS = struct.Struct(">BQQQqB")  # 'r', write, flush, apply, now, reply
_BEGIN = struct.Struct(">QqI")  # final_lsn, commit_time, xid
_COMMIT = struct.Struct(">BQQq")  # flags, commit_lsn, end_lsn, commit_time
_MESSAGE = struct.Struct(">BQ")  # flags, lsn
_TRUNCATE = struct.Struct(">IB")  # number of relations, options
_REL_TAIL = struct.Struct(">BH")  # replica identity, number of columns
_COLUMN_TYPE = struct.Struct(">Ii")  # type oid, type modifier
_CHANGE = struct.Struct(">IB")  # relation oid, tuple kind ('N', 'K' or 'O')
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")

_LSN = re.compile(r"([0-9A-Fa-f]{1,8})/([0-9A-Fa-f]{1,8})\Z")


class PgOutputError(ValueError):
    """A replication message that is not valid pgoutput proto_version 1."""


class _Unchanged:
    """The type of UNCHANGED."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "UNCHANGED"

    def __reduce__(self) -> str:
        return "UNCHANGED"  # copy and pickle keep the singleton


# An unchanged TOASTed value ('u'): pgoutput does not send it. With REPLICA
# IDENTITY FULL the old tuple has it; otherwise it is not in this message at all.
UNCHANGED = _Unchanged()

TupleValue = str | bytes | None | _Unchanged


# -- CopyData envelope --


@dataclass(frozen=True, slots=True)
class XLogData:
    """A CopyData 'w' message: a chunk of WAL, here one pgoutput message."""

    wal_start: int
    wal_end: int
    send_time: int  # microseconds since 2000-01-01 UTC
    payload: memoryview  # pass to decode()


@dataclass(frozen=True, slots=True)
class Keepalive:
    """A CopyData 'k' message (primary keepalive)."""

    wal_end: int
    send_time: int  # microseconds since 2000-01-01 UTC
    reply_requested: bool  # answer with standby_status() at once, or risk wal_sender_timeout


def parse_copy_data(buf: bytes | memoryview) -> XLogData | Keepalive:
    """Parse one CopyData message of a logical replication stream.

    Raises:
        PgOutputError: unknown message type, or a message too short for its type.
    """
    view = memoryview(buf)
    if not view:
        raise PgOutputError("empty CopyData message")
    kind = view[0]
    try:
        if kind == 0x77:  # 'w'
            wal_start, wal_end, send_time = _XLOGDATA.unpack_from(view, 1)
            return XLogData(wal_start, wal_end, send_time, view[25:])
        if kind == 0x6B:  # 'k'
            wal_end, send_time, reply = _KEEPALIVE.unpack_from(view, 1)
            return Keepalive(wal_end, send_time, reply == 1)
    except struct.error:
        raise PgOutputError(f"truncated CopyData {chr(kind)!r} message ({len(view)} bytes)") from None
    raise PgOutputError(f"unknown CopyData message type {chr(kind)!r} (0x{kind:02x})")


def standby_status(write_lsn: int, flush_lsn: int, apply_lsn: int, now_us: int, reply: bool = False) -> bytes:
    """Build a Standby status update ('r') to send back with put_copy_data().

    `flush_lsn` is what the server may forget: send the LSN up to which every
    change has been dispatched. `now_us` comes from pg_now_us(); `reply` asks
    the server to answer with a keepalive at once."""
    return _STATUS.pack(0x72, write_lsn, flush_lsn, apply_lsn, now_us, 1 if reply else 0)


def pg_now_us(unix_time: float) -> int:
    """Convert a Unix time in seconds (time.time()) to microseconds since 2000-01-01 UTC."""
    return round((unix_time - PG_EPOCH_UNIX) * 1_000_000)


def format_lsn(lsn: int) -> str:
    """Format an LSN as PostgreSQL 18 prints it: `X/XXXXXXXX` (hex, low half zero-padded)."""
    if not 0 <= lsn < 1 << 64:
        raise ValueError(f"LSN out of range: {lsn}")
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:08X}"


def parse_lsn(text: str) -> int:
    """Parse an LSN in `X/X` form (padded or not, any letter case)."""
    m = _LSN.match(text)
    if m is None:
        raise ValueError(f"invalid LSN {text!r}: expected two hex numbers of 1-8 digits, as in '16/B374D848'")
    return int(m[1], 16) << 32 | int(m[2], 16)


# -- pgoutput messages --


@dataclass(frozen=True, slots=True)
class Begin:
    """'B': a transaction starts; its changes follow, then a Commit."""

    final_lsn: int  # the commit record's LSN
    commit_time_us: int  # microseconds since 2000-01-01 UTC
    xid: int


@dataclass(frozen=True, slots=True)
class Commit:
    """'C': the transaction opened by the last Begin is complete."""

    flags: int  # unused, 0
    commit_lsn: int
    end_lsn: int  # confirm this LSN once the transaction is dispatched
    commit_time_us: int


@dataclass(frozen=True, slots=True)
class Origin:
    """'O': the transaction came from another node (replication origin)."""

    commit_lsn: int  # the LSN of the commit on the origin server
    name: str


@dataclass(frozen=True, slots=True)
class RelationColumn:
    """One column of a Relation, in attnum order (dropped and generated columns left out)."""

    flags: int  # 1: part of the replica identity
    name: str
    type_oid: int
    type_modifier: int  # atttypmod, -1 for none
    is_key: bool


@dataclass(frozen=True, slots=True)
class Relation:
    """'R': a table's shape, sent before its first change in each session and after every ALTER.

    Tuples of the changes that follow have one value per column, in this order."""

    oid: int
    namespace: str  # empty for pg_catalog
    name: str
    replica_identity: str  # 'd' default (primary key), 'n' nothing, 'f' full, 'i' index
    columns: tuple[RelationColumn, ...]


@dataclass(frozen=True, slots=True)
class TypeInfo:
    """'Y': a non-built-in type used by the next Relation."""

    oid: int
    namespace: str
    name: str


@dataclass(frozen=True, slots=True)
class Insert:
    """'I': a new row."""

    relation_oid: int
    new: tuple[TupleValue, ...]


@dataclass(frozen=True, slots=True)
class Update:
    """'U': a changed row.

    `old` is None unless the replica identity is FULL ('O', the whole old row)
    or the key changed ('K', key columns set and the others None)."""

    relation_oid: int
    new: tuple[TupleValue, ...]
    old: tuple[TupleValue, ...] | None
    old_kind: Literal["K", "O"] | None


@dataclass(frozen=True, slots=True)
class Delete:
    """'D': a deleted row: the key columns ('K', the others None) or the whole row ('O')."""

    relation_oid: int
    old: tuple[TupleValue, ...]
    old_kind: Literal["K", "O"]


@dataclass(frozen=True, slots=True)
class Truncate:
    """'T': one TRUNCATE statement over these relations."""

    options: int  # 1: CASCADE, 2: RESTART IDENTITY
    relation_oids: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class LogicalMessage:
    """'M': a pg_logical_emit_message() (needs the `messages` option)."""

    transactional: bool  # False: sent at once, outside Begin/Commit
    lsn: int
    prefix: str
    content: bytes


Message = Begin | Commit | Origin | Relation | TypeInfo | Insert | Update | Delete | Truncate | LogicalMessage


def decode(payload: bytes | memoryview) -> Message:
    """Decode one pgoutput message (an XLogData payload, or a row of the get_changes functions).

    Raises:
        PgOutputError: unknown message type (only proto_version 1 is supported),
            truncated input or trailing bytes.
    """
    # One copy of the whole message, then slices of it: cheaper than slicing a
    # memoryview value by value (measured 320k vs 290k 5-column tuples/s), and
    # bytes.index() finds the C strings.
    buf = payload if type(payload) is bytes else bytes(payload)
    if not buf:
        raise PgOutputError("empty pgoutput message")
    parse = _PARSERS.get(buf[0])
    if parse is None:
        raise PgOutputError(
            f"unknown pgoutput message type {chr(buf[0])!r} (0x{buf[0]:02x}); "
            "only proto_version 1 without streaming or two-phase is supported"
        )
    try:
        return parse(buf)
    except PgOutputError:
        raise
    except (struct.error, IndexError, ValueError):  # ValueError: a C string without its NUL
        raise PgOutputError(f"truncated pgoutput {chr(buf[0])!r} message ({len(buf)} bytes)") from None


def _check_end(buf: bytes, pos: int) -> None:
    if pos != len(buf):
        what = "truncated" if pos > len(buf) else f"{len(buf) - pos} trailing bytes in"
        raise PgOutputError(f"{what} pgoutput {chr(buf[0])!r} message ({len(buf)} bytes)")


def _cstring(buf: bytes, pos: int) -> tuple[str, int]:
    end = buf.index(b"\0", pos)
    return buf[pos:end].decode("utf-8", "replace"), end + 1


def _tuple(buf: bytes, pos: int) -> tuple[tuple[TupleValue, ...], int]:
    """Decode TupleData at `pos`; return the values and the position after them."""
    start = pos
    (count,) = _U16.unpack_from(buf, pos)
    pos += 2
    values: list[TupleValue] = [None] * count  # 'n' needs no store
    u32 = _U32.unpack_from
    try:
        for i in range(count):
            kind = buf[pos]
            if kind == 0x74:  # 't': Int32 length, text
                (size,) = u32(buf, pos + 1)
                pos += 5
                end = pos + size
                values[i] = buf[pos:end].decode()
                pos = end
            elif kind == 0x6E:  # 'n': NULL
                pos += 1
            elif kind == 0x75:  # 'u': unchanged TOAST
                values[i] = UNCHANGED
                pos += 1
            elif kind == 0x62:  # 'b': Int32 length, binary
                (size,) = u32(buf, pos + 1)
                pos += 5
                end = pos + size
                values[i] = buf[pos:end]
                pos = end
            else:
                raise PgOutputError(f"unknown tuple value kind {chr(kind)!r} (0x{kind:02x}) in column {i}")
    except UnicodeDecodeError:
        # client_encoding is UTF8, so this needs a server that lets invalid
        # bytes in (SQL_ASCII): start again, replacing them.
        return _tuple_replacing(buf, start)
    return tuple(values), pos


def _tuple_replacing(buf: bytes, pos: int) -> tuple[tuple[TupleValue, ...], int]:
    """Decode TupleData whose text is not all valid UTF-8 (only text differs from _tuple)."""
    (count,) = _U16.unpack_from(buf, pos)
    pos += 2
    values: list[TupleValue] = [None] * count
    for i in range(count):
        kind = buf[pos]
        if kind in (0x74, 0x62):
            (size,) = _U32.unpack_from(buf, pos + 1)
            pos += 5
            end = pos + size
            values[i] = buf[pos:end].decode("utf-8", "replace") if kind == 0x74 else buf[pos:end]
            pos = end
        elif kind == 0x75:
            values[i] = UNCHANGED
            pos += 1
        elif kind == 0x6E:
            pos += 1
        else:
            raise PgOutputError(f"unknown tuple value kind {chr(kind)!r} (0x{kind:02x}) in column {i}")
    return tuple(values), pos


def _begin(buf: bytes) -> Begin:
    _check_end(buf, 1 + _BEGIN.size)
    return Begin(*_BEGIN.unpack_from(buf, 1))


def _commit(buf: bytes) -> Commit:
    _check_end(buf, 1 + _COMMIT.size)
    return Commit(*_COMMIT.unpack_from(buf, 1))


def _origin(buf: bytes) -> Origin:
    (lsn,) = _U64.unpack_from(buf, 1)
    name, pos = _cstring(buf, 9)
    _check_end(buf, pos)
    return Origin(lsn, name)


def _relation(buf: bytes) -> Relation:
    (oid,) = _U32.unpack_from(buf, 1)
    namespace, pos = _cstring(buf, 5)
    name, pos = _cstring(buf, pos)
    identity, count = _REL_TAIL.unpack_from(buf, pos)
    pos += _REL_TAIL.size
    columns = []
    for _ in range(count):
        flags = buf[pos]
        column, pos = _cstring(buf, pos + 1)
        type_oid, type_modifier = _COLUMN_TYPE.unpack_from(buf, pos)
        pos += _COLUMN_TYPE.size
        columns.append(RelationColumn(flags, column, type_oid, type_modifier, bool(flags & 1)))
    _check_end(buf, pos)
    return Relation(oid, namespace, name, chr(identity), tuple(columns))


def _type(buf: bytes) -> TypeInfo:
    (oid,) = _U32.unpack_from(buf, 1)
    namespace, pos = _cstring(buf, 5)
    name, pos = _cstring(buf, pos)
    _check_end(buf, pos)
    return TypeInfo(oid, namespace, name)


def _insert(buf: bytes) -> Insert:
    oid, kind = _CHANGE.unpack_from(buf, 1)
    if kind != 0x4E:  # 'N'
        raise PgOutputError(f"Insert: expected a new tuple 'N', got {chr(kind)!r}")
    new, pos = _tuple(buf, 6)
    if pos != len(buf):
        _check_end(buf, pos)
    return Insert(oid, new)


def _update(buf: bytes) -> Update:
    oid, kind = _CHANGE.unpack_from(buf, 1)
    old = old_kind = None
    pos = 6
    if kind == 0x4B or kind == 0x4F:  # 'K' key columns or 'O' whole old row, then 'N'
        old_kind = "K" if kind == 0x4B else "O"
        old, pos = _tuple(buf, 6)
        kind = buf[pos]
        pos += 1
    if kind != 0x4E:
        raise PgOutputError(f"Update: expected a new tuple 'N', got {chr(kind)!r}")
    new, pos = _tuple(buf, pos)
    if pos != len(buf):
        _check_end(buf, pos)
    return Update(oid, new, old, old_kind)


def _delete(buf: bytes) -> Delete:
    oid, kind = _CHANGE.unpack_from(buf, 1)
    if kind != 0x4B and kind != 0x4F:
        raise PgOutputError(f"Delete: expected an old tuple 'K' or 'O', got {chr(kind)!r}")
    old, pos = _tuple(buf, 6)
    if pos != len(buf):
        _check_end(buf, pos)
    return Delete(oid, old, "K" if kind == 0x4B else "O")


def _truncate(buf: bytes) -> Truncate:
    count, options = _TRUNCATE.unpack_from(buf, 1)
    pos = 1 + _TRUNCATE.size
    _check_end(buf, pos + 4 * count)
    return Truncate(options, struct.unpack_from(f">{count}I", buf, pos))


def _message(buf: bytes) -> LogicalMessage:
    flags, lsn = _MESSAGE.unpack_from(buf, 1)
    prefix, pos = _cstring(buf, 1 + _MESSAGE.size)
    (size,) = _U32.unpack_from(buf, pos)
    pos += 4
    _check_end(buf, pos + size)
    return LogicalMessage(bool(flags & 1), lsn, prefix, buf[pos:])


# Keyed by the type byte; the changes first, for the sake of the reader.
_PARSERS = {
    0x49: _insert,  # 'I'
    0x55: _update,  # 'U'
    0x44: _delete,  # 'D'
    0x42: _begin,  # 'B'
    0x43: _commit,  # 'C'
    0x52: _relation,  # 'R'
    0x59: _type,  # 'Y'
    0x54: _truncate,  # 'T'
    0x4F: _origin,  # 'O'
    0x4D: _message,  # 'M'
}
