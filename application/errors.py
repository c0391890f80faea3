"""Errors a use case answers with; the interfaces map each kind to their own terms
(the HTTP API to a status code and the JSON error shape)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from domain.errors import DomainError


class AppError(Exception):
    code = "bad_request"

    def __init__(self, message: str, *, code: str | None = None, field: str | None = None):
        super().__init__(message)
        self.message = message
        self.field = field
        if code:
            self.code = code


class Unauthorized(AppError):
    code = "unauthorized"


class Forbidden(AppError):
    code = "forbidden"


class NotFound(AppError):
    code = "not_found"


class Conflict(AppError):
    code = "conflict"


class Invalid(AppError):
    code = "invalid_field"


class RateLimited(AppError):
    code = "rate_limited"

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


@contextmanager
def rule_conflicts() -> Iterator[None]:
    """Answer a domain rule violation inside the block as a Conflict with the rule's code."""
    try:
        yield
    except DomainError as e:
        raise Conflict(str(e), code=e.code) from e
