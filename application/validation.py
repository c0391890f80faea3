"""Checks on the values users send (the contract of docs/api.md), raising ``Invalid``."""

from __future__ import annotations

import re

from application.errors import Invalid
from domain.roles import ROLE_NAMES, Role
from domain.sandboxes import SandboxType

_USERNAME = re.compile(r"[a-z0-9_-]{3,32}")
_EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")


def name(value: str, field: str = "name") -> str:
    """1..64 printable characters once trimmed."""
    value = value.strip()
    if not 1 <= len(value) <= 64:
        raise Invalid(f"{field} must be 1 to 64 characters", field=field)
    if not value.isprintable():
        raise Invalid(f"{field} must contain only printable characters", field=field)
    return value


def username(value: str, field: str = "username") -> str:
    value = value.strip().lower()
    if not _USERNAME.fullmatch(value):
        raise Invalid(f"{field} must be 3 to 32 of a-z, 0-9, '_' and '-'", field=field)
    return value


def password(value: str) -> str:
    if not 8 <= len(value) <= 256:
        raise Invalid("password must be 8 to 256 characters", field="password")
    return value


def email(value: str | None) -> str | None:
    if value is None:
        return None
    value = value.strip()
    if len(value) > 254 or not value.isprintable() or not _EMAIL.fullmatch(value):
        raise Invalid("email must be an email address", field="email")
    return value


def role(value: str) -> Role:
    try:
        return Role.parse(value)
    except ValueError:
        raise Invalid(f"role must be one of {', '.join(ROLE_NAMES)}", field="role") from None


def sandbox_type(value: str) -> SandboxType:
    try:
        return SandboxType(value)
    except ValueError:
        kinds = ", ".join(t.value for t in SandboxType)
        raise Invalid(f"type must be one of {kinds}", field="type") from None
