"""Paging on the wire (docs/api.md "Paging"): ``?limit=&after=`` in, the same JSON array
out, and an RFC 8288 ``Link: <...>; rel="next"`` header while more rows may follow.

A cursor is opaque to clients: base64url (no padding) of ``LIST.A.B``, where LIST names
the list it came from and A.B is the sort key of the page's last row (a time as
microseconds since 1970 or a date as its ordinal, then the row's id as 32 hex digits).
A cursor given to another list, or one that does not parse, is a 422."""

from __future__ import annotations

import base64
import binascii
import re
from datetime import UTC, date, datetime, timedelta
from enum import Enum
from typing import Annotated, Any
from urllib.parse import quote, urlencode
from uuid import UUID

from fastapi import Query, Request
from pydantic.json_schema import SkipJsonSchema

from application.errors import Invalid
from application.paging import MAX_LIMIT, Key, Page

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
MAX_CURSOR = 96  # characters; the longest a cursor of ours is, with room
_CURSOR = re.compile(rf"[A-Za-z0-9_-]{{1,{MAX_CURSOR}}}")
_PLAIN = re.compile(r"([a-z])\.(-?[0-9]{1,20})\.([0-9a-f]{32})")


class Listing(Enum):
    """Each paged list: its tag in cursors, and whether its key starts with a time or a
    date."""

    workspaces = ("w", datetime)
    members = ("m", datetime)
    sandboxes = ("s", datetime)
    usage = ("u", date)

    def __init__(self, tag: str, first: type) -> None:
        self.tag = tag
        self.first = first


Limit = Annotated[
    int,
    Query(ge=1, le=MAX_LIMIT, description=f"at most this many rows (1 to {MAX_LIMIT})"),
]
After = Annotated[
    str | SkipJsonSchema[None],
    Query(
        description="the cursor of the next page, from the previous page's Link header",
        json_schema_extra={"pattern": f"^[A-Za-z0-9_-]{{1,{MAX_CURSOR}}}$"},
    ),
]


def encode(listing: Listing, key: Key) -> str:
    first, row_id = key
    number = (first - _EPOCH) // _MICROSECOND if listing.first is datetime else first.toordinal()
    plain = f"{listing.tag}.{number}.{UUID(str(row_id)).hex}"
    return base64.urlsafe_b64encode(plain.encode()).decode().rstrip("=")


def decode(listing: Listing, cursor: str) -> Key:
    """The sort key a cursor of ``listing`` holds; Invalid (422) for anything else."""
    bad = Invalid("after is not a cursor of this list (take it from a Link header)", field="after")
    if not _CURSOR.fullmatch(cursor):
        raise bad
    try:
        plain = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("ascii")
    except (binascii.Error, ValueError):
        raise bad from None
    found = _PLAIN.fullmatch(plain)
    if found is None or found[1] != listing.tag:
        raise bad
    number = int(found[2])
    try:
        first: Any = (
            _EPOCH + number * _MICROSECOND
            if listing.first is datetime
            else date.fromordinal(number)
        )
    except (OverflowError, ValueError):
        raise bad from None
    return (first, UUID(found[3]))


def page(listing: Listing, limit: int, after: str | None) -> Page:
    return Page(limit, None if after is None else decode(listing, after))


def next_link(request: Request, listing: Listing, limit: int, key: Key | None) -> dict[str, str]:
    """The headers of a page: a Link to the next one, when ``key`` says it may exist.
    The link keeps the request's other query parameters."""
    return {} if key is None else link(request, limit, encode(listing, key))


def link(request: Request, limit: int, cursor: str) -> dict[str, str]:
    """The Link header to the page after ``cursor``, keeping the request's other query
    parameters (any list's: the history's cursor is a log position)."""
    others = [(k, v) for k, v in request.query_params.multi_items() if k not in ("limit", "after")]
    query = urlencode([("limit", str(limit)), ("after", cursor), *others])
    return {"link": f'<{quote(request.url.path)}?{query}>; rel="next"'}
