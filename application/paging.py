"""Lists come a page at a time (keyset paging): each list is ordered by a key that is
unique and never changes while the row is listed, and a page is the first ``limit`` rows
after a given key. A row inserted or deleted between two pages moves no other row, so a
walk through the pages sees every row that stays listed exactly once."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from application.errors import Invalid

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000

Key = tuple[Any, ...]
Row = dict[str, Any]


@dataclass(frozen=True)
class Page:
    """Which rows: at most ``limit``, those after the row whose sort key is ``after``
    (from the start when None)."""

    limit: int = DEFAULT_LIMIT
    after: Key | None = None

    def __post_init__(self) -> None:
        if not 1 <= self.limit <= MAX_LIMIT:
            raise Invalid(f"limit must be from 1 to {MAX_LIMIT}", field="limit")


@dataclass(frozen=True)
class Paged:
    """A page of rows, and the sort key to ask the next page after (None: the last page)."""

    rows: list[Row]
    next: Key | None


def paged(rows: Sequence[Row], page: Page, key: Callable[[Row], Key]) -> Paged:
    """``rows``: up to ``page.limit + 1`` rows in order (one more than the page says
    whether another page follows)."""
    if len(rows) <= page.limit:
        return Paged(list(rows), None)
    kept = list(rows[: page.limit])
    return Paged(kept, key(kept[-1]))
