"""Anthropic API usage and the workspace's daily limits."""

from __future__ import annotations

from fastapi import APIRouter, Response

from interfaces.http import present
from interfaces.http.deps import App, Caller, parse_id
from interfaces.http.schemas import Limits

router = APIRouter(prefix="/api", tags=["usage"])


@router.get("/workspaces/{workspace_id}/usage")
def usage(workspace_id: str, sb: App, user_id: Caller, days: int = 30) -> Response:
    """Requests and tokens through the Anthropic proxy per day and sandbox (member)."""
    report = sb.usage.report(user_id, parse_id(workspace_id, "workspace_id"), days)
    return present.JSON(present.usage(report))


@router.put("/workspaces/{workspace_id}/limits")
def set_limits(workspace_id: str, body: Limits, sb: App, user_id: Caller) -> Response:
    """The workspace's own daily limits (owner); null: the installation's default."""
    wid = parse_id(workspace_id, "workspace_id")
    limits = sb.usage.set_limits(user_id, wid, body.daily_requests, body.daily_tokens)
    return present.JSON(present.limits(limits))
