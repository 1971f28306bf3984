"""ItemCache: bounded by bytes, least recently used out, never holding what it was not given."""

from __future__ import annotations

from respond.store.cache import ItemCache


def item(n: int) -> dict[str, object]:
    return {"id": f"msg_{n}", "type": "message", "content": [{"text": str(n)}]}


def test_get_many_gives_each_item_or_none_in_order() -> None:
    cache = ItemCache(max_bytes=1000)
    cache.put_many([item(1), item(2)], 100)
    assert cache.get_many(["msg_2", "msg_9", "msg_1"]) == [item(2), None, item(1)]
    assert len(cache) == 2 and cache.size == 200


def test_the_first_held_go_first_when_full() -> None:
    cache = ItemCache(max_bytes=300)
    cache.put_many([item(1), item(2), item(3)], 100)
    cache.put_many([item(4), item(5)], 100)
    assert cache.get_many(["msg_1", "msg_2", "msg_3", "msg_4", "msg_5"]) == [
        None, None, item(3), item(4), item(5)]
    assert cache.size == 300 and len(cache) == 3
    cache.put_many([item(1)], 100)  # an evicted item read again is held again
    assert cache.get_many(["msg_1", "msg_3"]) == [item(1), None]


def test_items_larger_than_the_cache_and_repeats_are_not_held() -> None:
    cache = ItemCache(max_bytes=100)
    cache.put_many([item(1)], 101)
    assert len(cache) == 0
    cache.put_many([item(2), item(2), {"no": "id"}], 10)
    assert len(cache) == 1 and cache.size == 10
