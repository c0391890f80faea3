"""Workspaces and members."""

from __future__ import annotations

from fastapi import APIRouter, Response

from interfaces.http import present
from interfaces.http.deps import App, Caller, parse_id
from interfaces.http.schemas import NewMember, NewWorkspace, RoleChange

router = APIRouter(prefix="/api/workspaces", tags=["workspaces"])


@router.get("")
def list_workspaces(sb: App, user_id: Caller) -> Response:
    return present.JSON([present.workspace(w) for w in sb.workspaces.list(user_id)])


@router.post("", status_code=201)
def create_workspace(body: NewWorkspace, sb: App, user_id: Caller) -> Response:
    return present.JSON(present.workspace(sb.workspaces.create(user_id, body.name)), 201)


@router.get("/{workspace_id}")
def get_workspace(workspace_id: str, sb: App, user_id: Caller) -> Response:
    wid = parse_id(workspace_id, "workspace_id")
    return present.JSON(present.workspace(sb.workspaces.get(user_id, wid)))


@router.delete("/{workspace_id}", status_code=204)
def delete_workspace(workspace_id: str, sb: App, user_id: Caller) -> Response:
    sb.workspaces.delete(user_id, parse_id(workspace_id, "workspace_id"))
    return Response(status_code=204)


@router.get("/{workspace_id}/members")
def list_members(workspace_id: str, sb: App, user_id: Caller) -> Response:
    wid = parse_id(workspace_id, "workspace_id")
    return present.JSON([present.member(m) for m in sb.workspaces.members(user_id, wid)])


@router.post("/{workspace_id}/members", status_code=201)
def add_member(workspace_id: str, body: NewMember, sb: App, user_id: Caller) -> Response:
    wid = parse_id(workspace_id, "workspace_id")
    row = sb.workspaces.add_member(user_id, wid, body.username, body.role)
    return present.JSON(present.member(row), 201)


@router.put("/{workspace_id}/members/{member_id}")
def change_role(
    workspace_id: str, member_id: str, body: RoleChange, sb: App, user_id: Caller
) -> Response:
    wid, mid = parse_id(workspace_id, "workspace_id"), parse_id(member_id, "user_id")
    return present.JSON(present.member(sb.workspaces.change_role(user_id, wid, mid, body.role)))


@router.delete("/{workspace_id}/members/{member_id}", status_code=204)
def remove_member(workspace_id: str, member_id: str, sb: App, user_id: Caller) -> Response:
    wid, mid = parse_id(workspace_id, "workspace_id"), parse_id(member_id, "user_id")
    sb.workspaces.remove_member(user_id, wid, mid)
    return Response(status_code=204)
