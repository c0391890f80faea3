"""One request to a sandbox host and its answer: decided by the Gate, relayed to the
agent over a pooled connection (or a stream of its tunnel), the answer streamed back
with backpressure both ways; a WebSocket upgrade becomes a byte pipe once the agent
answers 101."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING
from uuid import UUID

from interfaces.proxy import http1
from interfaces.proxy.gate import AGENT_OFFLINE, Admit, Answer, Refused, Request
from interfaces.proxy.headers import Headers, Index, header, to_agent, to_browser
from interfaces.proxy.upstream import Upstream
from interfaces.tunnel.link import TunnelBusy

if TYPE_CHECKING:
    from interfaces.proxy.front import FrontProtocol

log = logging.getLogger(__name__)

HIGH_WATER = 256 * 1024  # request body bytes held while the agent connection opens


class Exchange:
    """One request from the browser and its answer: the Sink of its agent connection."""

    def __init__(self, front: FrontProtocol, request: Request, keep_alive: bool) -> None:
        self.front = front
        self.request = request
        # After a WebSocket handshake the connection is the socket's, or closes.
        self.keep_alive = keep_alive and not request.websocket
        self.preset: Answer | None = None
        self._replay: bytes | None = None  # a whole idempotent request, to retry once
        self._upstream: Upstream | None = None
        self._admit: Admit | None = None
        self._task: asyncio.Task[None] | None = None
        self._held: list[bytes] = []  # request body that came before the agent connection
        self._held_size = 0
        self._early: list[bytes] = []  # WebSocket bytes that came before the agent's 101
        self._early_size = 0
        self._request_done = False
        self._chunked_upload = b"transfer-encoding" in request.index
        self._responded = False
        self._chunked_response = False
        self._streaming: UUID | None = None
        self._done = False

    # Deciding

    def start(self) -> None:
        decision = self.preset or self._decide_now()
        if decision is None:
            self._task = asyncio.get_running_loop().create_task(self._decide_later())
        else:
            self._act(decision)

    def _decide_now(self) -> Admit | Answer | None:
        """The decision, if it can be made without waiting."""
        return self.front.proxy.gate.decide_cached(self.request)

    async def _decide(self) -> Admit | Answer:
        return await self.front.proxy.gate.decide(self.request)

    async def _decide_later(self) -> None:
        try:
            decision = await self._decide()
        except Exception:  # the database is down, say: the client may try again
            log.exception("could not decide on a proxied request")
            decision = self._refused(
                Refused(
                    503, "unavailable", "Try again", "Sandbar cannot check access right now.", 5
                )
            )
        if not self._done:
            self._act(decision)

    def _refused(self, refused: Refused) -> Answer:
        """The answer that says so, in the shape the client expects."""
        return refused.answer(self.request)

    def _act(self, decision: Admit | Answer) -> None:
        if isinstance(decision, Answer):
            self._answer(decision)
            return
        self._admit = decision
        local = decision.route["kind"] == "local"
        conn = None if self.request.websocket else self.front.proxy.pool.idle(decision.address)
        if conn is not None:
            self._send(conn, reused=True)
        elif local:  # a new stream in the agent's tunnel, opened at once
            try:
                conn = self._tunnel_stream(decision)
            except TunnelBusy as e:
                refused = Refused(503, "agent_busy", "The agent is busy", f"{e}.", 1)
                self._answer(self._refused(refused))
                return
            if conn is None:
                self._answer(self._refused(AGENT_OFFLINE))
            else:
                self._send(conn)
        else:
            self._task = asyncio.get_running_loop().create_task(self._connect())

    def _tunnel_stream(self, admit: Admit) -> Upstream | None:
        """A connection to a local sandbox's agent through its tunnel; None when the
        agent is not connected here (TunnelBusy when its tunnel is full)."""
        conn = Upstream(admit.address)
        opened = self.front.proxy.tunnels.open_stream(admit.sandbox_id, conn)
        return conn if opened is not None else None

    async def _connect(self, replay: bytes | None = None) -> None:
        """A connection to the agent (a new stream for a local one), then the request on
        it, or ``replay``: the whole request again, after a pooled connection failed."""
        admit = self._admit
        assert admit is not None
        try:
            conn = await self._open(admit)
        except ConnectionError as e:
            if not self._done:
                self.upstream_failed(str(e))
            return
        if self._done:
            conn.close()
        elif replay is None:
            self._send(conn)
        else:
            self._upstream = conn
            self._await_answer()
            conn.send(
                self,
                replay,
                head_only=self.request.method == b"HEAD",
                upgrade=self.request.websocket,
            )

    async def _open(self, admit: Admit) -> Upstream:
        if admit.route["kind"] != "local":
            return await self.front.proxy.pool.connect(admit.address)
        try:
            tunnelled = self._tunnel_stream(admit)
        except TunnelBusy as e:
            raise ConnectionError(str(e)) from None
        if tunnelled is None:
            raise ConnectionError("the agent is not connected")
        return tunnelled

    # Request, toward the agent

    def _send(self, conn: Upstream, reused: bool = False) -> None:
        admit = self._admit
        assert admit is not None
        request = self.request
        self._upstream = conn
        headers = self._headers_out(admit)
        if self._chunked_upload:
            headers.append((b"transfer-encoding", b"chunked"))
        parts = [http1.request_head(request.method, request.target, headers)]
        for chunk in self._held:
            parts.append(self._frame(chunk))
        if self._request_done and self._chunked_upload:
            parts.append(http1.LAST_CHUNK)
        self._held = []
        self._held_size = 0
        self.front.resume_reading("body")
        if (request.index.get(b"expect") or b"").lower() == b"100-continue":
            self.front.write(http1.CONTINUE)
        self._await_answer()
        data = b"".join(parts)
        if reused and self._request_done and request.method in (b"GET", b"HEAD", b"OPTIONS"):
            self._replay = data  # a pooled connection may have just been closed by the agent
        self.front.cork_upstream(conn)
        conn.send(self, data, head_only=request.method == b"HEAD", upgrade=request.websocket)

    def _headers_out(self, admit: Admit) -> Headers:
        """The request's headers as the agent gets them."""
        return to_agent(
            self.request.headers,
            self.request.index,
            credential=admit.credential,
            client=self.front.client_address,
            proto=self.front.proxy.proto,
            host=self.request.host.encode("latin-1"),
            upgrade=self.request.websocket,
            trusted=self.front.client_address in self.front.proxy.trusted,
        )

    def _frame(self, chunk: bytes) -> bytes:
        return http1.chunk(chunk) if self._chunked_upload else chunk

    def request_body(self, chunk: bytes) -> None:
        if self._upstream is not None:
            self.front.cork_upstream(self._upstream)
            self._upstream.write(self._frame(chunk))
        elif not self._done:
            self._held.append(chunk)
            self._held_size += len(chunk)
            if self._held_size > HIGH_WATER:
                self.front.pause_reading("body")

    def request_complete(self) -> None:
        self._request_done = True
        if self._upstream is not None and self._chunked_upload:
            self.front.cork_upstream(self._upstream)
            self._upstream.write(http1.LAST_CHUNK)

    def client_raw(self, data: bytes) -> None:
        """WebSocket bytes from the browser."""
        if self._upstream is not None and self._upstream.spliced:
            self._upstream.write(data)
        else:
            self._early.append(data)  # sent once the agent has accepted the upgrade
            self._early_size += len(data)
            if self._early_size > HIGH_WATER:
                self.front.pause_reading("upgrade")

    def cork(self) -> None:
        self.front.cork()

    def uncork(self) -> None:
        self.front.uncork()

    def client_writable(self, writable: bool) -> None:
        if self._upstream is not None:
            if writable:
                self._upstream.resume_reading()
            else:
                self._upstream.pause_reading()

    # Response, toward the browser (the Sink of the agent connection)

    def response_head(self, status: int, headers: Headers, index: Index, upgraded: bool) -> None:
        self._cancel_timer()
        self._responded = True
        if upgraded:
            out = to_browser(headers, index, upgrade=True)
            self.front.write(http1.response_head(101, out))
            assert self._upstream is not None and self._admit is not None
            for data in self._early:
                self._upstream.write(data)
            self._early = []
            self._early_size = 0
            self.front.resume_reading("upgrade")
            self._count_stream()
            return
        out = to_browser(headers, index)
        bodiless = self.request.method == b"HEAD" or status in (204, 304)
        length = index.get(b"content-length")
        if not bodiless and length is None:
            out.append((b"transfer-encoding", b"chunked"))
            self._chunked_response = True
            self._count_stream()
        if not self.keep_alive or self.front.closing:
            self.keep_alive = False
            out.append((b"connection", b"close"))
        self.front.write(http1.response_head(status, out))
        if not bodiless and (length or b"0") != b"0":
            # Sent with the body's first bytes: one write, not two, for most answers.
            self.front.hold()

    def response_body(self, data: bytes) -> None:
        self.front.release()  # (the head goes when this read's cork is lifted)
        if self._chunked_response:
            self.front.write(http1.chunk(data))
        else:
            self.front.write(data)

    def response_end(self) -> None:
        if self._chunked_response:
            self.front.write(http1.LAST_CHUNK)
        conn, self._upstream = self._upstream, None
        if conn is not None:
            if self._request_done:
                self.front.proxy.pool.release(conn)
            else:
                conn.close()  # answered before the request was sent whole
                self.keep_alive = False
        self._finish()

    def upstream_failed(self, reason: str) -> None:
        self._cancel_timer()
        conn, self._upstream = self._upstream, None
        replay, self._replay = self._replay, None
        # Replayed only when the pooled connection was closed before the agent said
        # anything (it may have just timed out); a malformed or oversized answer is the
        # agent's, and it does not get the request twice.
        heard = conn is not None and conn.heard
        if replay is not None and not heard and not self._responded and self._admit is not None:
            self._task = asyncio.get_running_loop().create_task(self._connect(replay))
            return
        if self._responded:
            # Cut short mid-body: drop the browser's connection too, so a partial body
            # is never taken for a whole one.
            self.keep_alive = False
            self._finish()
            return
        refused = Refused(502, "agent_unreachable", "The sandbox did not answer", f"{reason}.")
        self._answer(self._refused(refused))

    def upstream_writable(self, writable: bool) -> None:
        if writable:
            self.front.resume_reading("upstream")
        else:
            self.front.pause_reading("upstream")

    def upstream_raw(self, data: bytes) -> None:
        self.front.write(data)

    def upstream_closed(self) -> None:
        self.keep_alive = False
        self._finish()

    # Ending

    def _bodiless(self) -> bool:
        """No body to come (most GETs): an answer of the proxy's own keeps the connection.
        (Asked only when the proxy answers, not on every request.)"""
        return not self._chunked_upload and (
            self.request.index.get(b"content-length") in (None, b"0")
        )

    def _answer(self, answer: Answer) -> None:
        if not (self._request_done or self._bodiless()):
            self.keep_alive = False  # do not read a body we will not forward
        headers = list(answer.headers)
        if header(headers, b"content-length") is None:
            headers.append((b"content-length", b"%d" % len(answer.body)))
        if not self.keep_alive or self.front.closing:
            self.keep_alive = False
            headers.append((b"connection", b"close"))
        body = b"" if self.request.method == b"HEAD" else answer.body
        self.front.write(http1.response_head(answer.status, headers) + body)
        self._finish()

    @property
    def timeout(self) -> float:
        """Seconds the answer's head may take."""
        return self.front.proxy.timeout

    def _await_answer(self) -> None:
        self.front.proxy.waiting[self] = time.monotonic() + self.timeout

    def timed_out(self) -> None:
        self._cancel_timer()
        if self._upstream is not None:
            self._upstream.close()
            self._upstream = None
        refused = Refused(
            504,
            "agent_timeout",
            "The sandbox did not answer in time",
            f"The agent did not answer within {self.timeout:g} s.",
        )
        self._answer(self._refused(refused))

    def _count_stream(self) -> None:
        if self._admit is not None and self._streaming is None:
            self._streaming = self._admit.sandbox_id
            self.front.proxy.stream_opened(self._streaming)

    def _cancel_timer(self) -> None:
        self.front.proxy.waiting.pop(self, None)

    def _finish(self) -> None:
        if self._done:
            return
        self.front.release(write=True)
        self._done = True
        self._cancel_timer()
        if self._streaming is not None:
            self.front.proxy.stream_closed(self._streaming)
        self.front.finished(self)

    def abort(self) -> None:
        """The browser went away: let the agent go too."""
        self._done = True
        self._cancel_timer()
        if self._task is not None:
            self._task.cancel()
        if self._upstream is not None:
            self._upstream.close()
            self._upstream = None
        if self._streaming is not None:
            self.front.proxy.stream_closed(self._streaming)
            self._streaming = None
