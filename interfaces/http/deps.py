"""What the routes need from each request: the wired Sandbar, the caller, parsed ids."""

from __future__ import annotations

from typing import Annotated
from uuid import UUID

from fastapi import Depends, Request

from application.errors import Invalid
from interfaces.bootstrap import Sandbar

SESSION_COOKIE = "sandbar_session"  # "__Host-" in front of it over https


def sandbar(request: Request) -> Sandbar:
    return request.app.state.sandbar


def session_cookie_name(request: Request) -> str:
    """The session cookie's name: ``__Host-`` over https, so no sibling host (a
    sandbox's page) can set or shadow it for the API host."""
    https = sandbar(request).settings.public_scheme == "https"
    return f"__Host-{SESSION_COOKIE}" if https else SESSION_COOKIE


def session_token(request: Request) -> str | None:
    return request.cookies.get(session_cookie_name(request))


def caller(request: Request) -> UUID:
    """The signed-in user's id, or 401."""
    return sandbar(request).accounts.authenticate(session_token(request))


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
