"""The phx_join payload, parsed leniently as upstream does (docs/protocol.md §3.1).

Validation errors never reject a join: the valid parts apply, the rest fall
back to defaults, and `problems` lists what was ignored (logged as
InvalidJoinPayload). channel.join() is the only caller."""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import Any

import orjson

__all__ = ["JoinPayload", "Replay", "flexible_bool", "postgres_change_id"]


def flexible_bool(value: Any, default: bool) -> tuple[bool, bool]:
    """(value, valid): true/false or "true"/"false" in any letter case (FlexibleBoolean)."""
    if isinstance(value, bool):
        return value, True
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true", True
    return default, value is None


@dataclass(slots=True, frozen=True)
class Replay:
    since: int
    limit: int


def postgres_change_id(params: dict[str, Any]) -> int:
    """A stable non-negative integer for one postgres_changes params map (docs/protocol.md §3.4).

    Upstream uses erlang:phash2/1 (27 bits); any stable integer does, as long
    as the same one is sent later in `ids`. Identical params give the same id."""
    return zlib.crc32(orjson.dumps(params, option=orjson.OPT_SORT_KEYS)) & 0x7FFFFFF


@dataclass(slots=True)
class JoinPayload:
    """What a client asked for when joining."""

    new_api: bool = False  # the payload has a `config` key (docs/protocol.md §3.1)
    private: bool = False
    ack: bool = False
    self_broadcast: bool = False
    replication_ready: bool = False
    replay: Replay | None = None
    replay_invalid: bool = False
    presence_enabled: bool = False
    presence_key: str = ""
    postgres_changes: list[dict[str, Any]] = field(default_factory=list)
    access_token: Any = None
    user_token: Any = None
    problems: list[str] = field(default_factory=list)

    @classmethod
    def parse(cls, payload: Any) -> JoinPayload:
        out = cls()
        if not isinstance(payload, dict):
            if payload is not None:
                out.problems.append("payload must be an object")
            return out
        out.access_token = payload.get("access_token")
        out.user_token = payload.get("user_token")
        out.new_api = "config" in payload
        config = payload.get("config")
        if config is None:
            return out
        if not isinstance(config, dict):
            out.problems.append("config must be an object")
            return out
        out.private = out._bool(config, "private", "config.private")
        broadcast = out._object(config, "broadcast")
        out.ack = out._bool(broadcast, "ack", "broadcast.ack")
        out.self_broadcast = out._bool(broadcast, "self", "broadcast.self")
        out._bool(broadcast, "replication_ready", "broadcast.replication_ready")  # validated only:
        # RT realtime_channel.ex join/3 opts in with `!!get_in(params, [...])`, so
        # any value but null and false does, even the string "false".
        ready = broadcast.get("replication_ready")
        out.replication_ready = ready is not None and ready is not False
        if broadcast.get("replay") is not None:
            out._parse_replay(broadcast["replay"])
        presence = out._object(config, "presence")
        out.presence_enabled = out._bool(presence, "enabled", "presence.enabled")
        key = presence.get("key")
        if key is not None and key != "":
            out.presence_key = key if isinstance(key, str) else orjson.dumps(key).decode()
        changes = config.get("postgres_changes")
        if isinstance(changes, list):
            out.postgres_changes = [c for c in changes if isinstance(c, dict)]
            if len(out.postgres_changes) != len([c for c in changes if c is not None]):
                out.problems.append("postgres_changes entries must be objects")
        elif changes is not None:
            out.problems.append("postgres_changes must be a list")
        return out

    def _object(self, parent: dict[str, Any], name: str) -> dict[str, Any]:
        value = parent.get(name)
        if isinstance(value, dict):
            return value
        if value is not None:
            self.problems.append(f"{name} must be an object")
        return {}

    def _bool(self, parent: dict[str, Any], name: str, label: str) -> bool:
        value, valid = flexible_bool(parent.get(name), False)
        if not valid:
            self.problems.append(f"{label} must be a boolean")
        return value

    def _parse_replay(self, replay: Any) -> None:
        # docs/protocol.md §4.6: limit defaults to 25 and is clamped to 1..25.
        if not isinstance(replay, dict):
            self.replay_invalid = True
            return
        since, limit = replay.get("since"), replay.get("limit", 25)
        if (
            not isinstance(since, int)
            or isinstance(since, bool)
            or not isinstance(limit, int)
            or isinstance(limit, bool)
        ):
            self.replay_invalid = True
            return
        self.replay = Replay(since=since, limit=max(1, min(25, limit)))
