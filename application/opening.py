"""Opening a sandbox in the browser, or from another program.

The API host, where the user's session lives, checks the role and hands out a one-time
ticket bound to the sandbox, the user and the session; the sandbox's own host swaps it for
a grant (its host-only cookie). A program asks for an access token instead: a grant with
no session behind it. The subdomain proxy re-checks role and status on every request."""

from __future__ import annotations

from uuid import UUID

from application.access import Access
from application.errors import NotFound
from application.ports import CredentialStore, GrantStore, Row
from application.sandboxes import Sandboxes
from domain import roles
from domain.roles import Role

GONE = {"deleting", "deleted"}


def may_open(role: str | None) -> bool:
    """Whether a member with this role may use a sandbox of the workspace."""
    return role is not None and Role[role] >= roles.OPERATE_SANDBOX


class Opening:
    def __init__(
        self,
        sandboxes: Sandboxes,
        access: Access,
        credentials: CredentialStore,
        grants: GrantStore,
        *,
        ticket_ttl: float,
        grant_ttl: float,
        token_ttl: float,
    ) -> None:
        self._sandboxes = sandboxes
        self._access = access
        self._credentials = credentials
        self._grants = grants
        self._ticket_ttl = ticket_ttl
        self._grant_ttl = grant_ttl
        self.token_ttl = token_ttl

    def _openable(self, actor: UUID, sandbox_id: UUID) -> Row:
        sandbox = self._sandboxes.get(actor, sandbox_id)  # NotFound for a non-member
        self._access.require(sandbox["workspace_id"], actor, roles.OPERATE_SANDBOX)
        if sandbox["status"] in GONE:
            raise NotFound("sandbox not found", code="sandbox_not_found")
        return sandbox

    def ticket(self, actor: UUID, session_token: str, sandbox_id: UUID) -> tuple[Row, str]:
        sandbox = self._openable(actor, sandbox_id)
        session = self._credentials.digest(session_token)
        return sandbox, self._grants.issue_ticket(sandbox_id, actor, session, self._ticket_ttl)

    def redeem(self, ticket: str, sandbox_id: UUID) -> str | None:
        """The grant for a genuine, fresh, unused ticket of this sandbox, else None."""
        redeemed = self._grants.redeem_ticket(ticket, sandbox_id, self._grant_ttl)
        return redeemed[0] if redeemed else None

    def access_token(self, actor: UUID, sandbox_id: UUID) -> tuple[Row, str]:
        sandbox = self._openable(actor, sandbox_id)
        return sandbox, self._grants.issue_token(sandbox_id, actor, self.token_ttl)
