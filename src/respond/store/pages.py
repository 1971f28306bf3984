"""Ordering and paging of stored items, the same for every store adapter (pure functions)."""

from __future__ import annotations

import logging

from respond.store import Item

log = logging.getLogger(__name__)


def in_order(response_id: str, ids: list[str], items: list[Item]) -> list[Item]:
    """``items`` as ``ids`` orders them; a missing item (a bug elsewhere) is logged and skipped."""
    if len(items) == len(ids) and all(item.get("id") == i for item, i in zip(items, ids)):
        return items
    by_id = {item.get("id"): item for item in items}
    ordered = []
    for item_id in ids:
        item = by_id.get(item_id)
        if item is None:
            log.error("response %s refers to missing item %s; skipped", response_id, item_id)
        else:
            ordered.append(item)
    return ordered


def page(
    ids: list[str], *, limit: int, after: str | None, before: str | None
) -> tuple[list[str], bool]:
    """A page of ``ids`` (already in the requested order) and whether more lie beyond it.

    ``after``: ids strictly after that id; ``before``: strictly before it. With only
    ``before``, the page is the ``limit`` ids just before it (the previous page) and
    ``has_more`` tells whether more lie further back. An unknown cursor gives an empty page.
    """
    start, stop = 0, len(ids)
    try:
        if after is not None:
            start = ids.index(after) + 1
        if before is not None:
            stop = ids.index(before)
    except ValueError:
        return [], False
    window = ids[start:stop]
    has_more = len(window) > limit
    if before is not None and after is None:
        return window[max(len(window) - limit, 0) :], has_more
    return window[:limit], has_more
