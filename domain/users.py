"""Users and the username index that keeps usernames unique (case-insensitively).

No credential ever enters an event: ``PasswordSet`` records only that a password was set;
the argon2id hash lives in the credentials table.
"""

from __future__ import annotations

from uuid import NAMESPACE_URL, UUID, uuid5

from eventsourcing.domain import event

from domain.base import SandbarAggregate

_USERNAME_NS = uuid5(NAMESPACE_URL, "sandbar:username")


class User(SandbarAggregate):
    """A person who signs in. Its id is chosen by the caller, so that the registration
    itself can be attributed to the new user."""

    class_version = 1  # of its snapshots' state, as each event's below

    # Declared events (docs/architecture.md, "Changing an event"); their names are their
    # stored topics.
    class Registered(SandbarAggregate.Created):
        class_version = 1
        username: str
        email: str | None
        display_name: str

    class PasswordSet(SandbarAggregate.Event):
        class_version = 1

    class IdentityLinked(SandbarAggregate.Event):
        class_version = 1
        provider: str
        subject: str

    @event(Registered)
    def __init__(self, id: UUID, username: str, email: str | None, display_name: str) -> None:
        self.username = username
        self.email = email
        self.display_name = display_name
        self.has_password = False
        self.identities: list[str] = []

    @event(PasswordSet)
    def password_set(self) -> None:
        self.has_password = True

    @event(IdentityLinked)
    def identity_linked(self, provider: str, subject: str) -> None:
        self.identities = [*self.identities, f"{provider}:{subject}"]


class Username(SandbarAggregate):
    """Index aggregate: its id is derived from the username, so a second claim of the
    same name fails on version in the same save as the user's registration."""

    class_version = 1

    class Claimed(SandbarAggregate.Created):
        class_version = 1
        username: str
        user_id: UUID

    @staticmethod
    def create_id(username: str) -> UUID:
        return uuid5(_USERNAME_NS, username.lower())

    @event(Claimed)
    def __init__(self, username: str, user_id: UUID) -> None:
        self.username = username
        self.user_id = user_id


_IDENTITY_NS = uuid5(NAMESPACE_URL, "sandbar:identity")


def link_identity(user: User, provider: str, subject: str) -> Identity:
    """Link a sign-in identity (an OIDC provider's subject) to ``user``; the returned
    index aggregate makes a second link of the same identity fail on version."""
    user.identity_linked(provider=provider, subject=subject)
    return Identity(provider=provider, subject=subject, user_id=user.id)


class Identity(SandbarAggregate):
    """Index aggregate: one per (provider, subject), naming the user it signs in."""

    class_version = 1

    class Linked(SandbarAggregate.Created):
        class_version = 1
        provider: str
        subject: str
        user_id: UUID

    @staticmethod
    def create_id(provider: str, subject: str) -> UUID:
        return uuid5(_IDENTITY_NS, f"{provider}\x00{subject}")

    @event(Linked)
    def __init__(self, provider: str, subject: str, user_id: UUID) -> None:
        self.provider = provider
        self.subject = subject
        self.user_id = user_id
