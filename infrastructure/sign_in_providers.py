"""Which sign-in providers an installation has, and what they give back.

The providers themselves (infrastructure/oidc.py) are built on authlib and joserfc, whose
import costs a server a good part of its start-up: they are loaded only when a provider is
configured (at start, so that a broken install still stops start-up there)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from infrastructure.settings import Settings

if TYPE_CHECKING:
    from infrastructure.oidc import GitHubProvider, OIDCProvider


class ProviderError(Exception):
    """The provider refused, or answered with something unusable; the message is safe
    to show (it names no secret)."""


@dataclass(frozen=True)
class Claims:
    subject: str
    username_hint: str | None
    email: str | None
    email_verified: bool
    name: str | None


@dataclass(frozen=True)
class Authorization:
    url: str
    nonce: str | None


def providers(settings: Settings) -> dict[str, OIDCProvider | GitHubProvider]:
    """The providers this installation has settings for."""
    generic = bool(settings.oidc_issuer and settings.oidc_client_id)
    github = bool(settings.github_client_id and settings.github_client_secret)
    found: dict[str, OIDCProvider | GitHubProvider] = {}
    if not (generic or github):
        return found
    from infrastructure.oidc import GitHubProvider, OIDCProvider

    if generic:
        found["generic"] = OIDCProvider(settings)
    if github:
        found["github"] = GitHubProvider(settings)
    return found
