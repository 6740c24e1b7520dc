"""Presence on one stream: who is tracked under which key, and the diffs, without I/O.

channel.py calls track() / untrack() and fans out the diff they return as
`presence_diff`; state() is what a joining channel gets as `presence_state`
(docs/protocol.md §5.2). Each channel tracks at most one meta, under its presence key; an
update is a leave of the old meta and a join of the new one, the new meta
carrying `phx_ref_prev` (Phoenix.Presence)."""

from __future__ import annotations

import itertools
import os
from base64 import urlsafe_b64encode
from typing import Any

__all__ = ["Diff", "PresenceTopic", "new_ref"]

Diff = dict[str, dict[str, dict[str, list[dict[str, Any]]]]]  # {"joins": {key: {"metas": [...]}}, "leaves": ...}

# phx_ref values are opaque unique strings (docs/protocol.md §5.2): a random
# per-process prefix and a counter keep them unique across processes.
_PREFIX = urlsafe_b64encode(os.urandom(6)).decode()
_counter = itertools.count(1)


def new_ref() -> str:
    return f"{_PREFIX}{next(_counter):x}"


class PresenceTopic:
    """The presences of one stream: owner (a channel) → (key, tracked payload, meta)."""

    __slots__ = ("_entries",)

    def __init__(self) -> None:
        self._entries: dict[object, tuple[str, dict[str, Any], dict[str, Any]]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def track(self, owner: object, key: str, payload: dict[str, Any]) -> Diff | None:
        """Track or update `owner`'s presence; None when the payload is unchanged."""
        previous = self._entries.get(owner)
        if previous is not None and previous[0] == key and previous[1] == payload:
            return None
        meta = {**payload, "phx_ref": new_ref()}
        leaves: dict[str, dict[str, list[dict[str, Any]]]] = {}
        if previous is not None:
            old_key, _, old_meta = previous
            if old_key == key:
                meta["phx_ref_prev"] = old_meta["phx_ref"]
            leaves[old_key] = {"metas": [old_meta]}
        self._entries[owner] = (key, payload, meta)
        return {"joins": {key: {"metas": [meta]}}, "leaves": leaves}

    def untrack(self, owner: object) -> Diff | None:
        """Remove `owner`'s presence; None when it had none."""
        previous = self._entries.pop(owner, None)
        if previous is None:
            return None
        key, _, meta = previous
        return {"joins": {}, "leaves": {key: {"metas": [meta]}}}

    def entries(self) -> list[tuple[object, str, dict[str, Any]]]:
        """(owner, key, meta) of every presence tracked."""
        return [(owner, key, meta) for owner, (key, _, meta) in self._entries.items()]

    def key_count(self) -> int:
        """How many distinct presence keys are tracked (what presenceState() has as keys)."""
        return len({key for key, _, _ in self._entries.values()})

    def state(self) -> dict[str, dict[str, list[dict[str, Any]]]]:
        """Every presence on the stream, grouped by key: {key: {"metas": [...]}}."""
        grouped: dict[str, dict[str, list[dict[str, Any]]]] = {}
        for key, _, meta in self._entries.values():
            entry = grouped.get(key)
            if entry is None:
                grouped[key] = {"metas": [meta]}
            else:
                entry["metas"].append(meta)
        return grouped
