"""Stored items by id, kept in memory after they were read, for rebuilding contexts cheaply.

Items never change once stored (the first write of an id wins), so a cached item is the
stored one for as long as a live response refers to it: the cache can miss, never be wrong.
It serves only context loads, whose ids come from a live response row read in the same job
(a deleted item is never asked for); lookups that decide whether an item exists at all
(``get_items``) go to the database.

Rules: bounded by the JSON size of what it holds, the first held going first (a hit does
not reorder: lookups stay one dictionary probe per id, and an evicted item that is still
needed is simply read and held again); items are shared between the callers that read them, which must not mutate them; safe to use from
several threads (a store may run a job on its own thread).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterable

from respond.store import Item

# counted in JSON bytes; as Python objects the items take a few times that in memory
DEFAULT_MAX_BYTES = 16 * 2**20


class ItemCache:
    def __init__(self, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.max_bytes = max_bytes
        self._items: dict[str, Item] = {}
        self._sizes: OrderedDict[str, int] = OrderedDict()  # in the order they were put
        self._bytes = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._items)

    @property
    def size(self) -> int:
        """The JSON size of the items held, in bytes."""
        return self._bytes

    def get_many(self, ids: Iterable[str]) -> list[Item | None]:
        """The cached item for each id, None where it is not held."""
        get = self._items.get
        with self._lock:
            return [get(item_id) for item_id in ids]

    def lookup(self, ids: list[str]) -> tuple[list[Item | None], list[str]]:
        """``get_many(ids)``, and the ids it did not hold (in order)."""
        cached = self.get_many(ids)
        return cached, [item_id for item_id, held in zip(ids, cached, strict=True)
                        if held is None]

    def put_many(self, items: Iterable[Item], size_each: int) -> None:
        """Hold ``items`` (as read from the store), each counted as ``size_each`` bytes."""
        if size_each > self.max_bytes:
            return
        with self._lock:
            for item in items:
                item_id = item.get("id")
                if not isinstance(item_id, str) or item_id in self._items:
                    continue
                self._items[item_id] = item
                self._sizes[item_id] = size_each
                self._bytes += size_each
            while self._bytes > self.max_bytes:
                oldest, size = self._sizes.popitem(last=False)
                del self._items[oldest]
                self._bytes -= size


def fill(ids: list[str], cached: list[Item | None], read: Iterable[Item]) -> list[Item]:
    """``cached`` (one entry per id, None where the cache had nothing) with its gaps filled
    from ``read``; an id found in neither is left out (its reader has logged it)."""
    by_id = {item["id"]: item for item in read}
    filled = (by_id.get(item_id) if held is None else held
              for item_id, held in zip(ids, cached, strict=True))
    return [item for item in filled if item is not None]
