"""Cursor paging over in-memory lists: the cursor is the last key served, so walking it never
repeats an item even while the list changes."""

from __future__ import annotations

from typing import Any

from gateway.backend.base import Page


def page_after(
    items: list[tuple[str, dict[str, Any]]],
    limit: int,
    cursor: str | None,
    *,
    newest_first: bool = False,
) -> Page:
    ordered = sorted(items, key=lambda kv: kv[0], reverse=newest_first)
    if cursor is not None:
        if newest_first:
            ordered = [kv for kv in ordered if kv[0] < cursor]
        else:
            ordered = [kv for kv in ordered if kv[0] > cursor]
    chosen = ordered[:limit]
    next_cursor = chosen[-1][0] if len(ordered) > limit else None
    return Page(items=[v for _, v in chosen], total=len(items), next_cursor=next_cursor)
