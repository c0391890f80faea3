"""The subdomain proxy: ``oc-{id}.{base}`` and ``claw-{id}.{base}`` reach the sandbox's
agent, for members allowed to use it.

Per request: the host names the sandbox; the grant (the host's own cookie, or an access
token as ``Authorization: Bearer``) names the user; the routing table says where the
agent is and whether it may be reached; the member's role is checked. All of it comes from
the projections through the Directory's cache, never from the aggregates. A browser with
no grant is sent to the API host for a one-time ticket (``TICKET_PATH`` swaps it here)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs, quote
from uuid import UUID

from starlette.types import Message, Receive, Scope, Send

from application.errors import AppError
from application.opening import GONE, may_open
from infrastructure.agents import upstream_headers
from interfaces.addresses import safe_next
from interfaces.bootstrap import Sandbar
from interfaces.proxy import pages
from interfaces.proxy.directory import Directory
from interfaces.proxy.headers import cookie, header, to_agent, to_browser
from interfaces.proxy.upstream import Exchange, Pool, UpstreamError
from interfaces.proxy.ws_relay import refuse_websocket, relay_websocket

log = logging.getLogger(__name__)

GRANT_COOKIE = b"sandbar_sandbox"
TICKET_PATH = "/_sandbar/ticket"
STARTING = {"creating", "resuming", "pausing"}
IDEMPOTENT = {"GET", "HEAD", "OPTIONS"}
KEEPER_EVERY = 5.0  # seconds between activity flushes (and notes for open streams)


class Refused(Exception):
    """An answer the proxy gives itself instead of forwarding."""

    def __init__(
        self, status: int, code: str, title: str, message: str, retry_after: int | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.title, self.message = status, code, title, message
        self.retry_after = retry_after


NOT_FOUND = Refused(404, "not_found", "No such sandbox", "There is no sandbox at this address.")


class SandboxProxy:
    def __init__(self, sandbar: Sandbar) -> None:
        settings = sandbar.settings
        self._sb = sandbar
        self._where = sandbar.addresses
        self._directory = Directory(sandbar.reads, sandbar.grants, sandbar.changes)
        self._pool: Pool | None = None
        self._keeper: asyncio.Task[None] | None = None
        self._streams: Counter[UUID] = Counter()  # open streams per sandbox
        self._credentials: dict[UUID, tuple[bytes, bytes]] = {}
        self._cookie_attrs = f"; Path=/; HttpOnly; SameSite=Lax; Max-Age={settings.grant_ttl}"
        if settings.cookie_secure:
            self._cookie_attrs += "; Secure"
        self._proto = settings.public_scheme.encode()
        self._timeout = settings.upstream_timeout
        self._open_wait = settings.open_wait

    # Entry

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self._pool is None:
            self._start()
        websocket = scope["type"] == "websocket"
        if websocket:
            await receive()  # websocket.connect
        headers = scope["headers"]
        host = (header(headers, b"host") or b"").decode("latin-1")
        wants_html = not websocket and b"text/html" in (header(headers, b"accept") or b"")
        try:
            found = self._where.sandbox_of(host)
            if found is None:
                raise NOT_FOUND
            label, sandbox_id = found
            if not websocket and scope["path"] == TICKET_PATH:
                await self._redeem(scope, send, sandbox_id)
                return
            route = await self._directory.route(sandbox_id)
            if route is None or route["host"] != label or route["status"] in GONE:
                raise NOT_FOUND
            user_id = await self._user(scope, sandbox_id, host, websocket)
            if user_id is None:
                await self._to_ticket(scope, send, sandbox_id, host)
                return
            route = await self._reachable(route, user_id)
            self._sb.activity.note(sandbox_id)
            if websocket:
                headers = self._agent_headers(scope, route, host, websocket=True)
                with self._open_stream(sandbox_id):
                    await relay_websocket(scope, receive, send, route["target"], headers)
            else:
                await self._forward(scope, receive, send, route, host)
        except Refused as r:
            await self._refuse(scope, send, r, wants_html)

    @contextlib.contextmanager
    def _open_stream(self, sandbox_id: UUID) -> Iterator[None]:
        """An open stream (a long download, SSE, a WebSocket) keeps its sandbox in use."""
        self._streams[sandbox_id] += 1
        try:
            yield
        finally:
            self._streams[sandbox_id] -= 1
            if self._streams[sandbox_id] <= 0:
                del self._streams[sandbox_id]

    def _start(self) -> None:
        self._sb.changes.start()
        self._pool = Pool()
        self._keeper = asyncio.get_running_loop().create_task(self._keep())

    async def _keep(self) -> None:
        """Open streams count as activity; notes reach the table every few seconds."""
        while True:
            await asyncio.sleep(KEEPER_EVERY)
            for sandbox_id in list(self._streams):
                self._sb.activity.note(sandbox_id)
            try:
                await asyncio.to_thread(self._sb.activity.flush)
            except Exception:
                log.warning("could not record sandbox activity", exc_info=True)

    # Who is asking, and may they

    async def _user(
        self, scope: Scope, sandbox_id: UUID, host: str, websocket: bool
    ) -> UUID | None:
        """The user whose grant this request carries; None when a browser should fetch
        one (a GET without a usable cookie); Refused when it cannot."""
        headers = scope["headers"]
        auth = header(headers, b"authorization")
        bearer = (
            auth[7:].decode("latin-1").strip() if auth and auth[:7].lower() == b"bearer " else None
        )
        token = bearer or cookie(headers, GRANT_COOKIE)
        grant = await self._directory.grant(token) if token else None
        if grant is not None and grant.valid_for(sandbox_id, datetime.now(UTC)):
            return grant.user_id
        if bearer is None and not websocket and scope["method"] in ("GET", "HEAD"):
            return None
        raise Refused(
            401,
            "unauthenticated",
            "Sign in to open this sandbox",
            "Open this sandbox from Sandbar, or send an access token as Authorization: Bearer.",
        )

    async def _reachable(self, route: dict[str, Any], user_id: UUID) -> dict[str, Any]:
        sandbox_id = route["sandbox_id"]
        role = await self._directory.role(route["workspace_id"], user_id)
        if role is None:
            raise NOT_FOUND
        if not may_open(role):
            raise Refused(
                403, "forbidden", "Not allowed", "Opening a sandbox needs the developer role."
            )
        status = route["status"]
        if status == "paused":
            route = await self._resume(sandbox_id, user_id)
            status = route["status"]
        if status == "running" and route["target"]:
            return route
        if status in STARTING:
            raise Refused(
                503,
                "sandbox_starting",
                "Starting your sandbox",
                f"The sandbox is {status}; this page retries by itself.",
                retry_after=2,
            )
        if route["kind"] == "local":
            raise Refused(
                502,
                "agent_offline",
                "The agent is offline",
                "This sandbox runs on a member's machine, and its agent is not connected.",
            )
        raise Refused(
            502,
            "sandbox_failed",
            "The sandbox is not running",
            "The sandbox failed to start; its status in Sandbar says why.",
        )

    async def _resume(self, sandbox_id: UUID, user_id: UUID) -> dict[str, Any]:
        """Resume a paused sandbox for this request and wait (bounded) until it runs."""
        with contextlib.suppress(AppError):  # already resuming, say
            await asyncio.to_thread(self._sb.sandboxes.resume, user_id, sandbox_id)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._open_wait
        while loop.time() < deadline:
            route = await self._directory.route(sandbox_id)
            if route is None or route["status"] not in ("paused", *STARTING):
                return route or {"status": "deleted", "kind": "cloud", "target": None}
            await asyncio.sleep(0.1)
        raise Refused(
            503,
            "sandbox_starting",
            "Starting your sandbox",
            "The sandbox is still resuming; this page retries by itself.",
            retry_after=5,
        )

    # The ticket flow

    async def _to_ticket(self, scope: Scope, send: Send, sandbox_id: UUID, host: str) -> None:
        asked = scope.get("raw_path") or scope["path"].encode()
        if scope["query_string"]:
            asked += b"?" + scope["query_string"]
        target = safe_next(asked.decode("latin-1")) or "/"
        location = (
            f"{self._where.api_origin(host)}/api/sandboxes/{sandbox_id}/open"
            f"?next={quote(target, safe='')}"
        )
        await _answer(
            send, 302, [(b"location", location.encode()), (b"cache-control", b"no-store")]
        )

    async def _redeem(self, scope: Scope, send: Send, sandbox_id: UUID) -> None:
        query = parse_qs(scope["query_string"].decode("latin-1"))
        ticket = (query.get("ticket") or [""])[0]
        target = safe_next((query.get("next") or ["/"])[0]) or "/"
        grant = (
            await asyncio.to_thread(self._sb.opening.redeem, ticket, sandbox_id) if ticket else None
        )
        if grant is None:
            raise Refused(
                403,
                "invalid_ticket",
                "This link has expired",
                "The link was already used, has expired, or is for another sandbox. "
                "Open the sandbox again from Sandbar.",
            )
        set_cookie = GRANT_COOKIE + b"=" + grant.encode() + self._cookie_attrs.encode()
        await _answer(
            send,
            302,
            [
                (b"location", target.encode("latin-1")),
                (b"set-cookie", set_cookie),
                (b"cache-control", b"no-store"),
                (b"referrer-policy", b"no-referrer"),
            ],
        )

    # Forwarding

    def _agent_headers(
        self, scope: Scope, route: dict[str, Any], host: str, websocket: bool = False
    ) -> list[tuple[bytes, bytes]]:
        sandbox_id = route["sandbox_id"]
        credential = self._credentials.get(sandbox_id)
        if credential is None:
            secret = self._sb.secrets.upstream_credential(sandbox_id)
            ((name, value),) = upstream_headers(route["type"], secret).items()
            credential = self._credentials.setdefault(sandbox_id, (name.encode(), value.encode()))
        client = scope.get("client")
        return to_agent(
            scope["headers"],
            credential=credential,
            client=(client[0] if client else "").encode(),
            proto=self._proto,
            host=host.encode("latin-1"),
            websocket=websocket,
        )

    async def _forward(
        self, scope: Scope, receive: Receive, send: Send, route: dict[str, Any], host: str
    ) -> None:
        assert self._pool is not None
        target: str = route["target"]
        method: str = scope["method"]
        path = scope.get("raw_path") or scope["path"].encode()
        if scope["query_string"]:
            path += b"?" + scope["query_string"]
        headers = self._agent_headers(scope, route, host)
        first = await receive()
        body: bytes = first.get("body", b"")
        more: bool = first.get("more_body", False)
        chunked = more and header(scope["headers"], b"content-length") is None
        lines = [method.encode(), b" ", path, b" HTTP/1.1\r\n"]
        for name, value in headers:
            lines += [name, b": ", value, b"\r\n"]
        if chunked:
            lines.append(b"transfer-encoding: chunked\r\n\r\n")
            if body:
                lines += [b"%x\r\n" % len(body), body, b"\r\n"]
        else:
            if header(scope["headers"], b"content-length") is None and (
                body or method not in IDEMPOTENT
            ):
                lines.append(b"content-length: %d\r\n" % len(body))
            lines += [b"\r\n", body]
        request = b"".join(lines)

        uploader: asyncio.Task[None] | None = None
        conn: Exchange | None = None
        for attempt in range(2):
            try:
                conn, reused = await self._pool.acquire(target)
            except UpstreamError as e:
                raise Refused(
                    502, "agent_unreachable", "The sandbox did not answer", f"{e}."
                ) from None
            conn.start(request)
            if more:
                uploader = asyncio.create_task(_upload(conn, receive, chunked))
            try:
                await conn.response_head(self._timeout)
                break
            except UpstreamError as e:
                conn.close()
                if reused and not more and method in IDEMPOTENT and attempt == 0:
                    continue  # a stale keep-alive connection: try a fresh one
                if uploader is not None:
                    uploader.cancel()
                raise Refused(
                    502, "agent_unreachable", "The sandbox did not answer", f"{e}."
                ) from None
        assert conn is not None
        try:
            await self._respond(scope, receive, send, conn, route["sandbox_id"], method, uploader)
        finally:
            if uploader is not None and not uploader.done():
                uploader.cancel()
                conn.close()  # answered before the request was sent whole: not reusable
        self._pool.release(target, conn)

    async def _respond(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        conn: Exchange,
        sandbox_id: UUID,
        method: str,
        uploader: asyncio.Task[None] | None,
    ) -> None:
        start = {
            "type": "http.response.start",
            "status": conn.status,
            "headers": to_browser(conn.headers),
        }
        if method == "HEAD":
            conn.close()  # the parser cannot know this response has no body
            await send(start)
            await send({"type": "http.response.body", "body": b""})
            return
        ready = conn.ready_body()
        if ready is not None:
            await send(start)
            await send({"type": "http.response.body", "body": ready})
            return
        await send(start)
        with self._open_stream(sandbox_id):
            await self._stream_body(receive, send, conn, sandbox_id, uploader)

    async def _stream_body(
        self,
        receive: Receive,
        send: Send,
        conn: Exchange,
        sandbox_id: UUID,
        uploader: asyncio.Task[None] | None,
    ) -> None:
        watcher = asyncio.create_task(_watch_disconnect(receive, conn, uploader))
        try:
            async for chunk in conn.body():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        except UpstreamError as e:
            if not watcher.done():  # not the client leaving, but the agent breaking off
                log.warning("sandbox %s broke off a response: %s", sandbox_id, e)
            # Returning with the response unfinished makes the server drop the client's
            # connection, so a cut-short body is never taken for a whole one.
            return
        finally:
            watcher.cancel()
        await send({"type": "http.response.body", "body": b""})

    async def _refuse(self, scope: Scope, send: Send, r: Refused, wants_html: bool) -> None:
        if scope["type"] == "websocket":
            await refuse_websocket(scope, send, r.status)
            return
        body, headers = pages.render(
            r.status, r.code, r.title, r.message, wants_html=wants_html, retry_after=r.retry_after
        )
        await _answer(send, r.status, headers, body)


async def _answer(
    send: Send, status: int, headers: list[tuple[bytes, bytes]], body: bytes = b""
) -> None:
    if not body:
        headers = [*headers, (b"content-length", b"0")]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _upload(conn: Exchange, receive: Receive, chunked: bool) -> None:
    """Stream the rest of the request body to the agent, at the pace it reads."""
    while True:
        message: Message = await receive()
        if message["type"] == "http.disconnect":
            conn.close()
            return
        data = message.get("body", b"")
        if data:
            await conn.write(b"%x\r\n%b\r\n" % (len(data), data) if chunked else data)
        if not message.get("more_body", False):
            if chunked:
                await conn.write(b"0\r\n\r\n")
            return


async def _watch_disconnect(
    receive: Receive, conn: Exchange, uploader: asyncio.Task[None] | None
) -> None:
    """Let the agent go as soon as the client does (a closed tab ends its stream)."""
    if uploader is not None:
        with contextlib.suppress(Exception):
            await uploader
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            conn.close()
            return
