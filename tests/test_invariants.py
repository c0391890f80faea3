"""Random command sequences through the application layer, on real PostgreSQL, against a
model of who is a member with which role. After every step: the views agree with the
model and with the aggregates, every workspace keeps an owner, nobody is a member twice,
every sandbox only moved along legal transitions; at the end of each run, the views equal
a full replay of the log."""

from __future__ import annotations

import contextlib
import itertools
from uuid import UUID

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, invariant, rule

from application.errors import AppError, Conflict, Forbidden, NotFound
from domain.base import SYSTEM, acting_as
from domain.errors import IllegalTransition
from domain.roles import Role
from domain.sandboxes import EVENT_STATUS, TRANSITIONS, Sandbox, Status
from domain.workspaces import Workspace
from interfaces.bootstrap import Sandbar

ROLES = [r.name for r in Role]
OUTCOMES = {
    "started": lambda s: s.record_started("127.0.0.1:9"),
    "failed": lambda s: s.record_failed("engine said no"),
    "paused": lambda s: s.record_paused(),
    "deleted": lambda s: s.record_deleted(),
}


@pytest.fixture(scope="module")
def users(sandbar: Sandbar) -> list[UUID]:
    out = []
    for i in range(4):
        user, _ = sandbar.accounts.register(
            f"inv-{i}-{UUID(int=i).hex[:6]}{id(out) % 9999}", "a long password", None
        )
        out.append(user["id"])
    return out


def test_invariants_hold_for_any_command_sequence(sandbar: Sandbar, users: list[UUID]) -> None:
    app = sandbar
    names = {u: app.reads.user(u)["username"] for u in users}

    class Machine(RuleBasedStateMachine):
        workspaces = Bundle("workspaces")
        sandboxes = Bundle("sandboxes")

        def __init__(self) -> None:
            super().__init__()
            self.roles: dict[UUID, dict[UUID, Role]] = {}  # live workspace -> user -> role

        def role(self, ws: UUID, user: UUID) -> Role | None:
            return self.roles.get(ws, {}).get(user)

        def expect(self, ws: UUID, actor: UUID, least: Role, call, *, on_ok) -> None:
            """Run ``call``; the model says whether it may succeed and how it may fail."""
            mine = self.role(ws, actor)
            try:
                result = call()
            except NotFound:
                return
            except Forbidden:
                assert mine is not None and mine < least
                return
            except Conflict:
                assert mine is not None and mine >= least
                return
            assert mine is not None and mine >= least
            on_ok(result)

        @rule(target=workspaces, actor=st.sampled_from(users))
        def create_workspace(self, actor: UUID) -> UUID:
            ws = app.workspaces.create(actor, "w")["id"]
            self.roles[ws] = {actor: Role.owner}
            return ws

        @rule(
            ws=workspaces,
            actor=st.sampled_from(users),
            user=st.sampled_from(users),
            role=st.sampled_from(ROLES),
        )
        def add_member(self, ws: UUID, actor: UUID, user: UUID, role: str) -> None:
            least = Role.owner if role == "owner" else Role.maintainer

            def ok(_: object) -> None:
                assert self.role(ws, user) is None
                self.roles[ws][user] = Role[role]

            self.expect(
                ws,
                actor,
                least,
                lambda: app.workspaces.add_member(actor, ws, names[user], role),
                on_ok=ok,
            )

        @rule(
            ws=workspaces,
            actor=st.sampled_from(users),
            user=st.sampled_from(users),
            role=st.sampled_from(ROLES),
        )
        def change_role(self, ws: UUID, actor: UUID, user: UUID, role: str) -> None:
            def ok(_: object) -> None:
                self.roles[ws][user] = Role[role]

            self.expect(
                ws,
                actor,
                Role.owner,
                lambda: app.workspaces.change_role(actor, ws, user, role),
                on_ok=ok,
            )

        @rule(ws=workspaces, actor=st.sampled_from(users), user=st.sampled_from(users))
        def remove_member(self, ws: UUID, actor: UUID, user: UUID) -> None:
            least = Role.guest if actor == user else Role.owner

            def ok(_: object) -> None:
                del self.roles[ws][user]

            self.expect(
                ws, actor, least, lambda: app.workspaces.remove_member(actor, ws, user), on_ok=ok
            )

        @rule(ws=workspaces, actor=st.sampled_from(users))
        def delete_workspace(self, ws: UUID, actor: UUID) -> None:
            def ok(_: object) -> None:
                del self.roles[ws]

            self.expect(ws, actor, Role.owner, lambda: app.workspaces.delete(actor, ws), on_ok=ok)

        @rule(
            target=sandboxes,
            ws=workspaces,
            actor=st.sampled_from(users),
            kind=st.sampled_from(["opencode", "openclaw"]),
        )
        def create_sandbox(self, ws: UUID, actor: UUID, kind: str) -> UUID | None:
            created: list[UUID] = []
            self.expect(
                ws,
                actor,
                Role.developer,
                lambda: app.sandboxes.create(actor, ws, "s", kind),
                on_ok=lambda row: created.append(row["id"]),
            )
            return created[0] if created else None

        @rule(
            sandbox=sandboxes,
            actor=st.sampled_from(users),
            command=st.sampled_from(["pause", "resume", "delete"]),
        )
        def command_sandbox(self, sandbox: UUID | None, actor: UUID, command: str) -> None:
            if sandbox is None:
                return
            with contextlib.suppress(AppError):
                getattr(app.sandboxes, command)(actor, sandbox)

        @rule(sandbox=sandboxes, outcome=st.sampled_from(sorted(OUTCOMES)))
        def system_outcome(self, sandbox: UUID | None, outcome: str) -> None:
            if sandbox is None:
                return
            aggregate = app.log.find(sandbox, Sandbox)
            try:
                with acting_as(SYSTEM):
                    OUTCOMES[outcome](aggregate)
            except IllegalTransition:
                return
            app.log.save(aggregate)

        @invariant()
        def views_agree(self) -> None:
            for ws, roles in self.roles.items():
                members = app.reads.members(ws)
                seen = [m["user_id"] for m in members]
                assert len(seen) == len(set(seen))
                assert {m["user_id"]: Role[m["role"]] for m in members} == roles
                owners = {u for u, r in roles.items() if r is Role.owner}
                assert owners
                workspace = app.log.find(ws, Workspace)
                assert set(workspace.owner_ids) == owners
                for row in app.reads.sandboxes(ws):
                    aggregate = app.log.find(row["id"], Sandbox)
                    assert row["status"] == aggregate.status
                    self.check_history(row["id"])

        def check_history(self, sandbox_id: UUID) -> None:
            events = list(app.log.events.get(sandbox_id))
            statuses = [Status.creating] + [EVENT_STATUS[type(e).__name__] for e in events[1:]]
            for a, b in itertools.pairwise(statuses):
                assert a == b or (a, b) in TRANSITIONS

        def teardown(self) -> None:
            report = app.view.rebuild(app.log.mapper.to_domain_event)
            assert report.identical, report.differing_tables

    Machine.TestCase.settings = settings(
        max_examples=15,
        stateful_step_count=25,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )
    Machine.TestCase().runTest()
