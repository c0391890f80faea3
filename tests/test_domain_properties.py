"""Property tests of the aggregates alone (no database): the sandbox state machine and
the workspace's owner rule hold for any sequence of commands."""

from __future__ import annotations

import itertools
from uuid import uuid4

from hypothesis import given
from hypothesis import strategies as st

from domain.errors import IllegalTransition, LastOwner
from domain.sandboxes import EVENT_STATUS, TRANSITIONS, Kind, Sandbox, Status
from domain.workspaces import Workspace

COMMANDS = {
    "pause": lambda s: s.request_pause(),
    "resume": lambda s: s.request_resume(),
    "delete": lambda s: s.request_deletion(),
    "started": lambda s: s.record_started("127.0.0.1:1234"),
    "relocated": lambda s: s.record_relocated("127.0.0.1:4321"),
    "failed": lambda s: s.record_failed("boom"),
    "paused": lambda s: s.record_paused(),
    "deleted": lambda s: s.record_deleted(),
    "connected": lambda s: s.record_connected(),
    "disconnected": lambda s: s.record_disconnected(),
}


@given(
    kind=st.sampled_from(list(Kind)),
    commands=st.lists(st.sampled_from(sorted(COMMANDS)), max_size=40),
)
def test_sandbox_moves_only_along_legal_transitions(kind: Kind, commands: list[str]) -> None:
    sandbox = Sandbox(workspace_id=uuid4(), name="s", type="opencode", kind=kind.value)
    assert sandbox.status is (Status.offline if kind is Kind.local else Status.creating)
    for name in commands:
        before = sandbox.status
        pending = len(sandbox.pending_events)
        try:
            COMMANDS[name](sandbox)
        except IllegalTransition:
            assert sandbox.status is before
            assert len(sandbox.pending_events) == pending
            continue
        if sandbox.status is not before:
            assert (before, sandbox.status) in TRANSITIONS
        if kind is Kind.local:
            assert name not in {"pause", "resume", "started", "paused", "relocated"}
        for event in sandbox.pending_events[pending:]:
            assert EVENT_STATUS[type(event).__name__] is sandbox.status

    # The aggregate folded again from its events is the same.
    events = sandbox.collect_events()
    replayed = None
    for event in events:
        replayed = event.mutate(replayed)
    assert replayed is not None
    assert (replayed.status, replayed.address, replayed.error) == (
        sandbox.status,
        sandbox.address,
        sandbox.error,
    )
    statuses = [Status.offline if kind is Kind.local else Status.creating]
    for event in events[1:]:
        statuses.append(EVENT_STATUS[type(event).__name__])
    for a, b in itertools.pairwise(statuses):
        assert a == b or (a, b) in TRANSITIONS


@given(st.lists(st.tuples(st.booleans(), st.integers(0, 4)), max_size=40))
def test_a_workspace_never_loses_its_last_owner(steps: list[tuple[bool, int]]) -> None:
    people = [uuid4() for _ in range(5)]
    workspace = Workspace(name="w", owner_id=people[0])
    for grant, who in steps:
        try:
            if grant:
                workspace.grant_ownership(people[who])
            else:
                workspace.revoke_ownership(people[who])
        except LastOwner:
            assert workspace.owner_ids == [people[who]]
        assert len(workspace.owner_ids) >= 1
        assert len(set(workspace.owner_ids)) == len(workspace.owner_ids)
