"""The Anthropic proxy as an ASGI application: the fallback for a call that reaches the
REST API's application rather than the front's protocol-level path.

``sandbar serve`` routes every request by its target before any application runs
(interfaces/proxy/front.py), so a call to ``/proxy/anthropic/...`` is relayed by
``AnthropicExchange``; only a target whose prefix is percent-encoded (which the front
does not match and the application decodes) gets here, or a call to the application
served in-process without the front. It is kept apart from the protocol-level relaying
because it re-implements it for ASGI: the whole request is read, then sent on as one, on
the same pool of connections to the API, with the same admission, headers, errors and
usage."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from starlette.types import Receive, Scope, Send

from interfaces.proxy import anthropic_errors as errors
from interfaces.proxy import http1
from interfaces.proxy.anthropic import PREFIX, AnthropicApi
from interfaces.proxy.anthropic_errors import Refused
from interfaces.proxy.gate import Answer
from interfaces.proxy.headers import Headers, header, to_browser
from interfaces.proxy.upstream import Pool, Stream
from interfaces.proxy.usage_parser import UsageTap

log = logging.getLogger("interfaces.proxy.anthropic")  # (the proxy's log)


class AnthropicAsgi:
    """``api``'s calls, served as an ASGI application over ``pool``; ``started`` is
    called on each (it starts the proxy's clocks, once)."""

    def __init__(self, api: AnthropicApi, pool: Pool, started: Callable[[], None]) -> None:
        self._api = api
        self._pool = pool
        self._started = started

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        api = self._api
        self._started()
        path = (scope.get("raw_path") or scope["path"].encode())[len(PREFIX) :]
        if scope["query_string"]:
            path += b"?" + scope["query_string"]
        method = scope["method"].encode()
        if not api.endpoints.allows(method, path):
            await _send_answer(send, errors.not_allowed(method, path).answer())  # never sent on
            return
        try:
            body = await self._read_body(scope["headers"], receive)
            counted = await api.admission.admit(scope["headers"])
        except Refused as r:
            await _send_answer(send, r.answer())
            return
        out = [(n, v) for n, v in api.headers_out(scope["headers"]) if n != b"content-length"]
        out.append((b"content-length", b"%d" % len(body)))
        request = http1.request_head(method, api.base_path + path, out) + body
        tap: UsageTap | None = None
        pool = self._pool
        try:
            conn = pool.idle(api.target) or await pool.connect(api.target)
            stream = Stream(conn)
            conn.send(stream, request, head_only=method == b"HEAD")
            try:
                status, answer = await stream.head(api.timeout)
            except TimeoutError:
                conn.close()
                await _send_answer(send, errors.timed_out(api.timeout).answer())
                return
            except ConnectionError as e:
                await _send_answer(send, errors.unreachable(str(e)).answer())
                return
            tap = UsageTap(header(answer, b"content-type") or b"")
            await send(
                {"type": "http.response.start", "status": status, "headers": to_browser(answer)}
            )
            pieces = stream.body()
            try:
                while True:
                    async with asyncio.timeout(api.timeout):  # between pieces, too
                        chunk = await anext(pieces, None)
                    if chunk is None:
                        break
                    tap.feed(chunk)
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
            except (ConnectionError, TimeoutError):
                log.warning(
                    "the Anthropic API broke off an answer for sandbox %s", counted.sandbox_id
                )
                conn.close()
                return  # unfinished: the server drops the connection, the client sees it cut
            await send({"type": "http.response.body", "body": b""})
            pool.release(conn)
        except ConnectionError as e:
            await _send_answer(send, errors.unreachable(str(e)).answer())
        finally:
            api.record(counted, tap)

    async def _read_body(self, headers: Headers, receive: Receive) -> bytes:
        admission = self._api.admission
        admission.check_length(headers)  # (before reading it, and before it is counted)
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise errors.client_gone()
            body += message.get("body", b"")
            if len(body) > admission.max_body:
                raise errors.too_large(admission.max_body)
            if not message.get("more_body", False):
                return bytes(body)


async def _send_answer(send: Send, answer: Answer) -> None:
    await send({"type": "http.response.start", "status": answer.status, "headers": answer.headers})
    await send({"type": "http.response.body", "body": answer.body})
