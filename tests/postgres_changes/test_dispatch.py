"""Pure parts of realtime_core.postgres_changes.dispatch (the rest runs end to end in
tests/test_postgres_changes.py)."""

from __future__ import annotations

import pytest

from realtime_core.postgres_changes.dispatch import _visible_in

EPOCH = 3 << 32  # xid8s of the third epoch


class TestVisibleIn:
    """Whether a committed transaction's 32-bit xid is visible to a pg_current_snapshot()."""

    def test_an_xid_before_xmin_is_visible(self):
        assert _visible_in(f"{EPOCH + 100}:{EPOCH + 110}:", 99)

    def test_an_xid_listed_in_progress_is_not_visible(self):
        assert not _visible_in(f"{EPOCH + 100}:{EPOCH + 110}:{EPOCH + 104},{EPOCH + 107}", 104)
        assert _visible_in(f"{EPOCH + 100}:{EPOCH + 110}:{EPOCH + 104},{EPOCH + 107}", 105)

    @pytest.mark.parametrize("xid", [110, 111, 5000])
    def test_the_newest_transaction_at_or_past_xmax_is_not_visible_yet(self, xid):
        # The commit that reached the walsender while the backend still finishes:
        # not completed, so not in xip either (the race that lost changes).
        assert not _visible_in(f"{EPOCH + 100}:{EPOCH + 110}:", xid)

    def test_an_xid_of_the_previous_epoch_is_visible(self):
        # xmax just wrapped into a new epoch; the xid is from just before the wrap.
        assert _visible_in(f"{EPOCH + 5}:{EPOCH + 10}:", 0xFFFFFFF0)

    def test_an_in_progress_xid_of_the_previous_epoch_is_not_visible(self):
        assert not _visible_in(f"{EPOCH - 20}:{EPOCH + 10}:{EPOCH - 16}", 0xFFFFFFF0)
