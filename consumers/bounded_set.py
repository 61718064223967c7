"""A set that holds at most a given number of keys, forgetting the oldest added first."""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from itertools import islice


class BoundedSet:
    """Keys in insertion order (a re-added key counts as new); past `limit`, the oldest go.

    For caches where a forgotten key only costs redoing idempotent work.
    """

    __slots__ = ("_keys", "limit")

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        self.limit = limit
        self._keys: dict[Hashable, None] = {}

    def __contains__(self, key: Hashable) -> bool:
        return key in self._keys

    def __len__(self) -> int:
        return len(self._keys)

    def missing(self, keys: Iterable[Hashable]) -> set[Hashable]:
        """Those of `keys` not held."""
        held = self._keys
        return {k for k in keys if k not in held}

    def update(self, keys: Iterable[Hashable]) -> None:
        """Add `keys` as the newest, then forget the oldest beyond the limit."""
        held = self._keys
        for k in keys:
            held.pop(k, None)
            held[k] = None
        excess = len(held) - self.limit
        if excess > 0:
            for k in list(islice(held, excess)):
                del held[k]

    def clear(self) -> None:
        """Forget every key."""
        self._keys.clear()
