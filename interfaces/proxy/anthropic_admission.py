"""Whether a call to the Anthropic proxy may go on, and counting it.

A sandbox presents its proxy token (``x-api-key`` or ``Authorization: Bearer``), derived
from the server key, so none is stored; it is good while the sandbox exists and is not
paused (read from the routing table through the same cache as the subdomain proxy). An
admitted call is counted against its workspace's daily limits before it goes on, and its
usage recorded for that day when it ends.

Apart from the relaying (interfaces/proxy/anthropic.py) because it is the proxy's one
policy, and the same for both paths that relay (the protocol-level exchange and the ASGI
fallback): a refusal here is an ``anthropic_errors.Refused`` raised, answered by the
caller."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import date
from typing import Any, NamedTuple
from uuid import UUID

from application.errors import RateLimited
from application.opening import GONE
from application.usage import Usage
from interfaces.proxy import anthropic_errors as errors
from interfaces.proxy.directory import MISS, Directory
from interfaces.proxy.headers import Index, bearer

log = logging.getLogger("interfaces.proxy.anthropic")  # (the proxy's log, as before the split)

PAUSED = {"paused", "pausing"}
MAX_TOKENS_REMEMBERED = 10_000


class Counted(NamedTuple):
    """An admitted call: counted for its workspace on its day, recorded for its sandbox."""

    workspace_id: UUID
    sandbox_id: UUID
    day: date


class Admission:
    """Checks a call's token, its sandbox and its size, and counts it.

    ``directory`` is the proxy's cache of the routing table, ``usage`` the daily limits
    and the record, ``sandbox_of_token`` the proxy token's check, ``note`` marks the
    sandbox as in use; ``key_configured`` says whether there is a real key to call with."""

    def __init__(
        self,
        directory: Directory,
        usage: Usage,
        sandbox_of_token: Callable[[str], UUID | None],
        note: Callable[[UUID], None],
        *,
        key_configured: bool,
        max_body: int,
    ) -> None:
        self._directory = directory
        self._usage = usage
        self._sandbox_of_token = sandbox_of_token
        self._note = note
        self._key_configured = key_configured
        self.max_body = max_body
        self._tokens: dict[bytes, Any] = {}

    def admit_now(self, headers: Index) -> Counted | None:
        """``admit``, if it can be decided without waiting; else None."""
        sandbox_id = self._sandbox(headers)
        route = self._directory.peek_route(sandbox_id)
        if route is MISS:
            return None
        workspace_id = self._check(route, headers)
        day = self._usage.admit_now(workspace_id)
        if day is None:
            return None
        self._note(sandbox_id)
        return Counted(workspace_id, sandbox_id, day)

    async def admit(self, headers: Index) -> Counted:
        """The call's workspace, sandbox and day, once it is counted; else Refused."""
        sandbox_id = self._sandbox(headers)
        if not self._directory.ready:  # (and the cache empty: admit_now had no answer)
            raise errors.not_ready()
        try:
            route = await self._directory.route(sandbox_id)
        except Exception:  # the database is down, say: the client may try again
            log.exception("could not look up a sandbox for an Anthropic API request")
            raise errors.cannot_count() from None
        workspace_id = self._check(route, headers)
        try:
            day = await self._usage.admit(workspace_id)
        except RateLimited as e:
            raise errors.rate_limited(e.message, e.retry_after) from None
        except Exception:
            log.exception("could not count an Anthropic API request")
            raise errors.cannot_count() from None
        self._note(sandbox_id)
        return Counted(workspace_id, sandbox_id, day)

    def record(self, counted: Counted, counts: dict[str, int]) -> None:
        """A counted call has ended, having used ``counts`` tokens."""
        self._usage.record(counted.workspace_id, counted.sandbox_id, counted.day, counts)

    def check_length(self, headers: Index) -> None:
        """Refused if the call announces a body over the limit (or a length that is not
        one)."""
        length = headers.get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_body):
            raise errors.too_large(self.max_body)

    def _check(self, route: dict[str, Any] | None, headers: Index) -> UUID:
        """The sandbox's workspace, if its call may go on; else Refused."""
        if route is None or route["status"] in GONE:
            raise errors.token_gone()
        if route["status"] in PAUSED:
            raise errors.paused()
        if not self._key_configured:
            raise errors.no_key()
        self.check_length(headers)
        workspace_id: UUID = route["workspace_id"]
        return workspace_id

    def _sandbox(self, headers: Index) -> UUID:
        token = headers.get(b"x-api-key")
        if token is None:
            token = bearer(headers)
        sandbox_id = None
        if token:
            sandbox_id = self._tokens.get(token, MISS)
            if sandbox_id is MISS:
                # Derived tokens never change, so their check is remembered (bounded).
                sandbox_id = self._sandbox_of_token(token.decode("latin-1"))
                if len(self._tokens) >= MAX_TOKENS_REMEMBERED:
                    self._tokens.clear()
                self._tokens[token] = sandbox_id
        if sandbox_id is None:
            raise errors.invalid_token()
        return sandbox_id
