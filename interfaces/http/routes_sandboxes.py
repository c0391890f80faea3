"""Sandboxes."""

from __future__ import annotations

from urllib.parse import urlencode

from fastapi import APIRouter, Request, Response

from application.errors import Invalid
from application.paging import DEFAULT_LIMIT
from domain.sandboxes import HOST_PREFIXES, SandboxType
from interfaces.addresses import safe_next
from interfaces.http import paging, present
from interfaces.http import responses as r
from interfaces.http.deps import App, Caller, parse_id, sandbox_origin, session_token
from interfaces.http.paging import After, Limit, Listing
from interfaces.http.schemas import NewSandbox, SandboxId, WorkspaceId

router = APIRouter(prefix="/api", tags=["sandboxes"])

_NO_WORKSPACE = {404: ["workspace_not_found"]}
_MISSING = {404: ["sandbox_not_found"]}
# A command on one sandbox: its role, its state.
_COMMAND = r.answers(
    r.GUARD,
    r.WRITE,
    r.SESSION,
    r.ROLE,
    _MISSING,
    {409: ["illegal_transition", "busy"]},
    r.BAD_ID,
)


@router.get(
    "/workspaces/{workspace_id}/sandboxes",
    response_model=list[r.Sandbox],
    responses=r.paged(r.GUARD, r.SESSION, _NO_WORKSPACE, r.BAD_ID),
)
def list_sandboxes(
    workspace_id: WorkspaceId,
    request: Request,
    sb: App,
    user_id: Caller,
    limit: Limit = DEFAULT_LIMIT,
    after: After = None,
) -> Response:
    """Its sandboxes, oldest first (by created_at, then id), a page at a time."""
    wid = parse_id(workspace_id, "workspace_id")
    found = sb.sandboxes.list(user_id, wid, paging.page(Listing.sandboxes, limit, after))
    origin = sandbox_origin(request)
    return present.JSON(
        [present.sandbox(r, origin) for r in found.rows],
        headers=paging.next_link(request, Listing.sandboxes, limit, found.next),
    )


@router.post(
    "/workspaces/{workspace_id}/sandboxes",
    status_code=201,
    response_model=r.Sandbox,
    responses=r.answers(r.GUARD, r.WRITE, r.BODY, r.SESSION, r.ROLE, _NO_WORKSPACE, r.BUSY),
)
def create_sandbox(
    workspace_id: WorkspaceId, body: NewSandbox, request: Request, sb: App, user_id: Caller
) -> Response:
    wid = parse_id(workspace_id, "workspace_id")
    row = sb.sandboxes.create(user_id, wid, body.name, body.type)
    return present.JSON(present.sandbox(row, sandbox_origin(request)), 201)


@router.get(
    "/sandboxes/{sandbox_id}",
    response_model=r.Sandbox,
    responses=r.answers(r.GUARD, r.SESSION, _MISSING, r.BAD_ID),
)
def get_sandbox(sandbox_id: SandboxId, request: Request, sb: App, user_id: Caller) -> Response:
    row = sb.sandboxes.get(user_id, parse_id(sandbox_id, "sandbox_id"))
    return present.JSON(present.sandbox(row, sandbox_origin(request)))


@router.delete(
    "/sandboxes/{sandbox_id}", status_code=202, response_model=r.Sandbox, responses=_COMMAND
)
def delete_sandbox(sandbox_id: SandboxId, request: Request, sb: App, user_id: Caller) -> Response:
    row = sb.sandboxes.delete(user_id, parse_id(sandbox_id, "sandbox_id"))
    return present.JSON(present.sandbox(row, sandbox_origin(request)), 202)


@router.post(
    "/sandboxes/{sandbox_id}/pause", status_code=202, response_model=r.Sandbox, responses=_COMMAND
)
def pause_sandbox(sandbox_id: SandboxId, request: Request, sb: App, user_id: Caller) -> Response:
    row = sb.sandboxes.pause(user_id, parse_id(sandbox_id, "sandbox_id"))
    return present.JSON(present.sandbox(row, sandbox_origin(request)), 202)


@router.post(
    "/sandboxes/{sandbox_id}/resume", status_code=202, response_model=r.Sandbox, responses=_COMMAND
)
def resume_sandbox(sandbox_id: SandboxId, request: Request, sb: App, user_id: Caller) -> Response:
    row = sb.sandboxes.resume(user_id, parse_id(sandbox_id, "sandbox_id"))
    return present.JSON(present.sandbox(row, sandbox_origin(request)), 202)


# Opening a sandbox: the sandbox host sends a browser here; the answer carries it back.
TICKET_PATH = "/_sandbar/ticket"


@router.get(
    "/sandboxes/{sandbox_id}/open",
    status_code=302,
    response_class=Response,
    responses={
        **r.redirect("to the sandbox's host, with a one-time ticket"),
        **r.answers(r.GUARD, r.SESSION, r.ROLE, _MISSING, r.BAD_ID),
    },
)
def open_sandbox(
    sandbox_id: SandboxId, request: Request, sb: App, user_id: Caller, next: str = "/"
) -> Response:
    """Redirect to the sandbox's own host with a one-time ticket (about a minute, single
    use, bound to this sandbox, user and session). ``next`` is a path on that host."""
    target = safe_next(next)
    if target is None:
        raise Invalid("next must be a path on the sandbox's host, like /doc", field="next")
    session = session_token(request) or ""
    row, ticket = sb.opening.ticket(user_id, session, parse_id(sandbox_id, "sandbox_id"))
    label = f"{HOST_PREFIXES[SandboxType(row['type'])]}-{row['id']}"
    origin = sb.addresses.sandbox_origin(label, request.headers.get("host", ""))
    query = urlencode({"ticket": ticket, "next": target})
    return Response(
        status_code=302,
        headers={
            "location": f"{origin}{TICKET_PATH}?{query}",
            "cache-control": "no-store",
            "referrer-policy": "no-referrer",
        },
    )


@router.post(
    "/sandboxes/{sandbox_id}/access-tokens",
    status_code=201,
    response_model=r.AccessToken,
    responses=r.answers(r.GUARD, r.WRITE, r.SESSION, r.ROLE, _MISSING, r.BAD_ID),
)
def new_access_token(sandbox_id: SandboxId, request: Request, sb: App, user_id: Caller) -> Response:
    """A token for programs (not browsers) to reach the sandbox's host, sent as
    ``Authorization: Bearer <token>``. It acts as its creator: it stops working when they
    lose the role or the sandbox is deleted."""
    row, token = sb.opening.access_token(user_id, parse_id(sandbox_id, "sandbox_id"))
    url = present.sandbox(row, sandbox_origin(request))["url"]
    return present.JSON(
        {"token": token, "url": url, "expires_in": sb.opening.token_ttl},
        201,
        headers={"cache-control": "no-store"},
    )
