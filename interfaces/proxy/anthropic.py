"""The Anthropic API proxy: ``/proxy/anthropic/{path}`` on Sandbar's API host.

A sandbox presents its proxy token (``x-api-key`` or ``Authorization: Bearer``), derived
from the server key, so none is stored; it is good while the sandbox exists and is not
paused (read from the routing table through the same cache as the subdomain proxy). The
proxy swaps it for the real key, which lives only in the settings, counts the request
against the workspace's daily limits, streams the request and the answer through
unbuffered, and reads the token usage from the answer as it passes (plain JSON or the
SSE event stream) to record it per sandbox and day. Errors are in Anthropic's own shape,
so the SDKs inside sandboxes report them sensibly."""

from __future__ import annotations

import contextlib
import logging
from typing import Any
from urllib.parse import urlsplit
from uuid import UUID

import orjson
from starlette.types import Message, Receive, Scope, Send

from application.errors import RateLimited
from application.opening import GONE
from interfaces.proxy.front import SandboxProxy
from interfaces.proxy.headers import HOP_BY_HOP, Headers, bearer, header
from interfaces.proxy.upstream import Stream

log = logging.getLogger(__name__)

PREFIX = "/proxy/anthropic"
MISSING: Any = object()
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


def _unreachable(error: Exception) -> Refused:
    return Refused(502, "api_error", f"the Anthropic API could not be reached ({error})")


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
            self._buffer += chunk
            while (end := self._buffer.find(b"\n")) >= 0:
                line = bytes(self._buffer[:end]).rstrip(b"\r")
                del self._buffer[: end + 1]
                if line.startswith(b"data:"):
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


class AnthropicProxy:
    def __init__(self, proxy: SandboxProxy) -> None:
        sandbar = proxy.sandbar
        settings = sandbar.settings
        self._sb = sandbar
        self._proxy = proxy
        self._directory = proxy.gate.directory
        self._pool = proxy.pool
        self._key = (settings.anthropic_api_key or "").encode()
        base = urlsplit(settings.anthropic_base_url)
        self._tls = base.scheme == "https"
        port = base.port or (443 if self._tls else 80)
        self._host = base.hostname or ""
        self._address = f"{self._host}:{port}"
        self._pool_key = f"https://{self._address}" if self._tls else self._address
        default_port = port == (443 if self._tls else 80)
        self._host_header = (self._host if default_port else f"{self._host}:{port}").encode()
        self._base_path = base.path.rstrip("/").encode()
        self._max_body = settings.anthropic_max_body
        self._timeout = settings.anthropic_timeout
        self._tokens: dict[bytes, Any] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        self._proxy.started()  # the cache's change feed, the activity writer
        try:
            await self._relay(scope, receive, send)
        except Refused as r:
            headers = [(b"content-type", b"application/json")]
            if r.retry_after is not None:
                headers.append((b"retry-after", str(r.retry_after).encode()))
            await send({"type": "http.response.start", "status": r.status, "headers": headers})
            await send({"type": "http.response.body", "body": error_body(r.kind, r.message)})

    async def _relay(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers: Headers = scope["headers"]
        sandbox_id = self._sandbox(headers)
        route = await self._directory.route(sandbox_id)
        if route is None or route["status"] in GONE:
            raise Refused(401, "authentication_error", "this sandbox's token is no longer valid")
        if route["status"] in PAUSED:
            raise Refused(403, "permission_error", "the sandbox is paused")
        if not self._key:
            raise Refused(503, "api_error", "this Sandbar has no Anthropic API key configured", 60)
        length = header(headers, b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self._max_body):
            raise Refused(413, "request_too_large", self._too_large())
        first = await receive()
        if first["type"] == "http.disconnect":
            return  # the client left before its request was read: nothing to send or count
        workspace_id: UUID = route["workspace_id"]
        try:
            await self._sb.usage.admit(workspace_id)
        except RateLimited as e:
            raise Refused(429, "rate_limit_error", e.message, e.retry_after) from None
        except Exception:  # the database is down, say: the client may try again
            log.exception("could not count an Anthropic API request")
            raise Refused(
                503, "api_error", "Sandbar cannot count requests right now; try again", 5
            ) from None
        self._sb.activity.note(sandbox_id)
        stream = await self._send_request(scope, receive, headers, first)
        try:
            status, answer = await stream.head(self._timeout)
        except TimeoutError:
            stream.conn.close()
            raise Refused(504, "api_error", "the Anthropic API did not answer in time") from None
        except ConnectionError as e:
            raise Refused(
                502, "api_error", f"the Anthropic API could not be reached ({e})"
            ) from None
        tap = UsageTap(header(answer, b"content-type") or b"")
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(n, v) for n, v in answer if n not in HOP_BY_HOP],
            }
        )
        try:
            async for chunk in stream.body():
                tap.feed(chunk)
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        except ConnectionError:
            log.warning("the Anthropic API broke off an answer for sandbox %s", sandbox_id)
            stream.conn.close()
            return  # unfinished: the server drops the connection, the client sees it cut
        await send({"type": "http.response.body", "body": b""})
        self._pool.release(stream.conn)
        self._sb.usage.record(workspace_id, sandbox_id, tap.finish())

    def _sandbox(self, headers: Headers) -> UUID:
        token = header(headers, b"x-api-key")
        if token is None:
            token = bearer(headers)
        sandbox_id = None
        if token:
            sandbox_id = self._tokens.get(token, MISSING)
            if sandbox_id is MISSING:
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

    def _too_large(self) -> str:
        return f"the request body is over the proxy's limit of {self._max_body} bytes"

    async def _send_request(
        self, scope: Scope, receive: Receive, headers: Headers, first: Message
    ) -> Stream:
        path = scope.get("raw_path") or scope["path"].encode()
        target = self._base_path + path[len(PREFIX) :]
        if scope["query_string"]:
            target += b"?" + scope["query_string"]
        out = [(n, v) for n, v in headers if n not in _DROPPED]
        out.append((b"host", self._host_header))
        out.append((b"x-api-key", self._key))
        out.append((b"accept-encoding", b"identity"))
        if header(headers, b"anthropic-version") is None:
            out.append((b"anthropic-version", DEFAULT_VERSION))
        body: bytes = first.get("body", b"")
        more: bool = first.get("more_body", False)
        chunked = more and header(headers, b"content-length") is None
        if chunked:
            out.append((b"transfer-encoding", b"chunked"))
        elif header(headers, b"content-length") is None:
            out.append((b"content-length", b"%d" % len(body)))
        if len(body) > self._max_body:
            raise Refused(413, "request_too_large", self._too_large())
        parts = [scope["method"].encode(), b" ", target, b" HTTP/1.1\r\n"]
        for name, value in out:
            parts += [name, b": ", value, b"\r\n"]
        parts.append(b"\r\n")
        if body:
            parts.append(b"%x\r\n%b\r\n" % (len(body), body) if chunked else body)
        if chunked and not more:
            parts.append(b"0\r\n\r\n")
        conn = self._pool.idle(self._pool_key)
        if conn is None:
            try:
                conn = await self._pool.connect(self._address, tls=self._tls)
            except ConnectionError as e:
                raise Refused(
                    502, "api_error", f"the Anthropic API could not be reached ({e})"
                ) from None
        stream = Stream(conn)
        conn.send(stream, b"".join(parts), head_only=scope["method"] == "HEAD")
        if more:
            await self._upload(stream, receive, chunked, len(body))
        return stream

    async def _upload(self, stream: Stream, receive: Receive, chunked: bool, sent: int) -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                stream.conn.close()
                raise Refused(400, "invalid_request_error", "the client went away")
            data = message.get("body", b"")
            sent += len(data)
            if sent > self._max_body:
                stream.conn.close()  # the API never sees a whole oversized request
                raise Refused(413, "request_too_large", self._too_large())
            try:
                if data:
                    await stream.write(b"%x\r\n%b\r\n" % (len(data), data) if chunked else data)
                if not message.get("more_body", False):
                    if chunked:
                        await stream.write(b"0\r\n\r\n")
                    return
            except ConnectionError:
                return  # the API broke off: its answer (or its absence) says the rest
