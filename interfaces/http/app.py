"""The ASGI application: the REST API behind the request guard, and the Anthropic proxy
at ``/proxy/anthropic/`` for the connections uvicorn holds. (Sandbox hosts never reach
it, nor do most proxy calls: interfaces/proxy/front.py answers them at the protocol
level.)"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.types import ASGIApp, Receive, Scope, Send

from interfaces.bootstrap import Sandbar
from interfaces.http import (
    errors,
    present,
    responses,
    routes_agents,
    routes_auth,
    routes_sandboxes,
    routes_usage,
    routes_workspaces,
)
from interfaces.http.guard import RequestGuard
from interfaces.proxy.anthropic import PREFIX
from interfaces.proxy.anthropic_asgi import AnthropicAsgi
from interfaces.proxy.server import SandboxProxy
from interfaces.version import VERSION


def create_app(sandbar: Sandbar, proxy: SandboxProxy | None = None) -> ASGIApp:
    @asynccontextmanager
    async def lifespan(_api: FastAPI) -> AsyncIterator[None]:
        yield
        await sandbar.usage.close()  # the Anthropic proxy's last counts are written

    api = FastAPI(
        lifespan=lifespan,
        title="Sandbar",
        summary="Run AI coding agents in sandboxes, opened from the browser.",
        version=VERSION,
        default_response_class=present.JSON,
    )
    api.state.sandbar = sandbar
    errors.install(api)
    api.include_router(routes_auth.router)
    api.include_router(routes_workspaces.router)
    api.include_router(routes_sandboxes.router)
    api.include_router(routes_usage.router)
    api.include_router(routes_agents.router)

    @api.get("/healthz", tags=["health"], response_model=responses.Health)
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    guarded = RequestGuard(api, max_body=sandbar.settings.max_body_bytes)
    proxy = proxy or SandboxProxy(sandbar)
    anthropic = sandbar.anthropic_api(proxy.gate.directory)
    proxy.hot_path = anthropic  # answered at the protocol level, before uvicorn
    return PathDispatch(guarded, AnthropicAsgi(anthropic, proxy.pool, proxy.started))


class PathDispatch:
    """``/proxy/anthropic/...`` to the Anthropic proxy (no framework on its path);
    everything else to the API. (Agents' tunnels never get here: the proxy's front
    hands them to interfaces/tunnel/server.py at the protocol level.)"""

    def __init__(self, api: ASGIApp, anthropic: ASGIApp) -> None:
        self._api = api
        self._anthropic = anthropic
        self._prefix = PREFIX + "/"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith(self._prefix):
            await self._anthropic(scope, receive, send)
        else:
            await self._api(scope, receive, send)
