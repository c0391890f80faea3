"""The web console and the API's docs, served by Sandbar itself on the API host: static
files (interfaces/web/static/) and Swagger UI's (from the fastapi-offline package), so
both work with no internet. The pages are the same for everyone; what a person sees is
what their browser fetches from the JSON API (docs/design.md, "The web console").

Every answer here carries a Content-Security-Policy that allows scripts and styles from
this origin only (no inline script) and no framing."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from fastapi import FastAPI
from starlette.responses import FileResponse, Response
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

STATIC = Path(__file__).resolve().parent / "static"
ASSETS = "/assets"
VENDOR = "/assets/vendor"

CONSOLE_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:;"
    " connect-src 'self'; font-src 'self'; manifest-src 'self'; form-action 'self';"
    " base-uri 'none'; frame-ancestors 'none'"
)
# Swagger UI sets style attributes in the markup it builds: styles may be inline there,
# scripts still may not.
DOCS_POLICY = CONSOLE_POLICY.replace("style-src 'self'", "style-src 'self' 'unsafe-inline'")

_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"same-origin"),
    (b"cross-origin-opener-policy", b"same-origin"),
]


def swagger_ui_files() -> Path:
    """Where the fastapi-offline package keeps Swagger UI's files (found, not imported)."""
    spec = importlib.util.find_spec("fastapi_offline")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the fastapi-offline package is missing (make install)")
    return Path(next(iter(spec.submodule_search_locations))) / "static"


def install(api: FastAPI) -> None:
    """The console at ``/``, the docs at ``/docs``, their files under ``/assets``."""

    def page(name: str) -> Response:
        return FileResponse(STATIC / name, headers={"cache-control": "no-cache"})

    @api.get("/", include_in_schema=False)
    def console() -> Response:
        return page("index.html")

    @api.get("/docs", include_in_schema=False)
    def docs() -> Response:
        return page("docs.html")

    api.mount(VENDOR, StaticFiles(directory=swagger_ui_files()), name="vendor")
    api.mount(ASSETS, StaticFiles(directory=STATIC), name="assets")


class PagePolicy:
    """Adds the security headers to every answer outside ``/api/``."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or path.startswith("/api/"):
            await self.app(scope, receive, send)
            return
        policy = DOCS_POLICY if path == "/docs" else CONSOLE_POLICY

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", ()))
                headers.append((b"content-security-policy", policy.encode()))
                headers += _HEADERS
                if path.startswith(ASSETS):
                    headers.append((b"cache-control", b"no-cache"))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, with_headers)
