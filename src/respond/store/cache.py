"""Stored items by id, kept in memory after they were read, for rebuilding contexts cheaply.

Items never change once stored (the first write of an id wins), so a cached item is the
stored one for as long as a live response refers to it: the cache can miss, never be wrong.
It serves only context loads, whose ids come from a live response row read in the same job
(a deleted item is never asked for); lookups that decide whether an item exists at all
(``get_items``) go to the database.

Rules: bounded by the JSON size of what it holds (least recently used first out); items are
shared between the callers that read them, which must not mutate them; safe to use from
several threads (a store may run a job on its own thread).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterable

from respond.store import Item

DEFAULT_MAX_BYTES = 64 * 2**20


class ItemCache:
    def __init__(self, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[str, tuple[Item, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._items)

    @property
    def size(self) -> int:
        """The JSON size of the items held, in bytes."""
        return self._bytes

    def get_many(self, ids: Iterable[str]) -> list[Item | None]:
        """The cached item for each id (None where it is not held), marked as recently used."""
        items = self._items
        found: list[Item | None] = []
        with self._lock:
            for item_id in ids:
                entry = items.get(item_id)
                if entry is None:
                    found.append(None)
                else:
                    items.move_to_end(item_id)
                    found.append(entry[0])
        return found

    def put_many(self, items: Iterable[Item], size_each: int) -> None:
        """Hold ``items`` (as read from the store), each counted as ``size_each`` bytes."""
        if size_each > self.max_bytes:
            return
        with self._lock:
            for item in items:
                item_id = item.get("id")
                if not isinstance(item_id, str) or item_id in self._items:
                    continue
                self._items[item_id] = (item, size_each)
                self._bytes += size_each
            while self._bytes > self.max_bytes:
                _, (_, size) = self._items.popitem(last=False)
                self._bytes -= size
