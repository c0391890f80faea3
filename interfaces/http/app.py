"""The ASGI application: the REST API behind the request guard. (Sandbox hosts never
reach it: interfaces/proxy/front.py answers them at the protocol level.)"""

from __future__ import annotations

from fastapi import FastAPI
from starlette.types import ASGIApp

from interfaces.bootstrap import Sandbar
from interfaces.http import errors, present, routes_auth, routes_sandboxes, routes_workspaces
from interfaces.http.guard import RequestGuard


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

    return RequestGuard(api, max_body=sandbar.settings.max_body_bytes)
