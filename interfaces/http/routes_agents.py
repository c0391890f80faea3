"""Local agents: one-time codes, and registering an agent with one."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from interfaces.http import present
from interfaces.http import responses as r
from interfaces.http.deps import App, Caller, parse_id, sandbox_origin
from interfaces.http.schemas import AgentRegistration, WorkspaceId

router = APIRouter(prefix="/api", tags=["local agents"])


@router.post(
    "/workspaces/{workspace_id}/agent-code",
    status_code=201,
    response_model=r.AgentCode,
    responses=r.answers(
        r.GUARD, r.WRITE, r.SESSION, r.ROLE, {404: ["workspace_not_found"]}, r.BAD_ID
    ),
)
def agent_code(workspace_id: WorkspaceId, sb: App, user_id: Caller) -> Response:
    """A one-time code to register an agent on a member's machine (developer and up)."""
    code, expires_at = sb.local_agents.agent_code(user_id, parse_id(workspace_id, "workspace_id"))
    return present.JSON(
        {
            "code": code,
            "expires_at": present.rfc3339(expires_at),
            "expires_in": sb.local_agents.code_ttl,
        },
        201,
        headers={"cache-control": "no-store"},
    )


@router.post(
    "/agent/register",
    status_code=201,
    response_model=r.RegisteredAgent,
    responses=r.answers(
        r.GUARD,
        r.WRITE,
        r.BODY,
        {
            # The code's issuer, no longer allowed to, or their workspace gone.
            401: ["invalid_code"],
            403: ["forbidden"],
            404: ["workspace_not_found"],
            409: ["busy"],
            429: ["rate_limited"],
        },
    ),
)
def register(body: AgentRegistration, request: Request, sb: App) -> Response:
    """Swap a one-time code for a local sandbox and its tunnel token (no session: the
    code is the credential)."""
    client = request.client.host if request.client else "unknown"
    sandbox, token = sb.local_agents.register(body.code, body.name, body.type, client)
    return present.JSON(
        {
            "sandbox_id": str(sandbox["id"]),
            "workspace_id": str(sandbox["workspace_id"]),
            "tunnel_token": token,
            # What the agent's own server must accept: Sandbar presents it, as Basic
            # auth (opencode) or a bearer token (openclaw), on every request.
            "agent_password": sb.secrets.upstream_credential(sandbox["id"]),
            "sandbox": present.sandbox(sandbox, sandbox_origin(request)),
        },
        201,
        headers={"cache-control": "no-store"},
    )
