"""Random command sequences through the application layer, on real PostgreSQL.

A hypothesis state machine drives the use cases of an in-process Sandbar (workspaces,
members, sandboxes) as a few pre-registered users, plus the outcomes a container worker
or a tunnel reports (``record_*`` on the Sandbox aggregate as ``system``). A model says,
for every command, whether it must succeed or which error it must answer with (the kind
of AppError and its code), and which events it must leave in the log.

After every step: every live workspace has an owner (in the aggregate and in the members
view), nobody is a member twice, the views agree with the model and the aggregates, and
the sandboxes touched only moved along TRANSITIONS. At the end of every example: each
aggregate's events in the log are exactly the ones the model expects (names and actors),
and the views equal a full replay of the log.
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    initialize,
    invariant,
    multiple,
    rule,
    run_state_machine_as_test,
)

from application.errors import AppError, Conflict, Forbidden, Invalid, NotFound
from domain.base import SYSTEM, acting_as
from domain.errors import IllegalTransition
from domain.roles import Role
from domain.sandboxes import EVENT_STATUS, TRANSITIONS, Kind, Sandbox, Status
from domain.workspaces import Membership, Workspace
from infrastructure.settings import Settings
from interfaces.bootstrap import Sandbar, build
from tests.conftest import env_for, examples

S = Status
ROLES = [r.name for r in Role]
USERS = 4
UNKNOWN = "nobody-at-all"  # a username nobody has

# What each user command and system outcome does to a sandbox: {kind: {from: (to, event)}}.
USER_COMMANDS: dict[str, dict[Kind, dict[Status, tuple[Status, str]]]] = {
    "pause": {Kind.cloud: {S.running: (S.pausing, "PauseRequested")}, Kind.local: {}},
    "resume": {
        Kind.cloud: {s: (S.resuming, "ResumeRequested") for s in (S.paused, S.failed)},
        Kind.local: {},
    },
    # A user's delete is finished at once when nothing waits in the engine (a local
    # sandbox, a cloud one never started): see command_sandbox. This is its first step,
    # and all of a workspace's deletion.
    "delete": {
        k: {s: (S.deleting, "DeletionRequested") for s in live}
        for k, live in {
            Kind.cloud: [S.creating, S.running, S.pausing, S.paused, S.resuming, S.failed],
            Kind.local: [S.offline, S.running],
        }.items()
    },
}
OUTCOMES: dict[str, tuple[Callable[[Sandbox], None], dict[Kind, dict[Status, Any]]]] = {
    "started": (
        lambda s: s.record_started("10.1.2.3:4096"),
        {
            Kind.cloud: {S.creating: (S.running, "Started"), S.resuming: (S.running, "Resumed")},
            Kind.local: {},
        },
    ),
    "failed": (
        lambda s: s.record_failed("the agent did not answer"),
        {
            Kind.cloud: {S.creating: (S.failed, "Failed"), S.resuming: (S.failed, "Failed")},
            Kind.local: {},
        },
    ),
    "paused": (
        lambda s: s.record_paused(),
        {Kind.cloud: {S.pausing: (S.paused, "Paused")}, Kind.local: {}},
    ),
    "deleted": (
        lambda s: s.record_deleted(),
        {k: {S.deleting: (S.deleted, "Deleted")} for k in Kind},
    ),
    "connected": (
        lambda s: s.record_connected(),
        {Kind.cloud: {}, Kind.local: {S.offline: (S.running, "Connected")}},
    ),
    "disconnected": (
        lambda s: s.record_disconnected(),
        {Kind.cloud: {}, Kind.local: {S.running: (S.offline, "Disconnected")}},
    ),
}


@dataclass
class SandboxModel:
    workspace: UUID
    kind: Kind
    status: Status
    events: list[tuple[str, str]] = field(default_factory=list)  # (event name, actor)
    started: bool = False  # its agent once started: its deletion waits on the engine


@pytest.fixture(scope="module")
def sandbar(
    make_database: Callable[[], str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Sandbar]:
    """A Sandbar on a database of its own: every example ends with a full replay of the
    log, which should hold this test's history, not all that the run wrote before it."""
    app = build(Settings.from_env(env_for(make_database(), tmp_path_factory.mktemp("st"))))
    yield app
    app.close()


@pytest.fixture(scope="module")
def users(sandbar: Sandbar) -> dict[UUID, str]:
    out: dict[UUID, str] = {}
    for i in range(USERS):
        name = f"st{i}-{uuid.uuid4().hex[:10]}"
        row, _ = sandbar.accounts.register(name, "a long enough password", None)
        out[row["id"]] = name
    return out


def test_random_command_sequences_keep_every_invariant(
    sandbar: Sandbar, users: dict[UUID, str]
) -> None:
    app = sandbar
    people = sorted(users)
    actors = st.sampled_from(people)
    # Who does something in a workspace: anyone, or (more often, so that commands get past
    # the access check) one of its members, or someone who is not one (to be added).
    Pick = tuple[str, int]
    picks = st.tuples(st.sampled_from(["member", "member", "any", "outsider"]), st.integers(0, 11))

    class Machine(RuleBasedStateMachine):
        workspaces = Bundle("workspaces")
        sandboxes = Bundle("sandboxes")

        def __init__(self) -> None:
            super().__init__()
            self.roles: dict[UUID, dict[UUID, Role]] = {}  # live workspace -> user -> role
            self.deleted: set[UUID] = set()
            self.sandbox: dict[UUID, SandboxModel] = {}
            self.in_workspace: dict[UUID, list[UUID]] = {}
            self.ws_events: dict[UUID, list[tuple[str, str]]] = {}
            self.member_events: dict[UUID, list[tuple[str, str]]] = {}  # by membership id
            self.dirty: set[UUID] = set()  # sandboxes to check the history of

        # The model's answers.
        def role(self, ws: UUID, user: UUID) -> Role | None:
            return self.roles.get(ws, {}).get(user)

        def owners(self, ws: UUID) -> set[UUID]:
            return {u for u, r in self.roles[ws].items() if r is Role.owner}

        def attempt(self, call: Callable[[], Any], expected: AppError | None) -> Any:
            """Run ``call``; it must fail exactly as ``expected`` says, or succeed."""
            try:
                result = call()
            except AppError as e:
                assert expected is not None, f"unexpected {type(e).__name__}: {e.code} {e}"
                assert type(e) is type(expected), (type(e).__name__, e.code, str(e))
                assert e.code == expected.code, (e.code, expected.code, str(e))
                return None
            assert expected is None, f"expected {type(expected).__name__} {expected.code}"
            return result

        def require(self, ws: UUID, actor: UUID, least: Role) -> AppError | None:
            mine = self.role(ws, actor)
            if mine is None:
                return NotFound("", code="workspace_not_found")
            if mine < least:
                return Forbidden("")
            return None

        def who(self, ws: UUID, pick: Pick) -> UUID:
            how, i = pick
            members = sorted(self.roles.get(ws, {}))
            pool = {
                "member": members,
                "outsider": [p for p in people if p not in members],
            }.get(how) or people
            return pool[i % len(pool)]

        def member_event(self, ws: UUID, user: UUID, name: str, actor: UUID) -> None:
            self.member_events.setdefault(Membership.create_id(ws, user), []).append(
                (name, str(actor))
            )

        # Rules.
        @initialize(
            target=workspaces,
            roles=st.lists(st.sampled_from(ROLES), min_size=USERS - 1, max_size=USERS - 1),
        )
        def a_team(self, roles: list[str]) -> UUID:
            """Start with a workspace where every user has a role, so that the rules get
            past the access checks often."""
            founder = people[0]
            ws = self.create_workspace(founder)
            for user, role in zip(people[1:], roles, strict=True):
                row = app.workspaces.add_member(founder, ws, users[user], role)
                assert row["role"] == role
                self.member_event(ws, user, "Added", founder)
                if role == "owner":
                    self.ws_events[ws].append(("OwnershipGranted", str(founder)))
                self.roles[ws][user] = Role[role]
            return ws

        @rule(target=workspaces, actor=actors)
        def create_workspace(self, actor: UUID) -> UUID:
            row = app.workspaces.create(actor, f"ws {len(self.roles)}")
            ws = row["id"]
            self.roles[ws] = {actor: Role.owner}
            self.in_workspace[ws] = []
            self.ws_events[ws] = [("Created", str(actor))]
            self.member_event(ws, actor, "Added", actor)
            view = app.reads.workspace(ws)
            assert view is not None
            assert {k: row[k] for k in view} == view
            assert row["role"] == "owner"
            return ws

        @rule(
            ws=workspaces,
            actor=picks,
            user=st.tuples(
                st.sampled_from(["outsider", "outsider", "any", "unknown"]), st.integers(0, 11)
            ),
            role=st.sampled_from([*ROLES, "admin"]),
        )
        def add_member(self, ws: UUID, actor: Pick, user: Pick, role: str) -> None:
            actor = self.who(ws, actor)
            user = None if user[0] == "unknown" else self.who(ws, user)
            expected = self.require(ws, actor, Role.maintainer)
            mine = self.role(ws, actor)
            if expected is None and role not in ROLES:
                expected = Invalid("", field="role")
            elif expected is None and role == "owner" and mine is not Role.owner:
                expected = Forbidden("")
            elif expected is None and user is None:
                expected = NotFound("", code="user_not_found")
            elif expected is None and self.role(ws, user) is not None:
                expected = Conflict("", code="already_member")
            name = UNKNOWN if user is None else users[user]
            row = self.attempt(lambda: app.workspaces.add_member(actor, ws, name, role), expected)
            if expected is not None:
                return
            assert user is not None
            assert (row["user_id"], row["role"]) == (user, role)
            mid = Membership.create_id(ws, user)
            self.member_event(ws, user, "Rejoined" if mid in self.member_events else "Added", actor)
            if role == "owner":
                self.ws_events[ws].append(("OwnershipGranted", str(actor)))
            self.roles[ws][user] = Role[role]

        @rule(ws=workspaces, actor=picks, user=picks, role=st.sampled_from([*ROLES, "admin"]))
        def change_role(self, ws: UUID, actor: Pick, user: Pick, role: str) -> None:
            actor, user = self.who(ws, actor), self.who(ws, user)
            expected = self.require(ws, actor, Role.owner)
            current = self.role(ws, user)
            if expected is None and role not in ROLES:
                expected = Invalid("", field="role")
            elif expected is None and current is None:
                expected = NotFound("", code="member_not_found")
            elif expected is None and self.owners(ws) == {user} and role != "owner":
                expected = Conflict("", code="last_owner")
            row = self.attempt(lambda: app.workspaces.change_role(actor, ws, user, role), expected)
            if expected is not None:
                return
            assert current is not None
            assert (row["user_id"], row["role"]) == (user, role)
            if current is not Role[role]:
                self.member_event(ws, user, "RoleChanged", actor)
            if current is Role.owner and role != "owner":
                self.ws_events[ws].append(("OwnershipRevoked", str(actor)))
            if current is not Role.owner and role == "owner":
                self.ws_events[ws].append(("OwnershipGranted", str(actor)))
            self.roles[ws][user] = Role[role]

        @rule(ws=workspaces, actor=picks, user=picks, self_=st.booleans())
        def remove_member(self, ws: UUID, actor: Pick, user: Pick, self_: bool) -> None:
            actor = self.who(ws, actor)
            # Leaving (which any member may do), or removing someone.
            user = actor if self_ else self.who(ws, user)
            expected = self.require(ws, actor, Role.guest if user == actor else Role.owner)
            current = self.role(ws, user)
            if expected is None and current is None:
                expected = NotFound("", code="member_not_found")
            elif expected is None and self.owners(ws) == {user}:
                expected = Conflict("", code="last_owner")
            self.attempt(lambda: app.workspaces.remove_member(actor, ws, user), expected)
            if expected is not None:
                return
            self.member_event(ws, user, "Removed", actor)
            if current is Role.owner:
                self.ws_events[ws].append(("OwnershipRevoked", str(actor)))
            del self.roles[ws][user]

        @rule(ws=workspaces, actor=picks, go=st.integers(0, 4))
        def delete_workspace(self, ws: UUID, actor: Pick, go: int) -> None:
            if go != 3:  # less often than the rest, so that workspaces live a while
                return
            actor = self.who(ws, actor)
            expected = self.require(ws, actor, Role.owner)
            self.attempt(lambda: app.workspaces.delete(actor, ws), expected)
            if expected is not None:
                return
            del self.roles[ws]
            self.deleted.add(ws)
            self.ws_events[ws].append(("Deleted", str(actor)))
            for sid in self.in_workspace[ws]:
                model = self.sandbox[sid]
                live = model.status not in (S.deleting, S.deleted)
                self.change_sandbox(sid, USER_COMMANDS["delete"], actor)
                if live and not (model.kind is Kind.cloud and model.started):
                    self.change_sandbox(sid, OUTCOMES["deleted"][1], actor)  # (at once)

        @rule(
            target=sandboxes,
            ws=workspaces,
            actor=picks,
            kind=st.sampled_from(["opencode", "openclaw"]),
        )
        def create_sandbox(self, ws: UUID, actor: Pick, kind: str) -> Any:
            actor = self.who(ws, actor)
            expected = self.require(ws, actor, Role.developer)
            row = self.attempt(
                lambda: app.sandboxes.create(actor, ws, f"sb-{kind}", kind), expected
            )
            if expected is not None:
                return multiple()
            sid = row["id"]
            assert (row["workspace_id"], row["status"], row["kind"], row["type"]) == (
                ws,
                "creating",
                "cloud",
                kind,
            )
            assert row["created_by"] == str(actor)
            self.add_sandbox(sid, ws, Kind.cloud, actor)
            return sid

        @rule(target=sandboxes, ws=workspaces, actor=picks)
        def register_local_sandbox(self, ws: UUID, actor: Pick) -> Any:
            """What registering a local agent saves: a local Sandbox, with the workspace
            saved unchanged (no use case for it yet, so straight through the aggregates)."""
            actor = self.who(ws, actor)
            if self.require(ws, actor, Role.developer) is not None:
                return multiple()
            workspace = app.log.find(ws, Workspace)
            assert workspace is not None and not workspace.deleted
            with acting_as(actor):
                sandbox = Sandbox(workspace_id=ws, name="laptop", type="opencode", kind="local")
            app.log.save(sandbox, workspace)
            self.add_sandbox(sandbox.id, ws, Kind.local, actor)
            row = app.sandboxes.get(actor, sandbox.id)
            assert (row["status"], row["kind"]) == ("offline", "local")
            return sandbox.id

        def add_sandbox(self, sid: UUID, ws: UUID, kind: Kind, actor: UUID) -> None:
            status = S.creating if kind is Kind.cloud else S.offline
            self.sandbox[sid] = SandboxModel(ws, kind, status, [("Requested", str(actor))])
            self.in_workspace[ws].append(sid)  # (the workspace gains no event)
            self.dirty.add(sid)

        def change_sandbox(
            self, sid: UUID, table: dict[Kind, dict[Status, Any]], actor: Any
        ) -> None:
            model = self.sandbox[sid]
            move = table[model.kind].get(model.status)
            if move is not None:
                model.status, name = move
                model.events.append((name, str(actor)))
                self.dirty.add(sid)

        @rule(sandbox=sandboxes, actor=picks, command=st.sampled_from(sorted(USER_COMMANDS)))
        def command_sandbox(self, sandbox: UUID, actor: Pick, command: str) -> None:
            model = self.sandbox[sandbox]
            actor = self.who(model.workspace, actor)
            if model.status is S.deleted:  # gone from the views
                expected: AppError | None = NotFound("", code="sandbox_not_found")
            else:
                expected = self.require(model.workspace, actor, Role.developer)
                if isinstance(expected, NotFound):
                    expected = NotFound("", code="sandbox_not_found")
            again = command == "delete" and model.status is S.deleting  # 202, no change
            legal = again or model.status in USER_COMMANDS[command][model.kind]
            if expected is None and not legal:
                expected = Conflict("", code="illegal_transition")
            call = getattr(app.sandboxes, command)
            row = self.attempt(lambda: call(actor, sandbox), expected)
            if expected is not None:
                return
            self.change_sandbox(sandbox, USER_COMMANDS[command], actor)
            if command == "delete" and not (model.kind is Kind.cloud and model.started):
                self.change_sandbox(sandbox, OUTCOMES["deleted"][1], actor)
            assert row["status"] == model.status

        @rule(
            sandbox=sandboxes,
            outcome=st.sampled_from(sorted(OUTCOMES)),
            any_outcome=st.booleans(),
        )
        def system_outcome(self, sandbox: UUID, outcome: str, any_outcome: bool) -> None:
            """How the container worker (or the tunnel) reports: as ``system``."""
            model = self.sandbox[sandbox]
            if not any_outcome:  # mostly an outcome that applies now, as a worker would report
                fits = sorted(o for o, (_, t) in OUTCOMES.items() if model.status in t[model.kind])
                if fits:
                    outcome = fits[sorted(OUTCOMES).index(outcome) % len(fits)]
            record, table = OUTCOMES[outcome]
            aggregate = app.log.find(sandbox, Sandbox)
            assert aggregate is not None
            assert aggregate.status is model.status
            legal = model.status in table[model.kind]
            try:
                with acting_as(SYSTEM):
                    record(aggregate)
            except IllegalTransition:
                assert not legal, (outcome, model.kind, model.status)
                return
            assert legal, (outcome, model.kind, model.status)
            app.log.save(aggregate)
            self.change_sandbox(sandbox, table, SYSTEM)
            model.started = model.started or outcome == "started"

        # Invariants.
        @invariant()
        def workspaces_keep_an_owner_and_views_agree(self) -> None:
            for ws, roles in self.roles.items():
                members = app.reads.members(ws)
                ids = [m["user_id"] for m in members]
                assert len(ids) == len(set(ids)), f"a member twice in {ws}: {ids}"
                assert {m["user_id"]: Role[m["role"]] for m in members} == roles
                assert any(m["role"] == "owner" for m in members), f"{ws} has no owner (view)"
                workspace = app.log.find(ws, Workspace)
                assert workspace is not None and not workspace.deleted
                assert workspace.owner_ids, f"{ws} has no owner (aggregate)"
                assert len(set(workspace.owner_ids)) == len(workspace.owner_ids)
                assert set(workspace.owner_ids) == self.owners(ws)
                row = app.reads.workspace(ws)
                assert row is not None
                counted = [
                    s
                    for s in self.in_workspace[ws]
                    if self.sandbox[s].status not in (S.deleting, S.deleted)
                ]
                assert sorted(app.reads.live_sandbox_ids(ws)) == sorted(counted)
                assert (row["member_count"], row["sandbox_count"]) == (len(roles), len(counted))
            for ws in self.deleted:
                assert app.reads.workspace(ws) is None
                assert app.reads.members(ws) == []
                for sid in self.in_workspace[ws]:
                    assert self.sandbox[sid].status in (S.deleting, S.deleted)
            for user in people:
                # (Workspaces of earlier examples are still there: only this run's count.)
                listed = [w for w in app.reads.workspaces_of(user) if w["id"] in self.ws_events]
                mine = {w["id"]: w["role"] for w in listed}
                expected = {ws: r[user].name for ws, r in self.roles.items() if user in r}
                assert mine == expected
                for w in listed:  # a list row's counts are the workspace's own
                    own = app.reads.workspace(w["id"])
                    assert own is not None
                    assert (w["member_count"], w["sandbox_count"]) == (
                        own["member_count"],
                        own["sandbox_count"],
                    )

        @invariant()
        def sandboxes_agree_and_move_along_transitions(self) -> None:
            for sid, model in self.sandbox.items():
                row = app.reads.sandbox(sid)
                if model.status is S.deleted:
                    assert row is None
                else:
                    assert row is not None and row["status"] == model.status, (row, model)
            for sid in self.dirty:
                self.check_history(sid)
            self.dirty.clear()

        def check_history(self, sid: UUID) -> None:
            model = self.sandbox[sid]
            events = list(app.log.events.get(sid))
            assert [(type(e).__name__, e.actor) for e in events] == model.events
            first = S.offline if model.kind is Kind.local else S.creating
            statuses = [first] + [EVENT_STATUS[type(e).__name__] for e in events[1:]]
            for a, b in itertools.pairwise(statuses):
                assert (a, b) in TRANSITIONS, (sid, a, b)
            assert statuses[-1] is model.status
            aggregate = app.log.find(sid, Sandbox)
            assert aggregate is not None and aggregate.status is model.status

        def teardown(self) -> None:
            # The log holds exactly the events the model expects, each with its actor.
            for ws, expected in self.ws_events.items():
                got = [(type(e).__name__, e.actor) for e in app.log.events.get(ws)]
                assert got == expected, ws
            for mid, expected in self.member_events.items():
                got = [(type(e).__name__, e.actor) for e in app.log.events.get(mid)]
                assert got == expected, mid
            for sid in self.sandbox:
                self.check_history(sid)
            # The views equal a full replay of the log.
            before = app.view.snapshot()
            report = app.view.rebuild(app.log.mapper.to_domain_event)
            assert report.identical, report.differing_tables
            assert app.view.snapshot() == before

    run_state_machine_as_test(
        Machine,
        settings=settings(
            max_examples=examples(25),
            stateful_step_count=25,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
