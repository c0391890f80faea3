"""What the API answers with, declared for ``/openapi.json``: a model per JSON shape and,
per route, each error status with the codes it can carry.

The routes render their answers with present.py (orjson, no validation on the way out);
these models only describe them. tests/test_openapi.py keeps the two honest: schemathesis
checks every answer of a running server against this document, and docs/api.md against
the document field by field."""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import SkipJsonSchema

from domain.roles import ROLE_NAMES
from domain.sandboxes import Kind, SandboxType, Status

RoleName = StrEnum("RoleName", {name: name for name in ROLE_NAMES})  # type: ignore[misc]
RoleName.__doc__ = "A workspace role, highest first."


def Uuid() -> Any:
    return Field(json_schema_extra={"format": "uuid"})


def Time() -> Any:
    """An RFC 3339 time in UTC."""
    return Field(json_schema_extra={"format": "date-time"})


class Shape(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ErrorDetail(Shape):
    code: str = Field(description="snake_case, stable: what clients branch on")
    message: str = Field(description="a sentence for people")
    field: str | SkipJsonSchema[None] = Field(
        default=None, description="the field at fault, when one is"
    )


class Error(Shape):
    """Every error answer (4xx, and the bare 500 that bad input never gets)."""

    error: ErrorDetail


class LinkedProvider(Shape):
    provider: str = Field(description="a sign-in provider's name, as in /api/auth/providers")
    linked_at: str = Time()


class User(Shape):
    id: str = Uuid()
    username: str
    email: str | None
    display_name: str
    created_at: str = Time()
    providers: list[LinkedProvider] = Field(
        description="the provider accounts linked to this user, oldest first"
    )


class Provider(Shape):
    name: str
    label: str
    url: str = Field(description="where the sign-in button sends the browser")


class Workspace(Shape):
    id: str = Uuid()
    name: str
    role: RoleName = Field(description="the caller's role")
    created_at: str = Time()
    member_count: int = Field(description="its active members", ge=0)
    sandbox_count: int = Field(description="its sandboxes, but those being deleted", ge=0)


class Member(Shape):
    user_id: str = Uuid()
    username: str
    role: RoleName
    added_at: str = Time()


class Sandbox(Shape):
    id: str = Uuid()
    workspace_id: str = Uuid()
    name: str
    type: SandboxType
    kind: Kind
    status: Status
    url: str = Field(description="the browser address of its own host")
    created_by: str | None = Field(description="the creator's user id")
    created_at: str = Time()
    updated_at: str = Time()
    error: str | SkipJsonSchema[None] = Field(
        default=None, description="why it failed, or why its deletion waits"
    )


class AccessToken(Shape):
    token: str
    url: str
    expires_in: int = Field(description="seconds")


class AgentCode(Shape):
    code: str
    expires_at: str = Time()
    expires_in: int = Field(description="seconds")


class RegisteredAgent(Shape):
    sandbox_id: str = Uuid()
    workspace_id: str = Uuid()
    tunnel_token: str
    agent_password: str
    sandbox: Sandbox


class OwnLimits(Shape):
    daily_requests: int | None
    daily_tokens: int | None


class WorkspaceLimits(Shape):
    daily_requests: int | None = Field(description="in force (null: none)")
    daily_tokens: int | None = Field(description="in force (null: none)")
    own: OwnLimits = Field(description="the workspace's own (null: the default)")


class UsageDay(Shape):
    day: str = Field(json_schema_extra={"format": "date"})
    sandbox_id: str = Uuid()
    requests: int
    input_tokens: int
    output_tokens: int
    cache_creation_input_tokens: int
    cache_read_input_tokens: int


class Usage(Shape):
    limits: WorkspaceLimits
    days: list[UsageDay]


class LogEntry(Shape):
    position: int = Field(description="its place in the log: the cursor, and the SSE id")
    time: str = Time()
    event: str = Field(description="what happened, e.g. Sandbox.Paused")
    actor: str = Field(description="who did it: a user id, or system")
    actor_name: str | None = Field(description="the actor's username (null: system)")
    kind: str = Field(description="workspace, member or sandbox")
    id: str = Field(description="the id of what it changed (a member's user id)")
    item: dict[str, Any] | None = Field(
        description="that thing after the event: a Sandbox, a Member, or the workspace's"
        " id, name and created_at (null: gone)"
    )


class WorkspaceAt(Shape):
    at: str = Time()
    position: int = Field(description="the last event that went in (0: none)")
    workspace: dict[str, Any] | None = Field(
        description="its id, name and created_at (null: not yet made, or deleted)"
    )
    members: list[Member]
    sandboxes: list[Sandbox]


class Health(Shape):
    status: str


# Error codes by status. Every /api route may also answer GUARD's (the request guard's);
# every write, WRITE's.
GUARD = {
    400: ["bad_request"],
    413: ["body_too_large"],
    415: ["unsupported_media_type"],
    503: ["not_ready"],  # the views are being rebuilt (interfaces/http/ready.py)
}
NOT_READY = {503: ["not_ready"]}
WRITE = {403: ["cross_origin"]}
BODY = {
    400: ["malformed_json", "missing_body", "malformed_body"],
    422: ["missing_field", "unknown_field", "wrong_type", "invalid_field"],
}
SESSION = {401: ["unauthenticated"]}
BAD_ID = {422: ["invalid_field"]}
ROLE = {403: ["forbidden"]}
BUSY = {409: ["busy"]}
PAGE = {422: ["invalid_field"]}  # a limit out of bounds, a cursor not of this list


def answers(*groups: dict[int, list[str]]) -> dict[int | str, dict[str, Any]]:
    """FastAPI's ``responses`` for these error statuses, each described by its codes."""
    codes: dict[int, list[str]] = {}
    for group in groups:
        for status, names in group.items():
            codes.setdefault(status, [])
            codes[status] += [n for n in names if n not in codes[status]]
    return {
        status: {"model": Error, "description": ", ".join(names)}
        for status, names in sorted(codes.items())
    }


def paged(*groups: dict[int, list[str]]) -> dict[int | str, dict[str, Any]]:
    """``answers`` of a paged list (docs/api.md "Paging"): its 422s, and the Link header
    of its 200."""
    link = {
        "description": 'RFC 8288: `<path?limit=N&after=CURSOR>; rel="next"` while more rows'
        " may follow; absent on the last page",
        "schema": {"type": "string"},
    }
    return {200: {"headers": {"Link": link}}, **answers(*groups, PAGE)}


def redirect(description: str) -> dict[int | str, dict[str, Any]]:
    """A 302 with its Location and no body."""
    location = {"description": "where to go", "schema": {"type": "string"}}
    return {302: {"description": description, "headers": {"Location": location}}}
