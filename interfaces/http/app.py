"""The ASGI application: the REST API behind the request guard. The front
(interfaces/proxy/front.py) answers sandbox hosts, the Anthropic proxy's path and agents'
tunnels at the protocol level; every other request reaches this."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.types import ASGIApp

from interfaces.bootstrap import Sandbar
from interfaces.http import (
    errors,
    present,
    responses,
    routes_agents,
    routes_auth,
    routes_log,
    routes_sandboxes,
    routes_usage,
    routes_workspaces,
)
from interfaces.http.event_stream import StreamHub
from interfaces.http.guard import RequestGuard
from interfaces.http.ready import UntilReady
from interfaces.proxy.server import SandboxProxy
from interfaces.version import VERSION
from interfaces.web import console


def create_app(
    sandbar: Sandbar, proxy: SandboxProxy | None = None, hub: StreamHub | None = None
) -> ASGIApp:
    """The API; ``hub`` wakes its live event streams (the server closes it on shutdown,
    so that open streams do not hold the shutdown)."""

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
        docs_url=None,  # (served by the console, from files of its own: interfaces/web)
        redoc_url=None,
    )
    api.state.sandbar = sandbar
    api.state.stream_hub = hub or stream_hub(sandbar)
    errors.install(api)

    # The health checks first (routes are matched in order, and these are asked most),
    # and on the event loop: nothing here waits, so no hop to a worker thread.
    @api.get("/healthz", tags=["health"], response_model=responses.Health)
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    readiness = sandbar.readiness

    @api.get(
        "/readyz",
        tags=["health"],
        response_model=responses.Health,
        responses=responses.answers(responses.NOT_READY),
    )
    async def readyz() -> object:
        if readiness.ready:
            return {"status": "ready"}
        return errors.not_ready(readiness.describe())

    api.include_router(routes_auth.router)
    api.include_router(routes_workspaces.router)
    api.include_router(routes_sandboxes.router)
    api.include_router(routes_usage.router)
    api.include_router(routes_agents.router)
    api.include_router(routes_log.router)

    console.install(api)
    guarded = UntilReady(
        RequestGuard(console.PagePolicy(api), max_body=sandbar.settings.max_body_bytes),
        readiness,
    )
    proxy = proxy or SandboxProxy(sandbar)
    proxy.hot_path = sandbar.anthropic_api(proxy.gate.directory)  # (the front answers it)
    return guarded


def stream_hub(sandbar: Sandbar) -> StreamHub:
    """The hub of a server's live event streams, woken by every save to the log."""
    reads = sandbar.workspace_log.reads
    hub = StreamHub(reads.latest, reads.workspaces_since)
    sandbar.changes.subscribe(hub.changed)
    return hub
