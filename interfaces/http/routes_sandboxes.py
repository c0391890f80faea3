"""Sandboxes."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from interfaces.http import present
from interfaces.http.deps import App, Caller, parse_id, sandbox_origin
from interfaces.http.schemas import NewSandbox

router = APIRouter(prefix="/api", tags=["sandboxes"])


@router.get("/workspaces/{workspace_id}/sandboxes")
def list_sandboxes(workspace_id: str, request: Request, sb: App, user_id: Caller) -> Response:
    rows = sb.sandboxes.list(user_id, parse_id(workspace_id, "workspace_id"))
    origin = sandbox_origin(request)
    return present.JSON([present.sandbox(r, origin) for r in rows])


@router.post("/workspaces/{workspace_id}/sandboxes", status_code=201)
def create_sandbox(
    workspace_id: str, body: NewSandbox, request: Request, sb: App, user_id: Caller
) -> Response:
    wid = parse_id(workspace_id, "workspace_id")
    row = sb.sandboxes.create(user_id, wid, body.name, body.type)
    return present.JSON(present.sandbox(row, sandbox_origin(request)), 201)


@router.get("/sandboxes/{sandbox_id}")
def get_sandbox(sandbox_id: str, request: Request, sb: App, user_id: Caller) -> Response:
    row = sb.sandboxes.get(user_id, parse_id(sandbox_id, "sandbox_id"))
    return present.JSON(present.sandbox(row, sandbox_origin(request)))


@router.delete("/sandboxes/{sandbox_id}", status_code=202)
def delete_sandbox(sandbox_id: str, request: Request, sb: App, user_id: Caller) -> Response:
    row = sb.sandboxes.delete(user_id, parse_id(sandbox_id, "sandbox_id"))
    return present.JSON(present.sandbox(row, sandbox_origin(request)), 202)


@router.post("/sandboxes/{sandbox_id}/pause", status_code=202)
def pause_sandbox(sandbox_id: str, request: Request, sb: App, user_id: Caller) -> Response:
    row = sb.sandboxes.pause(user_id, parse_id(sandbox_id, "sandbox_id"))
    return present.JSON(present.sandbox(row, sandbox_origin(request)), 202)


@router.post("/sandboxes/{sandbox_id}/resume", status_code=202)
def resume_sandbox(sandbox_id: str, request: Request, sb: App, user_id: Caller) -> Response:
    row = sb.sandboxes.resume(user_id, parse_id(sandbox_id, "sandbox_id"))
    return present.JSON(present.sandbox(row, sandbox_origin(request)), 202)
