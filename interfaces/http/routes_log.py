"""A workspace's log: its live events (Server-Sent Events), its history, and its
members and sandboxes as they were at a moment."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Header, Query, Request, Response
from starlette.concurrency import run_in_threadpool
from starlette.responses import StreamingResponse

from application.errors import Invalid
from application.paging import DEFAULT_LIMIT
from application.workspace_log import MAX_PAGE
from interfaces.http import paging, present
from interfaces.http import responses as r
from interfaces.http.deps import App, Caller, parse_id, sandbox_origin, session_token
from interfaces.http.event_stream import BATCH, Stream, StreamHub
from interfaces.http.present_log import render, workspace_at
from interfaces.http.schemas import WorkspaceId

router = APIRouter(prefix="/api/workspaces", tags=["history"])

_MISSING = {404: ["workspace_not_found"]}
Limit = Annotated[int, Query(description=f"at most this many (1 to {MAX_PAGE})")]
After = Annotated[
    int | None, Query(description="the cursor of the page before (from its Link header)")
]
Person = Annotated[str | None, Query(description="only what this user did or underwent")]
Kind = Annotated[
    str | None,
    Query(description="workspace, member, sandbox, or an event's name such as Sandbox.Paused"),
]


def _position(value: str | None, field: str) -> int | None:
    if value is None or value == "":
        return None
    if not value.isdigit() or len(value) > 18:
        raise Invalid(f"{field} must be an event's position (a whole number)", field=field)
    return int(value)


@router.get("/{workspace_id}/events", include_in_schema=False)
async def events(
    workspace_id: WorkspaceId,
    request: Request,
    sb: App,
    user_id: Caller,
    after: str | None = None,
    last_event_id: Annotated[str | None, Header()] = None,
) -> Response:
    """The workspace's events as they are saved, as Server-Sent Events (docs/api.md,
    "Live events"). ``Last-Event-ID`` (or ``after``) resumes past that position; with
    neither, the stream starts at the latest event."""
    wid = parse_id(workspace_id, "workspace_id")
    start = _position(last_event_id, "Last-Event-ID")
    if start is None:
        start = _position(after, "after")
    log = sb.workspace_log
    head = await run_in_threadpool(log.head, user_id, wid)  # (a member, or 404 now)
    token = session_token(request)

    def read(position: int) -> list[dict[str, object]]:
        sb.accounts.authenticate(token)  # (signed out meanwhile: the stream ends)
        return log.since(user_id, wid, position, BATCH)

    hub: StreamHub = request.app.state.stream_hub
    stream = Stream(hub, wid, head if start is None else start, read, sandbox_origin(request))
    return StreamingResponse(
        aiter(stream),
        media_type="text/event-stream",
        headers={"cache-control": "no-store", "x-accel-buffering": "no"},
    )


@router.get(
    "/{workspace_id}/history",
    response_model=list[r.LogEntry],
    responses=r.answers(r.GUARD, r.SESSION, _MISSING, r.BAD_ID),
)
def history(
    workspace_id: WorkspaceId,
    request: Request,
    sb: App,
    user_id: Caller,
    limit: Limit = DEFAULT_LIMIT,
    after: After = None,
    person: Person = None,
    kind: Kind = None,
) -> Response:
    """The workspace's events, newest first (a member). When older ones follow, a
    ``Link: <...>; rel="next"`` header gives the next page's address."""
    wid = parse_id(workspace_id, "workspace_id")
    who = parse_id(person, "person") if person else None
    rows = sb.workspace_log.history(user_id, wid, after, limit, who, kind or None)
    origin = sandbox_origin(request)
    headers = paging.link(request, limit, str(rows[-1]["position"])) if len(rows) == limit else {}
    return present.JSON([render(row, origin) for row in rows], headers=headers)


@router.get(
    "/{workspace_id}/as-at",
    response_model=r.WorkspaceAt,
    responses=r.answers(r.GUARD, r.SESSION, _MISSING, r.BAD_ID),
)
def as_at(
    workspace_id: WorkspaceId,
    request: Request,
    sb: App,
    user_id: Caller,
    time: Annotated[
        str,
        Query(
            description="an RFC 3339 time, e.g. 2026-11-28T18:00:00Z",
            json_schema_extra={"format": "date-time"},
        ),
    ],
) -> Response:
    """The workspace, its members and its sandboxes as they were at ``time``, replayed
    from the log (a member)."""
    wid = parse_id(workspace_id, "workspace_id")
    snapshot = sb.workspace_log.as_at(user_id, wid, _moment(time))
    return present.JSON(workspace_at(snapshot, sandbox_origin(request)))


def _moment(value: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(value)
        parsed = parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
        return parsed.astimezone(UTC)
    except (ValueError, OverflowError):
        raise Invalid(
            "time must be an RFC 3339 time, e.g. 2026-11-28T18:00:00Z", field="time"
        ) from None
