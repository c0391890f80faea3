"""The ASGI application: the REST API behind the request guard."""

from __future__ import annotations

from fastapi import FastAPI
from starlette.types import ASGIApp, Receive, Scope, Send

from interfaces.bootstrap import Sandbar
from interfaces.http import errors, present, routes_auth, routes_sandboxes, routes_workspaces
from interfaces.http.guard import RequestGuard
from interfaces.proxy.app import SandboxProxy


def create_app(sandbar: Sandbar) -> ASGIApp:
    api = FastAPI(
        title="Sandbar",
        summary="Run AI coding agents in sandboxes, opened from the browser.",
        version="0.1.0",
        default_response_class=present.JSON,
    )
    api.state.sandbar = sandbar
    errors.install(api)
    api.include_router(routes_auth.router)
    api.include_router(routes_workspaces.router)
    api.include_router(routes_sandboxes.router)

    @api.get("/healthz", tags=["health"])
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return HostDispatch(
        RequestGuard(api, max_body=sandbar.settings.max_body_bytes), SandboxProxy(sandbar), sandbar
    )


class HostDispatch:
    """Requests for a subdomain of the base domain go to the sandbox proxy; the rest
    (and lifespan) to the API."""

    def __init__(self, api: ASGIApp, proxy: ASGIApp, sandbar: Sandbar) -> None:
        self._api = api
        self._proxy = proxy
        self._addresses = sandbar.addresses

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            for name, value in scope["headers"]:
                if name == b"host":
                    if self._addresses.is_sandbox_host(value.decode("latin-1")):
                        await self._proxy(scope, receive, send)
                        return
                    break
        await self._api(scope, receive, send)
