"""A small ASGI layer in front of the API: caps request bodies (413), requires JSON for
bodies sent to /api (415), and refuses cross-origin writes (403).

Sandbox pages live on sibling subdomains, which browsers count as the same site, so
SameSite=Lax alone would let a page in a sandbox post to the API with the user's cookie:
a write whose Origin is not the API's own is refused."""

from __future__ import annotations

from urllib.parse import urlsplit

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from interfaces.http.errors import error_response

_SAFE = {"GET", "HEAD", "OPTIONS"}
Problem = tuple[int, str, str]  # status, code, message


class RequestGuard:
    def __init__(self, app: ASGIApp, max_body: int) -> None:
        self.app = app
        self.max_body = max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/api/"):
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        problem = self._check_headers(scope["method"], headers)
        body = b""
        if problem is None:
            body, too_large = await self._read(receive)
            problem = self._check_body(body, too_large, headers)
        if problem is not None:
            await error_response(*problem)(scope, receive, send)
            return

        sent = False

        async def replay() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    def _check_headers(self, method: str, headers: dict[str, str]) -> Problem | None:
        if method not in _SAFE:
            origin = headers.get("origin")
            if origin and urlsplit(origin).netloc != headers.get("host", ""):
                return 403, "cross_origin", "requests from another origin may not change anything"
        length = headers.get("content-length")
        if length is not None and not length.isdigit():
            return 400, "bad_request", "Content-Length is not a number"
        if length is not None and int(length) > self.max_body:
            return self._too_large()
        return None

    def _check_body(self, body: bytes, too_large: bool, headers: dict[str, str]) -> Problem | None:
        if too_large:
            return self._too_large()
        media = headers.get("content-type", "").split(";")[0].strip().lower()
        if body.strip() and media != "application/json":
            return 415, "unsupported_media_type", "send the body as application/json"
        return None

    def _too_large(self) -> Problem:
        return 413, "body_too_large", f"the request body is over {self.max_body} bytes"

    async def _read(self, receive: Receive) -> tuple[bytes, bool]:
        """The whole body (API bodies are small), or stop once it passes the cap."""
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                return b"", True
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return b"".join(chunks), False
