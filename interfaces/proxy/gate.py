"""Who may pass to a sandbox's agent, and where it is: the proxy's decision per request.

The host names the sandbox; the grant (the host's own cookie, or an access token as
``Authorization: Bearer``) names the user; the routing table says where the agent is and
whether it may be reached; the member's role is checked. All of it comes from the
projections through the Directory's cache, never from the aggregates. A browser with no
grant is sent to the API host for a one-time ticket, which ``TICKET_PATH`` swaps for the
grant cookie.

Sandbox hosts are sibling subdomains, one site to a browser, so a page of one sandbox
could send a visitor's cookie to another: a write or a WebSocket whose ``Origin`` is not
the sandbox's own is refused, and one with no ``Origin`` (which browsers always send on
those) must bring an access token.

``decide_cached`` answers from the cache alone, without awaiting (the common case);
``decide`` may read the database, redeem a ticket or resume a paused sandbox. A refusal is
a value returned, never an exception raised: an exception object kept between requests
would carry each request's frames along with it."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, quote
from uuid import UUID

from application.errors import AppError
from application.opening import GONE, may_open
from infrastructure.agents import upstream_headers
from interfaces.addresses import Addresses, encoded_next, safe_next
from interfaces.proxy import pages
from interfaces.proxy.directory import MISS, Directory
from interfaces.proxy.headers import Headers, Index, bearer, cookie

GRANT_COOKIE = b"sandbar_sandbox"  # "__Host-" in front of it over https
TICKET_PATH = b"/_sandbar/ticket"
STARTING = {"creating", "resuming", "pausing"}
SAFE_METHODS = frozenset((b"GET", b"HEAD", b"OPTIONS"))
Route = dict[str, Any]


@dataclass
class Request:
    """What the gate looks at in a request."""

    host: str
    method: bytes
    target: bytes  # path and query, as sent
    headers: Headers
    index: Index  # each header's first value
    websocket: bool
    sandbox: tuple[str, UUID] | None  # (host label, sandbox id) parsed from the host

    @property
    def wants_html(self) -> bool:
        return not self.websocket and b"text/html" in (self.index.get(b"accept") or b"")


@dataclass
class Admit:
    """Forward the request to ``route``'s agent with ``credential`` added: at ``address``
    ("host:port", "https://host:port", or "tunnel:{sandbox id}" for a local agent)."""

    route: Route
    sandbox_id: UUID
    credential: tuple[bytes, bytes]
    address: str


@dataclass
class Answer:
    """The proxy answers the request itself."""

    status: int
    headers: Headers
    body: bytes = b""


@dataclass(frozen=True, slots=True)
class Refused:
    """Why the proxy answers a request itself: a value, shared freely (it holds nothing
    of any request)."""

    status: int
    code: str
    title: str
    message: str
    retry_after: int | None = None

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
CROSS_ORIGIN = Refused(
    403,
    "cross_origin",
    "Not allowed from another site",
    "A page of another site may not change anything in this sandbox.",
)
NO_ORIGIN = Refused(
    403,
    "origin_required",
    "Not allowed without an origin",
    "A change sent with the browser's cookie must say its Origin; programs use an access "
    "token (Authorization: Bearer).",
)
AGENT_OFFLINE = Refused(
    502,
    "agent_offline",
    "The agent is offline",
    "This sandbox runs on a member's machine, and its agent is not connected.",
)
FAILED = Refused(
    502,
    "sandbox_failed",
    "The sandbox is not running",
    "The sandbox failed to start; its status in Sandbar says why.",
)
NOT_READY = Refused(
    503,
    "not_ready",
    "Sandbar is starting",
    "Sandbar is bringing its records up to date after an upgrade; this page retries by itself.",
    retry_after=5,
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


def grant_cookie_name(public_scheme: str) -> bytes:
    """The sandbox host's cookie: ``__Host-`` over https, so no sibling host (another
    sandbox's page) can set or shadow it."""
    return (b"__Host-" if public_scheme == "https" else b"") + GRANT_COOKIE


# What ``_decide`` returns: a decision, a refusal, or None (the cache cannot answer
# alone: a miss, a ticket, a paused sandbox).
Decision = Admit | Answer | Refused | None


class Gate:
    """The proxy's decision per request, on what it is given: ``directory`` (the cached
    projections), ``addresses`` (which host is which sandbox's), and the four things it
    does besides reading: ``note`` a sandbox in use, derive an agent's
    ``upstream_secret``, ``redeem`` a ticket for a grant, ``resume`` a paused sandbox
    (the last two block: they run in a worker thread)."""

    def __init__(
        self,
        directory: Directory,
        addresses: Addresses,
        *,
        note: Callable[[UUID], None],
        upstream_secret: Callable[[UUID], str],
        redeem: Callable[[str, UUID], str | None],
        resume: Callable[[UUID, UUID], object],
        public_scheme: str,
        grant_ttl: int,
        cookie_secure: bool,
        open_wait: float,
    ) -> None:
        self.directory = directory
        self._where = addresses
        self._note = note
        self._upstream_secret = upstream_secret
        self._redeem_ticket = redeem
        self._resume_sandbox = resume
        # By UUID.int (a C hash): the agent's credential, and its tunnel's address if local.
        self._upstreams: dict[int, tuple[tuple[bytes, bytes], str | None]] = {}
        self.cookie_name = grant_cookie_name(public_scheme)
        self._cookie_attrs = f"; Path=/; HttpOnly; SameSite=Lax; Max-Age={grant_ttl}"
        if cookie_secure or public_scheme == "https":
            self._cookie_attrs += "; Secure"
        self._open_wait = open_wait
        self._hosts: dict[str, tuple[str, UUID] | None] = {}
        self._origins: dict[str, bytes] = {}  # host -> the sandbox's own origin

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
        directory = self.directory
        decision = self._decide(
            request, directory.peek_route, directory.peek_grant, directory.peek_role
        )
        if decision.__class__ is Refused:
            return decision.answer(request)  # type: ignore[union-attr]
        return decision  # type: ignore[return-value]

    def _decide(
        self,
        request: Request,
        route_of: Callable[[UUID], Any],
        grant_of: Callable[[str], Any],
        role_of: Callable[[UUID, UUID], Any],
    ) -> Decision:
        """The judgement, on values the three lookups give (MISS: not known yet)."""
        if request.sandbox is None:
            return NOT_FOUND
        label, sandbox_id = request.sandbox
        route = route_of(sandbox_id)
        if route is MISS:
            return None
        if route is None or route["host"] != label or route["status"] in GONE:
            return NOT_FOUND
        writes = request.websocket or request.method not in SAFE_METHODS
        origin = request.index.get(b"origin") if writes else None
        if origin is not None and origin.lower() != self._own_origin(request.host, label):
            return CROSS_ORIGIN
        if request.target.startswith(TICKET_PATH) and not request.websocket:
            return None
        token, by_bearer = self._token(request)
        grant = grant_of(token) if token else None
        if grant is MISS:
            return None
        if grant is None or not grant.valid_for(sandbox_id, time.time()):
            if not by_bearer and not request.websocket and request.method in (b"GET", b"HEAD"):
                return self._to_ticket(request, sandbox_id)  # a browser: fetch a grant
            return UNAUTHENTICATED
        if writes and origin is None and not by_bearer:
            return NO_ORIGIN  # the cookie alone, and no Origin: not what browsers send
        role = role_of(route["workspace_id"], grant.user_id)
        if role is MISS:
            return None
        if role is None:
            return NOT_FOUND
        if not may_open(role):
            return FORBIDDEN
        status = route["status"]
        if status == "paused":
            return None
        if status == "running" and (route["target"] or route["kind"] == "local"):
            self._note(sandbox_id)
            credential, tunnel = self._upstream(route)
            return Admit(route, sandbox_id, credential, tunnel or route["target"])
        if status in STARTING:
            return _starting(status)
        return AGENT_OFFLINE if route["kind"] == "local" else FAILED

    def _own_origin(self, host: str, label: str) -> bytes:
        """The sandbox's own origin, as browsers write it in ``Origin``."""
        origin = self._origins.get(host)
        if origin is None:
            origin = self._where.sandbox_origin(label, host).lower().encode("latin-1")
            if len(self._origins) > 10_000:
                self._origins.clear()
            self._origins[host] = origin
        return origin

    def _to_ticket(self, request: Request, sandbox_id: UUID) -> Answer:
        target = safe_next(request.target.decode("latin-1")) or "/"
        location = (
            f"{self._where.api_origin(request.host)}/api/sandboxes/{sandbox_id}/open"
            f"?next={quote(target.encode('latin-1'), safe='')}"
        )
        return Answer(302, [(b"location", location.encode()), (b"cache-control", b"no-store")])

    def _upstream(self, route: Route) -> tuple[tuple[bytes, bytes], str | None]:
        """The credential the agent expects, and the tunnel's address for a local
        sandbox (None: the route's target), made once per sandbox."""
        sandbox_id = route["sandbox_id"]
        known = self._upstreams.get(sandbox_id.int)
        if known is None:
            secret = self._upstream_secret(sandbox_id)
            ((name, value),) = upstream_headers(route["type"], secret).items()
            tunnel = f"tunnel:{sandbox_id}" if route["kind"] == "local" else None
            known = self._upstreams.setdefault(
                sandbox_id.int, ((name.encode(), value.encode()), tunnel)
            )
        return known

    # The full way: may read the database, redeem a ticket, resume a sandbox.

    async def decide(self, request: Request) -> Admit | Answer:
        # (The cache is empty until the views are ready: only this path needs to ask.)
        decision = await self._decide_fully(request) if self.directory.ready else NOT_READY
        if isinstance(decision, Refused):
            return decision.answer(request)
        return decision

    async def _decide_fully(self, request: Request) -> Admit | Answer | Refused:
        if request.sandbox is None:
            return NOT_FOUND
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
        decision = self._decide(request, lambda _: route, lambda _: grant, lambda *_: role)
        if decision is not None:
            return decision
        if request.target.startswith(TICKET_PATH) and not request.websocket:
            return await self._redeem(request, sandbox_id)
        # Only a paused sandbox is left to wait for.
        assert route is not None and user_id is not None
        resumed = await self._resume(sandbox_id, user_id)
        if isinstance(resumed, Refused):
            return resumed
        decision = self._decide(request, lambda _: resumed, lambda _: grant, lambda *_: role)
        return _starting("still resuming", retry_after=5) if decision is None else decision

    def _token(self, request: Request) -> tuple[str | None, bool]:
        """The grant a request presents (a Bearer token, else the host's cookie), and
        whether it came as a Bearer token."""
        presented = bearer(request.index)
        if presented:
            return presented.decode("latin-1"), True
        if b"cookie" not in request.index:
            return None, False
        return cookie(request.headers, self.cookie_name), False

    async def _redeem(self, request: Request, sandbox_id: UUID) -> Answer | Refused:
        """The ticket swapped for the host's cookie, and back to the page first asked for.
        Whatever can fail is done before the ticket is spent."""
        query = parse_qs(request.target.partition(b"?")[2].decode("latin-1"))
        ticket = (query.get("ticket") or [""])[0]
        target = safe_next((query.get("next") or ["/"])[0]) or "/"
        location = encoded_next(target).encode("ascii")
        grant = None
        if ticket:
            grant = await asyncio.to_thread(self._redeem_ticket, ticket, sandbox_id)
        if grant is None:
            return BAD_TICKET
        set_cookie = self.cookie_name + b"=" + grant.encode() + self._cookie_attrs.encode()
        return Answer(
            302,
            [
                (b"location", location),
                (b"set-cookie", set_cookie),
                (b"cache-control", b"no-store"),
                (b"referrer-policy", b"no-referrer"),
            ],
        )

    async def _resume(self, sandbox_id: UUID, user_id: UUID) -> Route | Refused:
        """Resume a paused sandbox for this request and wait (bounded) until it runs."""
        with contextlib.suppress(AppError):  # already resuming, say
            await asyncio.to_thread(self._resume_sandbox, user_id, sandbox_id)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._open_wait
        while loop.time() < deadline:
            route = await self.directory.route(sandbox_id)
            if route is None:
                return NOT_FOUND
            if route["status"] not in ("paused", *STARTING):
                return route
            await asyncio.sleep(0.1)
        return _starting("still resuming", retry_after=5)
