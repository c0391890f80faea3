"""Request bodies: strict types, unknown fields refused. Values are checked by the use
cases (application.validation), so the CLI and API share one set of rules."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Body(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")


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
    role: str


class RoleChange(Body):
    role: str


class NewSandbox(Body):
    name: str
    type: str
