"""The Anthropic API proxy: ``/proxy/anthropic/{path}`` on Sandbar's API host.

A sandbox presents its proxy token (``x-api-key`` or ``Authorization: Bearer``), derived
from the server key, so none is stored; it is good while the sandbox exists and is not
paused (read from the routing table through the same cache as the subdomain proxy). The
proxy swaps it for the real key, which lives only in the settings, counts the request
against the workspace's daily limits, streams the request and the answer through
unbuffered, and reads the token usage from the answer as it passes (plain JSON or the
SSE event stream) to record it per sandbox and day. Errors are in Anthropic's own shape,
so the SDKs inside sandboxes report them sensibly.

Requests are relayed at the protocol level by the subdomain proxy's machinery
(interfaces/proxy/front.py), as an ``Exchange`` with its own decision, headers and usage:
an ASGI handler costs some three times the CPU per request (bench/bench_anthropic.py)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from datetime import date
from typing import Any
from urllib.parse import urlsplit
from uuid import UUID

import orjson
from starlette.types import Receive, Scope, Send

from application.errors import RateLimited
from application.opening import GONE
from interfaces.proxy import anthropic_paths, gate
from interfaces.proxy.directory import MISS
from interfaces.proxy.exchange import Exchange
from interfaces.proxy.front import FrontProtocol
from interfaces.proxy.gate import Admit, Answer, Request
from interfaces.proxy.headers import HOP_BY_HOP, Headers, bearer, header, to_browser
from interfaces.proxy.server import SandboxProxy
from interfaces.proxy.upstream import TLS, Stream

log = logging.getLogger(__name__)

Counted = tuple[UUID, UUID, date]  # an admitted request: its workspace, sandbox and day

PREFIX = "/proxy/anthropic"
DEFAULT_VERSION = b"2023-06-01"
PAUSED = {"paused", "pausing"}
MAX_USAGE_JSON = 4 * 1024 * 1024  # a plain answer is parsed for its usage up to this size
# Never sent on: the caller's credentials, and what only the proxy may say.
_DROPPED = HOP_BY_HOP | {
    b"host",
    b"x-api-key",
    b"authorization",
    b"cookie",
    b"accept-encoding",  # asked for as identity, so the usage can be read
    b"expect",
    b"forwarded",
    b"x-forwarded-for",
    b"x-forwarded-proto",
    b"x-forwarded-host",
}


def error_body(kind: str, message: str) -> bytes:
    """Anthropic's error shape."""
    return orjson.dumps({"type": "error", "error": {"type": kind, "message": message}})


class Refused(Exception):
    def __init__(self, status: int, kind: str, message: str, retry_after: int | None = None):
        super().__init__(message)
        self.status, self.kind, self.message, self.retry_after = status, kind, message, retry_after

    def answer(self) -> Answer:
        headers = [(b"content-type", b"application/json")]
        if self.retry_after is not None:
            headers.append((b"retry-after", b"%d" % self.retry_after))
        return Answer(self.status, headers, error_body(self.kind, self.message))


class UsageTap:
    """Reads token usage from an answer as it passes: a Messages API JSON body, or its
    event stream (``message_start`` carries the input side, ``message_delta`` the
    output tokens so far)."""

    def __init__(self, content_type: bytes) -> None:
        self.streaming = content_type.startswith(b"text/event-stream")
        self.json = content_type.startswith(b"application/json")
        self._buffer = bytearray()
        self._too_big = False
        self.counts: dict[str, int] = {}

    def feed(self, chunk: bytes) -> None:
        if self.streaming:
            # Whole lines only; of those, only data that mentions usage is parsed (two
            # events of an answer's dozens).
            self._buffer += chunk
            end = self._buffer.rfind(b"\n")
            if end < 0:
                if len(self._buffer) > MAX_USAGE_JSON:
                    self._buffer.clear()  # no line is this long: not an event stream
                return
            lines = bytes(self._buffer[:end])
            del self._buffer[: end + 1]
            if b"usage" in lines:
                for line in lines.split(b"\n"):
                    if line.startswith(b"data:") and b"usage" in line:
                        self._event(line[5:].strip())
        elif self.json and not self._too_big:
            self._buffer += chunk
            if len(self._buffer) > MAX_USAGE_JSON:
                self._too_big = True
                self._buffer.clear()

    def finish(self) -> dict[str, int]:
        if self.json and not self._too_big and self._buffer:
            with contextlib.suppress(ValueError):
                body = orjson.loads(bytes(self._buffer))
                if isinstance(body, dict):
                    self._take(body.get("usage"))
        return self.counts

    def _event(self, data: bytes) -> None:
        try:
            event = orjson.loads(data)
        except ValueError:
            return
        if not isinstance(event, dict):
            return
        if event.get("type") == "message_start" and isinstance(event.get("message"), dict):
            self._take(event["message"].get("usage"))
        elif event.get("type") == "message_delta":
            self._take(event.get("usage"))

    def _take(self, usage: Any) -> None:
        if not isinstance(usage, dict):
            return
        for name in (
            "input_tokens",
            "output_tokens",
            "cache_creation_input_tokens",
            "cache_read_input_tokens",
        ):
            value = usage.get(name)
            if isinstance(value, int) and value >= 0:
                # Counts in a stream are running totals: keep the largest seen.
                self.counts[name] = max(self.counts.get(name, 0), value)


class AnthropicApi:
    """What every request to the proxy shares: checking its token and its sandbox,
    counting it, and the headers it is sent on with. Requests are served at the
    protocol level by ``AnthropicExchange`` (interfaces/proxy/front.py runs it); ``asgi``
    serves the rare one on a connection that uvicorn already holds."""

    prefix = PREFIX.encode() + b"/"

    def __init__(self, proxy: SandboxProxy) -> None:
        sandbar = proxy.sandbar
        settings = sandbar.settings
        self._sb = sandbar
        self._proxy = proxy
        self._directory = proxy.gate.directory
        self._key = (settings.anthropic_api_key or "").encode()
        base = urlsplit(settings.anthropic_base_url)
        tls = base.scheme == "https"
        port = base.port or (443 if tls else 80)
        host = base.hostname or ""
        self.target = f"{TLS if tls else ''}{host}:{port}"  # the upstream pool's name for it
        self.route = {"kind": "api", "target": self.target}
        default_port = port == (443 if tls else 80)
        self._host_header = (host if default_port else f"{host}:{port}").encode()
        self._base_path = base.path.rstrip("/").encode()
        self.max_body = settings.anthropic_max_body
        self.timeout = settings.anthropic_timeout
        self._tokens: dict[bytes, Any] = {}
        try:
            self.endpoints = anthropic_paths.Endpoints(settings.anthropic_extra_paths)
        except ValueError as e:
            raise SystemExit(str(e)) from None

    def exchange(self, front: FrontProtocol, request: Request, keep_alive: bool) -> Exchange:
        path = request.target[len(PREFIX) :]
        request.target = self._base_path + path
        exchange = AnthropicExchange(front, request, keep_alive, self)
        if not self.endpoints.allows(request.method, path):
            exchange.preset = _not_allowed(request.method, path).answer()  # never sent on
        return exchange

    def admit_now(self, headers: Headers) -> Counted | None:
        """``admit``, if it can be decided without waiting; else None."""
        sandbox_id = self._sandbox(headers)
        route = self._directory.peek_route(sandbox_id)
        if route is MISS:
            return None
        workspace_id = self._check(route, headers)
        day = self._sb.usage.admit_now(workspace_id)
        if day is None:
            return None
        self._sb.activity.note(sandbox_id)
        return workspace_id, sandbox_id, day

    async def admit(self, headers: Headers) -> Counted:
        """The request's workspace, sandbox and day, once it is counted; else Refused."""
        sandbox_id = self._sandbox(headers)
        try:
            route = await self._directory.route(sandbox_id)
        except Exception:  # the database is down, say: the client may try again
            log.exception("could not look up a sandbox for an Anthropic API request")
            raise _cannot_count() from None
        workspace_id = self._check(route, headers)
        try:
            day = await self._sb.usage.admit(workspace_id)
        except RateLimited as e:
            raise Refused(429, "rate_limit_error", e.message, e.retry_after) from None
        except Exception:
            log.exception("could not count an Anthropic API request")
            raise _cannot_count() from None
        self._sb.activity.note(sandbox_id)
        return workspace_id, sandbox_id, day

    def _check(self, route: dict[str, Any] | None, headers: Headers) -> UUID:
        """The sandbox's workspace, if its request may go on; else Refused."""
        if route is None or route["status"] in GONE:
            raise Refused(401, "authentication_error", "this sandbox's token is no longer valid")
        if route["status"] in PAUSED:
            raise Refused(403, "permission_error", "the sandbox is paused")
        if not self._key:
            raise Refused(503, "api_error", "this Sandbar has no Anthropic API key configured", 60)
        self._check_length(headers)
        workspace_id: UUID = route["workspace_id"]
        return workspace_id

    def _check_length(self, headers: Headers) -> None:
        length = header(headers, b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_body):
            raise self.too_large()

    def record(self, counted: Counted, tap: UsageTap | None) -> None:
        workspace_id, sandbox_id, day = counted
        self._sb.usage.record(workspace_id, sandbox_id, day, tap.finish() if tap else {})

    def headers_out(self, headers: Headers) -> Headers:
        """The request's headers as the API gets them: the real key for the token."""
        out = [(n, v) for n, v in headers if n not in _DROPPED]
        out.append((b"host", self._host_header))
        out.append((b"x-api-key", self._key))
        out.append((b"accept-encoding", b"identity"))
        if header(headers, b"anthropic-version") is None:
            out.append((b"anthropic-version", DEFAULT_VERSION))
        return out

    def too_large(self) -> Refused:
        return Refused(
            413,
            "request_too_large",
            f"the request body is over the proxy's limit of {self.max_body} bytes",
        )

    def _sandbox(self, headers: Headers) -> UUID:
        token = header(headers, b"x-api-key")
        if token is None:
            token = bearer(headers)
        sandbox_id = None
        if token:
            sandbox_id = self._tokens.get(token, MISS)
            if sandbox_id is MISS:
                # Derived tokens never change, so their check is remembered (bounded).
                sandbox_id = self._sb.secrets.proxy_token_sandbox(token.decode("latin-1"))
                if len(self._tokens) >= 10_000:
                    self._tokens.clear()
                self._tokens[token] = sandbox_id
        if sandbox_id is None:
            raise Refused(
                401, "authentication_error", "invalid x-api-key: use this sandbox's proxy token"
            )
        return sandbox_id

    async def asgi(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The same, for a request on a connection uvicorn holds (one that asked the
        REST API first): the whole request is read, then sent on as one."""
        if scope["type"] != "http":
            return
        self._proxy.started()
        path = (scope.get("raw_path") or scope["path"].encode())[len(PREFIX) :]
        if scope["query_string"]:
            path += b"?" + scope["query_string"]
        method = scope["method"].encode()
        if not self.endpoints.allows(method, path):
            await _send_answer(send, _not_allowed(method, path).answer())  # never sent on
            return
        try:
            body = await self._read_body(scope["headers"], receive)
            counted = await self.admit(scope["headers"])
        except Refused as r:
            await _send_answer(send, r.answer())
            return
        target = self._base_path + path
        out = [(n, v) for n, v in self.headers_out(scope["headers"]) if n != b"content-length"]
        out.append((b"content-length", b"%d" % len(body)))
        parts = [scope["method"].encode(), b" ", target, b" HTTP/1.1\r\n"]
        for name, value in out:
            parts += [name, b": ", value, b"\r\n"]
        parts += [b"\r\n", body]
        tap: UsageTap | None = None
        pool = self._proxy.pool
        try:
            conn = pool.idle(self.target) or await pool.connect(self.target)
            stream = Stream(conn)
            conn.send(stream, b"".join(parts), head_only=scope["method"] == "HEAD")
            try:
                status, answer = await stream.head(self.timeout)
            except TimeoutError:
                conn.close()
                await _send_answer(send, _timed_out(self.timeout).answer())
                return
            except ConnectionError as e:
                await _send_answer(send, _unreachable(str(e)).answer())
                return
            tap = UsageTap(header(answer, b"content-type") or b"")
            await send(
                {"type": "http.response.start", "status": status, "headers": to_browser(answer)}
            )
            body = stream.body()
            try:
                while True:
                    async with asyncio.timeout(self.timeout):  # between pieces, too
                        chunk = await anext(body, None)
                    if chunk is None:
                        break
                    tap.feed(chunk)
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
            except (ConnectionError, TimeoutError):
                log.warning("the Anthropic API broke off an answer for sandbox %s", counted[1])
                conn.close()
                return  # unfinished: the server drops the connection, the client sees it cut
            await send({"type": "http.response.body", "body": b""})
            pool.release(conn)
        except ConnectionError as e:
            await _send_answer(send, _unreachable(str(e)).answer())
        finally:
            self.record(counted, tap)

    async def _read_body(self, headers: Headers, receive: Receive) -> bytes:
        self._check_length(headers)  # (before reading it, and before it is counted)
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise Refused(400, "invalid_request_error", "the client went away")
            body += message.get("body", b"")
            if len(body) > self.max_body:
                raise self.too_large()
            if not message.get("more_body", False):
                return bytes(body)


async def _send_answer(send: Send, answer: Answer) -> None:
    await send({"type": "http.response.start", "status": answer.status, "headers": answer.headers})
    await send({"type": "http.response.body", "body": answer.body})


def _unreachable(reason: str) -> Refused:
    return Refused(502, "api_error", f"the Anthropic API could not be reached ({reason})")


def _not_allowed(method: bytes, path: bytes) -> Refused:
    shown = path.partition(b"?")[0][:200].decode("latin-1")
    return Refused(
        404,
        "not_found_error",
        f"{method.decode('latin-1')} {shown} is not available through Sandbar's proxy",
    )


def _cannot_count() -> Refused:
    return Refused(503, "api_error", "Sandbar cannot count requests right now; try again", 5)


def _timed_out(seconds: float) -> Refused:
    return Refused(504, "api_error", f"the Anthropic API did not answer within {seconds:g} s")


class AnthropicExchange(Exchange):
    """One request to the proxy, relayed as the subdomain proxy relays a sandbox's
    (interfaces/proxy/front.py), with its own decision, headers, errors and usage."""

    def __init__(
        self, front: FrontProtocol, request: Request, keep_alive: bool, api: AnthropicApi
    ) -> None:
        super().__init__(front, request, keep_alive)
        self._api = api
        self._tap: UsageTap | None = None
        self._counted: Counted | None = None  # admitted, not yet recorded
        self._body_size = 0

    @property
    def timeout(self) -> float:
        return self._api.timeout

    def _decide_now(self) -> Admit | Answer | None:
        try:
            counted = self._api.admit_now(self.request.headers)
        except Refused as r:
            return r.answer()
        if counted is None:
            return None
        return self._admitted(counted)

    async def _decide(self) -> Admit | Answer:
        try:
            counted = await self._api.admit(self.request.headers)
        except Refused as r:
            return r.answer()
        decision = self._admitted(counted)
        if self._done:  # the client left while it was being counted
            self._record()
        return decision

    def _admitted(self, counted: Counted) -> Admit:
        """Counted (so recorded when it ends): on to the API. (The real key goes in with
        ``_headers_out``, so the Admit's own credential is empty.)"""
        self._counted = counted
        return Admit(self._api.route, counted[1], (b"x-api-key", b""))

    def _headers_out(self, admit: Admit) -> Headers:
        return self._api.headers_out(self.request.headers)

    def _refused(self, refused: gate.Refused) -> Answer:
        if refused.status == 504:
            return _timed_out(self.timeout).answer()
        if refused.status == 502:
            return _unreachable(refused.message.rstrip(".")).answer()
        return Refused(refused.status, "api_error", refused.message, refused.retry_after).answer()

    def request_body(self, chunk: bytes) -> None:
        self._body_size += len(chunk)
        if self._body_size <= self._api.max_body:
            super().request_body(chunk)
        elif not self._done:  # the API never sees a whole oversized request
            if self._upstream is not None:
                self._upstream.close()
                self._upstream = None
            if self._responded:
                self.keep_alive = False
                self._finish()
            elif not self.front.answering(self):  # behind another answer: 413 in its turn
                self.keep_alive = False
                self.preset = self._api.too_large().answer()
            else:
                self._answer(self._api.too_large().answer())

    def response_head(self, status: int, headers: Headers, upgraded: bool) -> None:
        self._tap = UsageTap(header(headers, b"content-type") or b"")
        super().response_head(status, headers, upgraded)
        if not self._done:
            self._await_answer()  # the body, too, must keep coming (streams send pings)

    def response_body(self, data: bytes) -> None:
        if self._tap is not None:
            self._tap.feed(data)
        self.front.proxy.waiting[self] = time.monotonic() + self.timeout
        super().response_body(data)

    def timed_out(self) -> None:
        if not self._responded:
            super().timed_out()  # 504
            return
        # Silent mid-answer: cut it (the client sees a broken transfer, never a short
        # answer taken for a whole one), as when the API breaks off.
        log.warning("the Anthropic API sent nothing for %g s mid-answer; cut", self.timeout)
        self._cancel_timer()
        if self._upstream is not None:
            self._upstream.close()
            self._upstream = None
        self.keep_alive = False
        self._finish()

    def _finish(self) -> None:
        self._record()
        super()._finish()

    def abort(self) -> None:
        if self._counted is None and self._task is not None and not self._responded:
            # Being counted: let that end (and be recorded) rather than lose the count.
            self._task = None
        self._record()
        super().abort()

    def _record(self) -> None:
        counted, self._counted = self._counted, None
        if counted is not None:
            self._api.record(counted, self._tap)
