"""Property tests of the aggregates alone (pure domain, no database).

Sandbox: any sequence of commands on a cloud or local sandbox either raises
IllegalTransition and changes nothing, or moves the status along exactly one edge of
``TRANSITIONS`` with exactly one event whose ``EVENT_STATUS`` is the new status; which
commands are legal in which status is checked against an independent table written from
the design brief; the aggregate folded again from its events (and reloaded through an
in-memory eventsourcing Application, so through the transcoder) is the same.

Workspace: ``revoke_ownership`` never leaves ``owner_ids`` empty, whatever the sequence.
Membership: add / rejoin / change role / remove follow the membership rules.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Callable
from typing import Any
from uuid import UUID, uuid4

from eventsourcing.application import Application
from hypothesis import given
from hypothesis import strategies as st

from domain.base import SYSTEM, acting_as
from domain.errors import AlreadyMember, DomainError, IllegalTransition, LastOwner, NotMember
from domain.roles import Role
from domain.sandboxes import EVENT_STATUS, LIVE, TRANSITIONS, Kind, Sandbox, Status
from domain.workspaces import Membership, Workspace

S = Status

COMMANDS: dict[str, Callable[[Sandbox], None]] = {
    "request_pause": lambda s: s.request_pause(),
    "request_resume": lambda s: s.request_resume(),
    "request_deletion": lambda s: s.request_deletion(),
    "record_started": lambda s: s.record_started("10.0.0.7:4096"),
    "record_failed": lambda s: s.record_failed("the image is missing"),
    "record_paused": lambda s: s.record_paused(),
    "record_deleted": lambda s: s.record_deleted(),
    "record_connected": lambda s: s.record_connected(),
    "record_disconnected": lambda s: s.record_disconnected(),
}

# The brief's lifecycle, written out independently of domain.sandboxes: for each kind and
# command, the status it may be given in and the status it leads to.
EXPECTED: dict[tuple[Kind, str], dict[Status, Status]] = {
    (Kind.cloud, "request_pause"): {S.running: S.pausing},
    (Kind.cloud, "request_resume"): {S.paused: S.resuming},
    (Kind.cloud, "record_started"): {S.creating: S.running, S.resuming: S.running},
    (Kind.cloud, "record_failed"): {S.creating: S.failed, S.resuming: S.failed},
    (Kind.cloud, "record_paused"): {S.pausing: S.paused},
    (Kind.local, "record_connected"): {S.offline: S.running},
    (Kind.local, "record_disconnected"): {S.running: S.offline},
}
for _kind in Kind:
    _live = {
        Kind.cloud: [S.creating, S.running, S.pausing, S.paused, S.resuming, S.failed],
        Kind.local: [S.offline, S.running],
    }[_kind]
    EXPECTED[(_kind, "request_deletion")] = dict.fromkeys(_live, S.deleting)
    EXPECTED[(_kind, "record_deleted")] = {S.deleting: S.deleted}

INITIAL = {Kind.cloud: S.creating, Kind.local: S.offline}


def initial_status(kind: Kind) -> Status:
    return INITIAL[kind]


def state(sandbox: Sandbox) -> dict[str, Any]:
    """Everything an observer can see of the aggregate, plus its pending events."""
    return {
        **{k: copy.copy(v) for k, v in vars(sandbox).items() if not k.startswith("_")},
        "version": sandbox.version,
        "pending": list(sandbox.pending_events),
    }


def event_status(event: Any, kind: Kind) -> Status:
    name = type(event).__name__
    if name == "Requested" and kind is Kind.local:
        return S.offline
    return EVENT_STATUS[name]


@given(
    kind=st.sampled_from(list(Kind)),
    commands=st.lists(st.sampled_from(sorted(COMMANDS)), max_size=50),
    actors=st.lists(st.sampled_from(["user", SYSTEM]), min_size=50, max_size=50),
)
def test_sandbox_commands_follow_the_lifecycle(
    kind: Kind, commands: list[str], actors: list[str]
) -> None:
    creator = uuid4()
    with acting_as(creator):
        sandbox = Sandbox(workspace_id=uuid4(), name="s", type="opencode", kind=kind.value)
    assert sandbox.status is initial_status(kind)
    assert [type(e).__name__ for e in sandbox.pending_events] == ["Requested"]
    assert event_status(sandbox.pending_events[0], kind) is sandbox.status
    expected_actors = [str(creator)]

    for name, who in zip(commands, actors, strict=False):
        before = state(sandbox)
        legal = EXPECTED.get((kind, name), {})
        actor = str(uuid4()) if who == "user" else SYSTEM
        try:
            with acting_as(actor):
                COMMANDS[name](sandbox)
        except IllegalTransition:
            assert before["status"] not in legal, (kind, name, before["status"])
            assert state(sandbox) == before  # nothing changed, no event pending
            continue
        assert before["status"] in legal, (kind, name, before["status"])
        after = sandbox.status
        assert after is legal[before["status"]]
        assert (before["status"], after) in TRANSITIONS
        new = sandbox.pending_events[len(before["pending"]) :]
        assert len(new) == 1, new
        assert event_status(new[0], kind) is after
        assert new[0].actor == actor
        assert sandbox.version == before["version"] + 1
        expected_actors.append(actor)
        if name in ("request_pause", "request_resume"):
            assert kind is Kind.cloud  # pause and resume are cloud-only

    # Pause / resume of a local sandbox is always illegal, whatever its status.
    if kind is Kind.local:
        for name in ("request_pause", "request_resume", "record_started", "record_paused"):
            probe = copy.deepcopy(sandbox)
            before = state(probe)
            try:
                COMMANDS[name](probe)
            except IllegalTransition:
                assert state(probe) == before
            else:
                raise AssertionError(f"{name} was accepted on a local sandbox")

    events = sandbox.collect_events()
    assert [e.actor for e in events] == expected_actors
    assert [e.originator_version for e in events] == list(range(1, len(events) + 1))

    # The statuses the events name form a path along TRANSITIONS.
    statuses = [event_status(e, kind) for e in events]
    assert statuses[0] is initial_status(kind)
    for a, b in itertools.pairwise(statuses):
        assert (a, b) in TRANSITIONS, (a, b)
    assert statuses[-1] is sandbox.status

    # Folding the events again gives the same aggregate.
    folded: Sandbox | None = None
    for e in events:
        folded = e.mutate(folded)
    assert isinstance(folded, Sandbox)
    assert vars(folded) == vars(sandbox)

    # And so does a round trip through an application's mapper (the transcoder).
    app: Application[UUID] = Application()
    app.events.put(events)
    stored = list(app.events.get(sandbox.id))
    assert [type(e).__name__ for e in stored] == [type(e).__name__ for e in events]
    assert [e.actor for e in stored] == expected_actors  # who did it survives the store
    reloaded = app.repository.get(sandbox.id)
    assert isinstance(reloaded, Sandbox)
    assert (reloaded.status, reloaded.kind, reloaded.address, reloaded.error) == (
        sandbox.status,
        sandbox.kind,
        sandbox.address,
        sandbox.error,
    )
    assert reloaded.version == sandbox.version


@given(kind=st.sampled_from(list(Kind)), status_path=st.data())
def test_every_live_status_can_be_deleted(kind: Kind, status_path: st.DataObject) -> None:
    """From any reachable live status, deletion is accepted; from deleting or deleted, not."""
    sandbox = Sandbox(workspace_id=uuid4(), name="s", type="openclaw", kind=kind.value)
    for _ in range(status_path.draw(st.integers(0, 12))):
        options = sorted(n for n in COMMANDS if sandbox.status in EXPECTED.get((kind, n), {}))
        options = [n for n in options if n != "request_deletion" and n != "record_deleted"]
        if not options:
            break
        COMMANDS[status_path.draw(st.sampled_from(options))](sandbox)
    assert sandbox.status in LIVE
    sandbox.request_deletion()
    assert sandbox.status is S.deleting
    for name in COMMANDS:
        if name == "record_deleted":
            continue
        probe = copy.deepcopy(sandbox)
        try:
            COMMANDS[name](probe)
        except IllegalTransition:
            continue
        raise AssertionError(f"{name} was accepted on a deleting sandbox")
    sandbox.record_deleted()
    for name in COMMANDS:
        probe = copy.deepcopy(sandbox)
        try:
            COMMANDS[name](probe)
        except IllegalTransition:
            continue
        raise AssertionError(f"{name} was accepted on a deleted sandbox")


# Workspace: the owner rule.

PEOPLE = 5


@given(
    st.lists(
        st.tuples(st.sampled_from(["grant", "revoke", "attach"]), st.integers(0, PEOPLE - 1)),
        max_size=60,
    ),
    st.integers(0, 60),
)
def test_revoking_ownership_never_leaves_no_owner(
    steps: list[tuple[str, int]], delete_at: int
) -> None:
    people = [uuid4() for _ in range(PEOPLE)]
    workspace = Workspace(name="w", owner_id=people[0])
    model: list[UUID] = [people[0]]
    sandboxes: list[UUID] = []
    for i, (op, who) in enumerate(steps):
        if i == delete_at:
            workspace.delete()
            assert workspace.deleted
        pending = len(workspace.pending_events)
        before = (list(workspace.owner_ids), list(workspace.sandbox_ids), workspace.version)
        try:
            if op == "grant":
                workspace.grant_ownership(people[who])
            elif op == "revoke":
                workspace.revoke_ownership(people[who])
            else:
                sid = uuid4()
                workspace.attach_sandbox(sid)
        except LastOwner:
            assert op == "revoke"
            assert model == [people[who]]
            assert (list(workspace.owner_ids), list(workspace.sandbox_ids), workspace.version) == (
                before
            )
            assert len(workspace.pending_events) == pending
        except DomainError:
            assert workspace.deleted  # only a deleted workspace refuses anything else
            assert (list(workspace.owner_ids), list(workspace.sandbox_ids), workspace.version) == (
                before
            )
        else:
            assert not workspace.deleted
            if op == "grant" and people[who] not in model:
                model.append(people[who])
            elif op == "revoke" and people[who] in model:
                model.remove(people[who])
            elif op == "attach":
                sandboxes.append(sid)
            changed = (list(workspace.owner_ids), list(workspace.sandbox_ids)) != before[:2]
            assert len(workspace.pending_events) == pending + int(changed)
        assert workspace.owner_ids, "a workspace was left without an owner"
        assert len(set(workspace.owner_ids)) == len(workspace.owner_ids)
        assert workspace.owner_ids == model
        assert workspace.sandbox_ids == sandboxes

    folded: Workspace | None = None
    for e in workspace.collect_events():
        folded = e.mutate(folded)
    assert isinstance(folded, Workspace)
    assert vars(folded) == vars(workspace)
    assert folded.owner_ids


# Membership: one per (workspace, user), with an active flag.


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["rejoin", "change_role", "remove"]), st.sampled_from(list(Role))
        ),
        max_size=40,
    )
)
def test_membership_follows_its_rules(steps: list[tuple[str, Role]]) -> None:
    ws, user = uuid4(), uuid4()
    membership = Membership(workspace_id=ws, user_id=user, role=Role.guest.name)
    assert membership.id == Membership.create_id(ws, user)
    active, role = True, Role.guest
    names = ["Added"]
    for op, new_role in steps:
        before = (membership.active, membership.role, membership.version)
        try:
            getattr(membership, op)(*([] if op == "remove" else [new_role]))
        except AlreadyMember:
            assert op == "rejoin" and active
            assert (membership.active, membership.role, membership.version) == before
            continue
        except NotMember:
            assert op in ("change_role", "remove") and not active
            assert (membership.active, membership.role, membership.version) == before
            continue
        if op == "rejoin":
            assert not active
            active, role = True, new_role
            names.append("Rejoined")
        elif op == "remove":
            assert active
            active = False
            names.append("Removed")
        else:
            assert active
            if new_role is not role:
                names.append("RoleChanged")
            role = new_role
        assert (membership.active, membership.level) == (active, role)
    events = membership.collect_events()
    assert [type(e).__name__ for e in events] == names
    folded: Membership | None = None
    for e in events:
        folded = e.mutate(folded)
    assert isinstance(folded, Membership)
    assert vars(folded) == vars(membership)
