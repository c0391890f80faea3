"""Request bodies and path ids: strict types, unknown fields refused. Values are checked by
the use cases (application.validation), so the CLI and API share one set of rules; the
sets a value must come from (roles, sandbox types) and the id format are declared here
for /openapi.json only, so a wrong one gets the use case's answer."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Path
from pydantic import BaseModel, ConfigDict, Field, field_validator

from domain.roles import ROLE_NAMES
from domain.sandboxes import SandboxType

_UUID = {"format": "uuid"}
WorkspaceId = Annotated[str, Path(json_schema_extra=_UUID)]
SandboxId = Annotated[str, Path(json_schema_extra=_UUID)]
MemberId = Annotated[str, Path(json_schema_extra=_UUID, description="the member's user id")]


def _one_of(values: list[str], **field: Any) -> Any:
    enum: dict[str, Any] = {"enum": values}
    return Field(json_schema_extra=enum, **field)


_ROLE = list(ROLE_NAMES)
_TYPE = [t.value for t in SandboxType]


class Body(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")

    @field_validator("username", "password", "email", "name", check_fields=False)
    @classmethod
    def _plain_text(cls, value: Any) -> Any:
        """No free-text field may hold NUL or an unpaired surrogate (JSON allows both;
        neither can be stored or hashed). Fields with a fixed set of values (role, type)
        are refused with that set by the use cases."""
        if isinstance(value, str):
            if "\x00" in value:
                raise ValueError("must not contain NUL characters")
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise ValueError("must be valid Unicode text") from None
        return value


class Register(Body):
    username: str
    password: str
    email: str | None = None


class Login(Body):
    username: str
    password: str


class NewWorkspace(Body):
    name: str


class NewMember(Body):
    username: str
    role: str = _one_of(_ROLE)


class RoleChange(Body):
    role: str = _one_of(_ROLE)


class NewSandbox(Body):
    name: str
    type: str = _one_of(_TYPE)


class Limits(Body):
    """Both fields are required (null: the installation's default), so a PUT says all."""

    daily_requests: int | None = Field(ge=0, le=2**53)
    daily_tokens: int | None = Field(ge=0, le=2**53)


class AgentRegistration(Body):
    code: str
    name: str
    type: str = _one_of(_TYPE, default="opencode")
