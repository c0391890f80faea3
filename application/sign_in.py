"""Signing in with another provider (any OpenID Connect provider, GitHub).

A provider's user is known by provider + subject (an Identity index aggregate, so two
sign-ins racing to create the same person cannot make two accounts). A new subject gets a
new user with a unique username derived from what the provider says. An identity is
linked to an existing account only when that account's user, signed in, asks for it, or,
if the installation allows it, when the provider vouches for an email address that exactly
one account has: never silently by an unverified email."""

from __future__ import annotations

import logging
import re
import secrets
from collections.abc import Mapping
from typing import Any, Protocol
from uuid import UUID, uuid4

from application import validation
from application.errors import AppError, Conflict, Invalid, NotFound, Unauthorized
from application.eventlog import EventLog
from application.ports import CredentialStore, ReadModel, Row
from domain.base import acting_as
from domain.users import Identity, User, Username, link_identity

log = logging.getLogger(__name__)


class ProviderClaims(Protocol):
    @property
    def subject(self) -> str: ...
    @property
    def username_hint(self) -> str | None: ...
    @property
    def email(self) -> str | None: ...
    @property
    def email_verified(self) -> bool: ...
    @property
    def name(self) -> str | None: ...


class Authorization(Protocol):
    @property
    def url(self) -> str: ...


class Provider(Protocol):
    name: str
    label: str

    def authorize(
        self, redirect_uri: str, state: str, verifier: str, nonce: str
    ) -> Authorization: ...
    def finish(
        self, redirect_uri: str, code: str, verifier: str, nonce: str | None
    ) -> ProviderClaims: ...


class States(Protocol):
    def open(self, provider: str, next_url: str, link_user: UUID | None) -> dict[str, str]: ...
    def take(self, provider: str, state: str) -> dict[str, Any] | None: ...


def _username_base(*hints: str | None) -> str:
    for hint in hints:
        if not hint:
            continue
        base = re.sub(r"[^a-z0-9_-]+", "-", hint.split("@")[0].lower()).strip("-_")[:24]
        if len(base) >= 3:
            return base
    return "user"


class ExternalSignIn:
    def __init__(
        self,
        log: EventLog,
        reads: ReadModel,
        credentials: CredentialStore,
        states: States,
        providers: Mapping[str, Provider],
        *,
        link_verified_email: bool,
        provider_errors: tuple[type[Exception], ...],
    ) -> None:
        self._log = log
        self._reads = reads
        self._credentials = credentials
        self._states = states
        self._providers = dict(providers)
        self._link_verified_email = link_verified_email
        self._provider_errors = provider_errors

    def providers(self) -> list[Row]:
        return [{"name": p.name, "label": p.label} for p in self._providers.values()]

    def _provider(self, name: str) -> Provider:
        provider = self._providers.get(name)
        if provider is None:
            raise NotFound(f"sign-in with {name!r} is not configured here", code="no_provider")
        return provider

    def begin(self, name: str, redirect_uri: str, next_url: str, link_user: UUID | None) -> str:
        """Where to send the browser: the provider's authorization page."""
        provider = self._provider(name)
        opened = self._states.open(name, next_url, link_user)
        try:
            return provider.authorize(
                redirect_uri, opened["state"], opened["verifier"], opened["nonce"]
            ).url
        except self._provider_errors as e:
            raise Unauthorized(str(e), code="provider_unavailable") from None

    def finish(
        self, name: str, redirect_uri: str, params: Mapping[str, str]
    ) -> tuple[Row, str, str]:
        """The signed-in user, a new session token, and where to send the browser."""
        provider = self._provider(name)
        state = params.get("state", "")
        began = self._states.take(name, state) if state else None
        if params.get("error"):
            log.warning("sign-in with %s refused by the provider: %s", name, params["error"])
            raise Unauthorized(
                f"the provider did not sign you in ({params['error'][:100]})",
                code="provider_refused",
            )
        if began is None:
            log.warning("sign-in with %s: unknown, used or expired state", name)
            raise AppError(  # a 400: the request is bad, not one of its fields
                "this sign-in link is unknown, used or expired; start again",
                code="invalid_state",
                field="state",
            )
        code = params.get("code", "")
        if not code:
            raise AppError("the provider sent no code", code="invalid_code", field="code")
        try:
            claims = provider.finish(redirect_uri, code, began["verifier"], began["nonce"])
        except self._provider_errors as e:
            log.warning("sign-in with %s failed: %s", name, e)
            raise Unauthorized(str(e), code="sign_in_failed") from None
        user_id = self._user_for(name, claims, began["link_user"])
        user = self._reads.user(user_id)
        if user is None:
            raise NotFound("user not found")
        return user, self._credentials.open_session(user_id), began["next"]

    def _user_for(self, provider: str, claims: ProviderClaims, link_user: UUID | None) -> UUID:
        identity_id = Identity.create_id(provider, claims.subject)

        def command() -> UUID:
            identity = self._log.find(identity_id, Identity)
            if identity is not None:
                if link_user is not None and identity.user_id != link_user:
                    raise Conflict(
                        "that account is already linked to another Sandbar user",
                        code="identity_taken",
                    )
                return identity.user_id
            owner = link_user or self._verified_email_owner(claims)
            if owner is not None:
                user = self._log.find(owner, User)
                if user is None:
                    raise NotFound("user not found")
                with acting_as(owner):
                    index = link_identity(user, provider, claims.subject)
                self._log.save(user, index)
                return owner
            return self._create(provider, claims)

        return self._log.retrying(command)

    def _verified_email_owner(self, claims: ProviderClaims) -> UUID | None:
        if not (self._link_verified_email and claims.email_verified and claims.email):
            return None
        owners = self._reads.users_by_email(claims.email)
        return owners[0] if len(owners) == 1 else None

    def _create(self, provider: str, claims: ProviderClaims) -> UUID:
        base = _username_base(claims.username_hint, claims.email, claims.name)
        email = None
        if claims.email and claims.email_verified:  # an unverified address is not kept
            try:
                email = validation.email(claims.email)
            except Invalid:
                email = None
        for attempt in range(20):
            username = base if attempt == 0 else f"{base}-{secrets.token_hex(2)}"
            if self._log.find(Username.create_id(username), Username) is not None:
                continue
            user_id = uuid4()
            display = (claims.name or username)[:64].strip() or username
            with acting_as(user_id):
                user = User(id=user_id, username=username, email=email, display_name=display)
                claim = Username(username=username, user_id=user_id)
                index = link_identity(user, provider, claims.subject)
            self._log.save(user, claim, index)
            return user_id
        raise Conflict("could not find a free username; try again", code="username_taken")
