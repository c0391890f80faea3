"""Who may pass to a sandbox's agent, and where it is: the proxy's decision per request.

The host names the sandbox; the grant (the host's own cookie, or an access token as
``Authorization: Bearer``) names the user; the routing table says where the agent is and
whether it may be reached; the member's role is checked. All of it comes from the
projections through the Directory's cache, never from the aggregates. A browser with no
grant is sent to the API host for a one-time ticket, which ``TICKET_PATH`` swaps for the
grant cookie.

``decide_cached`` answers from the cache alone, without awaiting (the common case);
``decide`` may read the database, redeem a ticket or resume a paused sandbox."""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, quote
from uuid import UUID

from application.errors import AppError
from application.opening import GONE, may_open
from infrastructure.agents import upstream_headers
from infrastructure.grants import Grant
from interfaces.addresses import safe_next
from interfaces.bootstrap import Sandbar
from interfaces.proxy import pages
from interfaces.proxy.directory import MISS, Directory
from interfaces.proxy.headers import Headers, bearer, cookie, header

GRANT_COOKIE = b"sandbar_sandbox"
TICKET_PATH = b"/_sandbar/ticket"
STARTING = {"creating", "resuming", "pausing"}
Route = dict[str, Any]


@dataclass
class Request:
    """What the gate looks at in a request."""

    host: str
    method: bytes
    target: bytes  # path and query, as sent
    headers: Headers
    websocket: bool
    sandbox: tuple[str, UUID] | None  # (host label, sandbox id) parsed from the host

    @property
    def wants_html(self) -> bool:
        return not self.websocket and b"text/html" in (header(self.headers, b"accept") or b"")


@dataclass
class Admit:
    """Forward the request to ``route``'s agent with ``credential`` added."""

    route: Route
    sandbox_id: UUID
    credential: tuple[bytes, bytes]


@dataclass
class Answer:
    """The proxy answers the request itself."""

    status: int
    headers: Headers
    body: bytes = b""


class Refused(Exception):
    def __init__(
        self, status: int, code: str, title: str, message: str, retry_after: int | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.title, self.message = status, code, title, message
        self.retry_after = retry_after

    def answer(self, request: Request) -> Answer:
        body, headers = pages.render(
            self.status,
            self.code,
            self.title,
            self.message,
            wants_html=request.wants_html,
            retry_after=self.retry_after,
        )
        return Answer(self.status, headers, body)


NOT_FOUND = Refused(404, "not_found", "No such sandbox", "There is no sandbox at this address.")
UNAUTHENTICATED = Refused(
    401,
    "unauthenticated",
    "Sign in to open this sandbox",
    "Open this sandbox from Sandbar, or send an access token as Authorization: Bearer.",
)
FORBIDDEN = Refused(403, "forbidden", "Not allowed", "Opening a sandbox needs the developer role.")
AGENT_OFFLINE = Refused(
    502,
    "agent_offline",
    "The agent is offline",
    "This sandbox runs on a member's machine, and its agent is not connected.",
)
BAD_TICKET = Refused(
    403,
    "invalid_ticket",
    "This link has expired",
    "The link was already used, has expired, or is for another sandbox. "
    "Open the sandbox again from Sandbar.",
)


def _starting(status: str, retry_after: int = 2) -> Refused:
    return Refused(
        503,
        "sandbox_starting",
        "Starting your sandbox",
        f"The sandbox is {status}; this page retries by itself.",
        retry_after=retry_after,
    )


class _NeedsWork(Exception):
    """The cache cannot answer alone (a miss, a ticket, a paused sandbox)."""


class Gate:
    def __init__(self, sandbar: Sandbar) -> None:
        settings = sandbar.settings
        self._sb = sandbar
        self.directory = Directory(sandbar.reads, sandbar.grants, sandbar.changes)
        self._where = sandbar.addresses
        self._credentials: dict[UUID, tuple[bytes, bytes]] = {}
        self._cookie_attrs = f"; Path=/; HttpOnly; SameSite=Lax; Max-Age={settings.grant_ttl}"
        if settings.cookie_secure:
            self._cookie_attrs += "; Secure"
        self._open_wait = settings.open_wait
        self._hosts: dict[str, tuple[str, UUID] | None] = {}

    def sandbox_of(self, host: str) -> tuple[str, UUID] | None:
        found = self._hosts.get(host, MISS)
        if found is MISS:
            found = self._where.sandbox_of(host)
            if len(self._hosts) > 10_000:
                self._hosts.clear()
            self._hosts[host] = found
        return found  # type: ignore[return-value]

    # The fast way: the cache alone.

    def decide_cached(self, request: Request) -> Admit | Answer | None:
        """The decision if the cache holds all it needs, else None (use ``decide``)."""
        try:
            return self._decide(request, self._peek_route, self._peek_grant, self._peek_role)
        except Refused as r:
            return r.answer(request)
        except _NeedsWork:
            return None

    def _peek_route(self, sandbox_id: UUID) -> Route | None:
        route = self.directory.peek_route(sandbox_id)
        if route is MISS:
            raise _NeedsWork
        return route  # type: ignore[return-value]

    def _peek_grant(self, token: str) -> Grant | None:
        grant = self.directory.peek_grant(token)
        if grant is MISS:
            raise _NeedsWork
        return grant  # type: ignore[return-value]

    def _peek_role(self, workspace_id: UUID, user_id: UUID) -> str | None:
        role = self.directory.peek_role(workspace_id, user_id)
        if role is MISS:
            raise _NeedsWork
        return role  # type: ignore[return-value]

    def _decide(
        self, request: Request, route_of: Any, grant_of: Any, role_of: Any
    ) -> Admit | Answer:
        if request.sandbox is None:
            raise NOT_FOUND
        label, sandbox_id = request.sandbox
        route = route_of(sandbox_id)
        if route is None or route["host"] != label or route["status"] in GONE:
            raise NOT_FOUND
        if request.target.startswith(TICKET_PATH) and not request.websocket:
            raise _NeedsWork
        user_id = self._user(request, sandbox_id, grant_of)
        if user_id is None:
            return self._to_ticket(request, sandbox_id)
        role = role_of(route["workspace_id"], user_id)
        if role is None:
            raise NOT_FOUND
        if not may_open(role):
            raise FORBIDDEN
        status = route["status"]
        if status == "paused":
            raise _NeedsWork
        if status == "running" and (route["target"] or route["kind"] == "local"):
            self._sb.activity.note(sandbox_id)
            return Admit(route, sandbox_id, self._credential(route))
        if status in STARTING:
            raise _starting(status)
        if route["kind"] == "local":
            raise AGENT_OFFLINE
        raise Refused(
            502,
            "sandbox_failed",
            "The sandbox is not running",
            "The sandbox failed to start; its status in Sandbar says why.",
        )

    def _user(self, request: Request, sandbox_id: UUID, grant_of: Any) -> UUID | None:
        """The user whose grant this request carries; None when a browser should fetch
        one (a GET without a usable cookie); Refused when it cannot."""
        token, by_bearer = self._token(request)
        grant = grant_of(token) if token else None
        if grant is not None and grant.valid_for(sandbox_id, time.time()):
            return grant.user_id
        if not by_bearer and not request.websocket and request.method in (b"GET", b"HEAD"):
            return None
        raise UNAUTHENTICATED

    def _to_ticket(self, request: Request, sandbox_id: UUID) -> Answer:
        target = safe_next(request.target.decode("latin-1")) or "/"
        location = (
            f"{self._where.api_origin(request.host)}/api/sandboxes/{sandbox_id}/open"
            f"?next={quote(target, safe='')}"
        )
        return Answer(302, [(b"location", location.encode()), (b"cache-control", b"no-store")])

    def _credential(self, route: Route) -> tuple[bytes, bytes]:
        sandbox_id = route["sandbox_id"]
        credential = self._credentials.get(sandbox_id)
        if credential is None:
            secret = self._sb.secrets.upstream_credential(sandbox_id)
            ((name, value),) = upstream_headers(route["type"], secret).items()
            credential = self._credentials.setdefault(sandbox_id, (name.encode(), value.encode()))
        return credential

    # The full way: may read the database, redeem a ticket, resume a sandbox.

    async def decide(self, request: Request) -> Admit | Answer:
        try:
            return await self._decide_fully(request)
        except Refused as r:
            return r.answer(request)

    async def _decide_fully(self, request: Request) -> Admit | Answer:
        if request.sandbox is None:
            raise NOT_FOUND
        sandbox_id = request.sandbox[1]
        route = await self.directory.route(sandbox_id)
        grant = None
        token, _ = self._token(request)
        if token:
            grant = await self.directory.grant(token)
        user_id = grant.user_id if grant is not None else None
        role = (
            await self.directory.role(route["workspace_id"], user_id) if route and user_id else None
        )
        if request.target.startswith(TICKET_PATH) and not request.websocket:
            if route is None or route["host"] != request.sandbox[0] or route["status"] in GONE:
                raise NOT_FOUND
            return await self._redeem(request, sandbox_id)
        try:
            return self._decide(request, lambda _: route, lambda _: grant, lambda *_: role)
        except _NeedsWork:  # only a paused sandbox is left to wait for
            assert route is not None and user_id is not None
            route = await self._resume(sandbox_id, user_id)
        return self._decide(request, lambda _: route, lambda _: grant, lambda *_: role)

    @staticmethod
    def _token(request: Request) -> tuple[str | None, bool]:
        """The grant a request presents (a Bearer token, else the host's cookie), and
        whether it came as a Bearer token."""
        presented = bearer(request.headers)
        if presented is not None:
            return presented.decode("latin-1") or cookie(request.headers, GRANT_COOKIE), True
        return cookie(request.headers, GRANT_COOKIE), False

    async def _redeem(self, request: Request, sandbox_id: UUID) -> Answer:
        query = parse_qs(request.target.partition(b"?")[2].decode("latin-1"))
        ticket = (query.get("ticket") or [""])[0]
        target = safe_next((query.get("next") or ["/"])[0]) or "/"
        grant = None
        if ticket:
            grant = await asyncio.to_thread(self._sb.opening.redeem, ticket, sandbox_id)
        if grant is None:
            raise BAD_TICKET
        set_cookie = GRANT_COOKIE + b"=" + grant.encode() + self._cookie_attrs.encode()
        return Answer(
            302,
            [
                (b"location", target.encode("latin-1")),
                (b"set-cookie", set_cookie),
                (b"cache-control", b"no-store"),
                (b"referrer-policy", b"no-referrer"),
            ],
        )

    async def _resume(self, sandbox_id: UUID, user_id: UUID) -> Route:
        """Resume a paused sandbox for this request and wait (bounded) until it runs."""
        with contextlib.suppress(AppError):  # already resuming, say
            await asyncio.to_thread(self._sb.sandboxes.resume, user_id, sandbox_id)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._open_wait
        while loop.time() < deadline:
            route = await self.directory.route(sandbox_id)
            if route is None:
                raise NOT_FOUND
            if route["status"] not in ("paused", *STARTING):
                return route
            await asyncio.sleep(0.1)
        raise _starting("still resuming", retry_after=5)
