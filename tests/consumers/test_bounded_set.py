"""BoundedSet: the sink's cache of parents known to exist never grows past its limit."""

from __future__ import annotations

import pytest

from consumers.bounded_set import BoundedSet


def test_forgets_the_oldest_added_beyond_the_limit() -> None:
    known = BoundedSet(3)
    known.update([b"a", b"b", b"c"])
    known.update([b"a"])  # re-added: now the newest
    known.update([b"d"])
    assert len(known) == 3
    assert b"b" not in known
    assert all(k in known for k in (b"a", b"c", b"d"))
    assert known.missing([b"a", b"b", b"e"]) == {b"b", b"e"}


def test_a_long_run_stays_bounded() -> None:
    known = BoundedSet(1_000)
    for start in range(0, 100_000, 500):
        known.update(range(start, start + 500))
        assert len(known) <= 1_000
    assert known.missing(range(99_000, 100_000)) == set()
    known.clear()
    assert len(known) == 0


def test_refuses_a_limit_below_one() -> None:
    with pytest.raises(ValueError):
        BoundedSet(0)
