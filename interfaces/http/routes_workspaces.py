"""Workspaces and members."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from application.paging import DEFAULT_LIMIT
from interfaces.http import paging, present
from interfaces.http import responses as r
from interfaces.http.deps import App, Caller, parse_id
from interfaces.http.paging import After, Limit, Listing
from interfaces.http.schemas import MemberId, NewMember, NewWorkspace, RoleChange, WorkspaceId

router = APIRouter(prefix="/api/workspaces", tags=["workspaces"])

_MISSING = {404: ["workspace_not_found"]}


@router.get(
    "",
    response_model=list[r.Workspace],
    responses=r.paged(r.GUARD, r.SESSION),
)
def list_workspaces(
    request: Request,
    sb: App,
    user_id: Caller,
    limit: Limit = DEFAULT_LIMIT,
    after: After = None,
) -> Response:
    """The caller's workspaces, oldest first (by created_at, then id), a page at a time."""
    found = sb.workspaces.list(user_id, paging.page(Listing.workspaces, limit, after))
    return present.JSON(
        [present.workspace(w) for w in found.rows],
        headers=paging.next_link(request, Listing.workspaces, limit, found.next),
    )


@router.post(
    "",
    status_code=201,
    response_model=r.Workspace,
    responses=r.answers(r.GUARD, r.WRITE, r.BODY, r.SESSION),
)
def create_workspace(body: NewWorkspace, sb: App, user_id: Caller) -> Response:
    return present.JSON(present.workspace(sb.workspaces.create(user_id, body.name)), 201)


@router.get(
    "/{workspace_id}",
    response_model=r.Workspace,
    responses=r.answers(r.GUARD, r.SESSION, _MISSING, r.BAD_ID),
)
def get_workspace(workspace_id: WorkspaceId, sb: App, user_id: Caller) -> Response:
    wid = parse_id(workspace_id, "workspace_id")
    return present.JSON(present.workspace(sb.workspaces.get(user_id, wid)))


@router.delete(
    "/{workspace_id}",
    status_code=204,
    response_class=Response,
    responses=r.answers(r.GUARD, r.WRITE, r.SESSION, r.ROLE, _MISSING, r.BUSY, r.BAD_ID),
)
def delete_workspace(workspace_id: WorkspaceId, sb: App, user_id: Caller) -> Response:
    sb.workspaces.delete(user_id, parse_id(workspace_id, "workspace_id"))
    return Response(status_code=204)


@router.get(
    "/{workspace_id}/members",
    response_model=list[r.Member],
    responses=r.paged(r.GUARD, r.SESSION, _MISSING, r.BAD_ID),
)
def list_members(
    workspace_id: WorkspaceId,
    request: Request,
    sb: App,
    user_id: Caller,
    limit: Limit = DEFAULT_LIMIT,
    after: After = None,
) -> Response:
    """Its members, by added_at then user id, a page at a time."""
    wid = parse_id(workspace_id, "workspace_id")
    found = sb.workspaces.members(user_id, wid, paging.page(Listing.members, limit, after))
    return present.JSON(
        [present.member(m) for m in found.rows],
        headers=paging.next_link(request, Listing.members, limit, found.next),
    )


@router.post(
    "/{workspace_id}/members",
    status_code=201,
    response_model=r.Member,
    responses=r.answers(
        r.GUARD,
        r.WRITE,
        r.BODY,
        r.SESSION,
        r.ROLE,
        {404: ["workspace_not_found", "user_not_found"], 409: ["already_member", "busy"]},
    ),
)
def add_member(workspace_id: WorkspaceId, body: NewMember, sb: App, user_id: Caller) -> Response:
    wid = parse_id(workspace_id, "workspace_id")
    row = sb.workspaces.add_member(user_id, wid, body.username, body.role)
    return present.JSON(present.member(row), 201)


_MEMBER_MISSING = {404: ["workspace_not_found", "member_not_found"]}
_LAST_OWNER = {409: ["last_owner", "busy"]}


@router.put(
    "/{workspace_id}/members/{member_id}",
    response_model=r.Member,
    responses=r.answers(r.GUARD, r.WRITE, r.BODY, r.SESSION, r.ROLE, _MEMBER_MISSING, _LAST_OWNER),
)
def change_role(
    workspace_id: WorkspaceId, member_id: MemberId, body: RoleChange, sb: App, user_id: Caller
) -> Response:
    wid, mid = parse_id(workspace_id, "workspace_id"), parse_id(member_id, "user_id")
    return present.JSON(present.member(sb.workspaces.change_role(user_id, wid, mid, body.role)))


@router.delete(
    "/{workspace_id}/members/{member_id}",
    status_code=204,
    response_class=Response,
    responses=r.answers(
        r.GUARD, r.WRITE, r.SESSION, r.ROLE, _MEMBER_MISSING, _LAST_OWNER, r.BAD_ID
    ),
)
def remove_member(
    workspace_id: WorkspaceId, member_id: MemberId, sb: App, user_id: Caller
) -> Response:
    wid, mid = parse_id(workspace_id, "workspace_id"), parse_id(member_id, "user_id")
    sb.workspaces.remove_member(user_id, wid, mid)
    return Response(status_code=204)
