"""What the routes need from each request: the wired Sandbar, the caller, parsed ids."""

from __future__ import annotations

from typing import Annotated
from uuid import UUID

from fastapi import Depends, Request

from application.errors import Invalid
from interfaces.bootstrap import Sandbar

SESSION_COOKIE = "sandbar_session"


def sandbar(request: Request) -> Sandbar:
    return request.app.state.sandbar


def caller(request: Request) -> UUID:
    """The signed-in user's id, or 401."""
    return sandbar(request).accounts.authenticate(request.cookies.get(SESSION_COOKIE))


def parse_id(value: str, field: str) -> UUID:
    try:
        return UUID(value)
    except ValueError:
        raise Invalid(f"{field} must be a UUID", field=field) from None


def sandbox_origin(request: Request) -> tuple[str, str, str]:
    """Scheme, base domain and port of sandbox addresses, as the caller reached us."""
    where = sandbar(request).addresses
    return where.scheme, where.base, where.port_suffix(request.headers.get("host", ""))


App = Annotated[Sandbar, Depends(sandbar)]
Caller = Annotated[UUID, Depends(caller)]
