"""Anthropic API usage and the workspace's daily limits."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response

from application.paging import DEFAULT_LIMIT
from interfaces.http import paging, present
from interfaces.http import responses as r
from interfaces.http.deps import App, Caller, parse_id
from interfaces.http.paging import After, Limit, Listing
from interfaces.http.schemas import Limits, WorkspaceId

router = APIRouter(prefix="/api", tags=["usage"])

_MISSING = {404: ["workspace_not_found"]}
Days = Annotated[int, Query(description="how many days back, today included (1 to 366)")]


@router.get(
    "/workspaces/{workspace_id}/usage",
    response_model=r.Usage,
    responses=r.paged(r.GUARD, r.SESSION, _MISSING, r.BAD_ID),
)
def usage(
    workspace_id: WorkspaceId,
    request: Request,
    sb: App,
    user_id: Caller,
    days: Days = 30,
    limit: Limit = DEFAULT_LIMIT,
    after: After = None,
) -> Response:
    """Requests and tokens through the Anthropic proxy per day and sandbox (member):
    newest day first, then by sandbox id (descending); ``days`` is paged."""
    wid = parse_id(workspace_id, "workspace_id")
    report = sb.usage.report(user_id, wid, days, paging.page(Listing.usage, limit, after))
    return present.JSON(
        present.usage(report),
        headers=paging.next_link(request, Listing.usage, limit, report["next"]),
    )


@router.put(
    "/workspaces/{workspace_id}/limits",
    response_model=r.WorkspaceLimits,
    responses=r.answers(r.GUARD, r.WRITE, r.BODY, r.SESSION, r.ROLE, _MISSING, r.BUSY),
)
def set_limits(workspace_id: WorkspaceId, body: Limits, sb: App, user_id: Caller) -> Response:
    """The workspace's own daily limits (owner); null: the installation's default."""
    wid = parse_id(workspace_id, "workspace_id")
    limits = sb.usage.set_limits(user_id, wid, body.daily_requests, body.daily_tokens)
    return present.JSON(present.limits(limits))
