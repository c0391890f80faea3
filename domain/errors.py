"""Rule violations raised by aggregates; the application maps them to answers."""


class DomainError(Exception):
    """A command that the aggregate's current state does not allow."""

    code = "conflict"


class IllegalTransition(DomainError):
    code = "illegal_transition"


class LastOwner(DomainError):
    code = "last_owner"


class AlreadyMember(DomainError):
    code = "already_member"


class NotMember(DomainError):
    code = "not_member"
