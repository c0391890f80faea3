"""The Anthropic API proxy: ``/proxy/anthropic/{path}`` on Sandbar's API host.

A sandbox's call is checked and counted (interfaces/proxy/anthropic_admission.py), its
token swapped for the real key, which lives only in the settings, and relayed unbuffered
in both directions; the token usage is read from the answer as it passes
(interfaces/proxy/usage_parser.py) and recorded per sandbox and day. What the proxy says
itself is in Anthropic's own error shape (interfaces/proxy/anthropic_errors.py), so the
SDKs inside sandboxes report it sensibly.

Calls are relayed at the protocol level by the subdomain proxy's machinery
(interfaces/proxy/front.py), as an ``Exchange`` with its own decision, headers and usage:
an ASGI handler costs some three times the CPU per request (bench/bench_anthropic.py).
This module is that relaying: what every call shares (``AnthropicApi``) and one call
(``AnthropicExchange``)."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from interfaces.proxy import anthropic_errors as errors
from interfaces.proxy import gate
from interfaces.proxy.anthropic_admission import Admission, Counted
from interfaces.proxy.anthropic_errors import Refused
from interfaces.proxy.anthropic_paths import Endpoints
from interfaces.proxy.exchange import Exchange
from interfaces.proxy.gate import Admit, Answer, Request
from interfaces.proxy.headers import HOP_BY_HOP, Headers, Index, header
from interfaces.proxy.upstream import TLS
from interfaces.proxy.usage_parser import UsageTap

if TYPE_CHECKING:
    from interfaces.proxy.front import FrontProtocol

__all__ = ["PREFIX", "AnthropicApi", "AnthropicExchange", "UsageTap"]

log = logging.getLogger(__name__)

PREFIX = "/proxy/anthropic"
DEFAULT_VERSION = b"2023-06-01"
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


class AnthropicApi:
    """What every call to the proxy shares: where it goes, the headers it is sent on
    with, its limits, and its admission. Calls are served at the protocol level by
    ``AnthropicExchange`` (interfaces/proxy/front.py runs it)."""

    prefix = PREFIX.encode() + b"/"

    def __init__(
        self,
        admission: Admission,
        endpoints: Endpoints,
        *,
        base_url: str,
        key: str,
        timeout: float,
    ) -> None:
        self.admission = admission
        self.endpoints = endpoints
        self._key = key.encode()
        base = urlsplit(base_url)
        tls = base.scheme == "https"
        port = base.port or (443 if tls else 80)
        host = base.hostname or ""
        self.target = f"{TLS if tls else ''}{host}:{port}"  # the upstream pool's name for it
        self.route = {"kind": "api", "target": self.target}
        default_port = port == (443 if tls else 80)
        self._host_header = (host if default_port else f"{host}:{port}").encode()
        self.base_path = base.path.rstrip("/").encode()
        self.max_body = admission.max_body
        self.timeout = timeout

    def exchange(self, front: FrontProtocol, request: Request, keep_alive: bool) -> Exchange:
        path = request.target[len(PREFIX) :]
        request.target = self.base_path + path
        exchange = AnthropicExchange(front, request, keep_alive, self)
        if not self.endpoints.allows(request.method, path):
            exchange.preset = errors.not_allowed(request.method, path).answer()  # never sent on
        return exchange

    def record(self, counted: Counted, tap: UsageTap | None) -> None:
        self.admission.record(counted, tap.finish() if tap else {})

    def headers_out(self, headers: Headers) -> Headers:
        """The call's headers as the API gets them: the real key for the token."""
        out = [(n, v) for n, v in headers if n not in _DROPPED]
        out.append((b"host", self._host_header))
        out.append((b"x-api-key", self._key))
        out.append((b"accept-encoding", b"identity"))
        if header(headers, b"anthropic-version") is None:
            out.append((b"anthropic-version", DEFAULT_VERSION))
        return out

    def too_large(self) -> Refused:
        return errors.too_large(self.max_body)


class AnthropicExchange(Exchange):
    """One call to the proxy, relayed as the subdomain proxy relays a sandbox's
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
            counted = self._api.admission.admit_now(self.request.index)
        except Refused as r:
            return r.answer()
        if counted is None:
            return None
        return self._admitted(counted)

    async def _decide(self) -> Admit | Answer:
        try:
            counted = await self._api.admission.admit(self.request.index)
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
        route = self._api.route
        return Admit(route, counted.sandbox_id, (b"x-api-key", b""), route["target"])

    def _headers_out(self, admit: Admit) -> Headers:
        return self._api.headers_out(self.request.headers)

    def _refused(self, refused: gate.Refused) -> Answer:
        return errors.from_gate(refused, self.timeout).answer()

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

    def response_head(self, status: int, headers: Headers, index: Index, upgraded: bool) -> None:
        self._tap = UsageTap(index.get(b"content-type") or b"")
        super().response_head(status, headers, index, upgraded)
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
