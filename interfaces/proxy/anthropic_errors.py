"""The Anthropic proxy's refusals, in Anthropic's own error shape.

The SDKs inside sandboxes read ``{"type": "error", "error": {"type", "message"}}`` and
its ``type`` (``authentication_error``, ``rate_limit_error``, ...) to decide whether to
retry and what to tell the user, so every answer the proxy makes itself takes that shape
(never the REST API's, never the sandbox proxy's pages). Apart from the proxy, which only
raises these, so that every refusal of the same kind reads the same, whichever path
(the protocol-level exchange or the ASGI fallback) makes it."""

from __future__ import annotations

import orjson

from interfaces.proxy import gate
from interfaces.proxy.gate import Answer


def error_body(kind: str, message: str) -> bytes:
    """Anthropic's error shape."""
    return orjson.dumps({"type": "error", "error": {"type": kind, "message": message}})


class Refused(Exception):
    """Why the proxy answers a call itself: raised while a call is checked and counted,
    answered with ``answer``."""

    def __init__(
        self, status: int, kind: str, message: str, retry_after: int | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.kind, self.message, self.retry_after = status, kind, message, retry_after

    def answer(self) -> Answer:
        headers = [(b"content-type", b"application/json")]
        if self.retry_after is not None:
            headers.append((b"retry-after", b"%d" % self.retry_after))
        return Answer(self.status, headers, error_body(self.kind, self.message))


def invalid_token() -> Refused:
    return Refused(401, "authentication_error", "invalid x-api-key: use this sandbox's proxy token")


def token_gone() -> Refused:
    return Refused(401, "authentication_error", "this sandbox's token is no longer valid")


def paused() -> Refused:
    return Refused(403, "permission_error", "the sandbox is paused")


def no_key() -> Refused:
    return Refused(503, "api_error", "this Sandbar has no Anthropic API key configured", 60)


def rate_limited(message: str, retry_after: int | None) -> Refused:
    return Refused(429, "rate_limit_error", message, retry_after)


def not_ready() -> Refused:
    return Refused(
        503, "api_error", "Sandbar is bringing its records up to date; try again shortly", 5
    )


def cannot_count() -> Refused:
    return Refused(503, "api_error", "Sandbar cannot count requests right now; try again", 5)


def too_large(max_body: int) -> Refused:
    return Refused(
        413,
        "request_too_large",
        f"the request body is over the proxy's limit of {max_body} bytes",
    )


def client_gone() -> Refused:
    return Refused(400, "invalid_request_error", "the client went away")


def not_allowed(method: bytes, path: bytes) -> Refused:
    shown = path.partition(b"?")[0][:200].decode("latin-1")
    return Refused(
        404,
        "not_found_error",
        f"{method.decode('latin-1')} {shown} is not available through Sandbar's proxy",
    )


def unreachable(reason: str) -> Refused:
    return Refused(502, "api_error", f"the Anthropic API could not be reached ({reason})")


def timed_out(seconds: float) -> Refused:
    return Refused(504, "api_error", f"the Anthropic API did not answer within {seconds:g} s")


def from_gate(refused: gate.Refused, timeout: float) -> Refused:
    """The relaying machinery's own refusal (interfaces/proxy/exchange.py), said as the
    Anthropic API would say it."""
    if refused.status == 504:
        return timed_out(timeout)
    if refused.status == 502:
        return unreachable(refused.message.rstrip("."))
    return Refused(refused.status, "api_error", refused.message, refused.retry_after)
