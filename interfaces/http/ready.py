"""An ASGI layer in front of the API: while the views are rebuilt after an upgrade
(interfaces/readiness.py), every /api request is answered 503 ``not_ready`` with
``Retry-After``, rather than from views that are part-built. ``/healthz``, ``/readyz``
and the API's documents are answered as ever. Once the views are ready this costs one
attribute read per request."""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from interfaces.http.errors import not_ready
from interfaces.readiness import Readiness


class UntilReady:
    def __init__(self, app: ASGIApp, readiness: Readiness) -> None:
        self.app = app
        self.readiness = readiness

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.readiness.ready or scope["type"] != "http" or not scope["path"].startswith("/api/"):
            await self.app(scope, receive, send)
            return
        await not_ready(self.readiness.describe())(scope, receive, send)
