"""Workspace roles and what each may do (owner > maintainer > developer > guest)."""

from __future__ import annotations

from enum import IntEnum


class Role(IntEnum):
    guest = 1
    developer = 2
    maintainer = 3
    owner = 4

    @classmethod
    def parse(cls, value: str) -> Role:
        """The role named ``value``; ``ValueError`` for any other text."""
        try:
            return cls[value]
        except KeyError:
            raise ValueError(value) from None


ROLE_NAMES = tuple(r.name for r in sorted(Role, reverse=True))

# The least role each action needs.
READ = Role.guest
OPERATE_SANDBOX = Role.developer  # create/delete/pause/resume, open in browser, agent codes
ADD_MEMBER = Role.maintainer
MANAGE_MEMBERS = Role.owner  # change roles, remove others, delete the workspace
