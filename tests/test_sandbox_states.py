"""Property tests of the aggregates alone (pure domain, no database), then the sandbox
lifecycle's dead ends, tried as a new user would: through the real server with no
container worker, and a worker whose engine is absent.

Sandbox: any sequence of commands on a cloud or local sandbox either raises
IllegalTransition and changes nothing, or moves the status along exactly one edge of
``TRANSITIONS`` with exactly one event whose ``EVENT_STATUS`` is the new status; which
commands are legal in which status is checked against an independent table written from
docs/architecture.md; the aggregate folded again from its events (and reloaded through an
in-memory eventsourcing Application, so through the transcoder) is the same.

Workspace: ``revoke_ownership`` never leaves ``owner_ids`` empty, whatever the sequence.
Membership: add / rejoin / change role / remove follow the membership rules.
"""

from __future__ import annotations

import copy
import itertools
import logging
from collections.abc import Callable, Iterator
from typing import Any
from uuid import UUID, uuid4

import pytest
from eventsourcing.application import Application
from hypothesis import given
from hypothesis import strategies as st

from domain.base import SYSTEM, acting_as
from domain.errors import AlreadyMember, DomainError, IllegalTransition, LastOwner, NotMember
from domain.roles import Role
from domain.sandboxes import EVENT_STATUS, LIVE, TRANSITIONS, Kind, Sandbox, Status
from domain.workspaces import Membership, Workspace
from infrastructure.settings import Settings
from interfaces.bootstrap import Sandbar, build
from tests.conftest import FAST_HASHING, ServerProcess, User, record, register, running
from tests.errors import assert_error
from tests.waiting import wait_until

S = Status

COMMANDS: dict[str, Callable[[Sandbox], None]] = {
    "request_pause": lambda s: s.request_pause(),
    "request_resume": lambda s: s.request_resume(),
    "request_deletion": lambda s: s.request_deletion(),
    "record_started": lambda s: s.record_started("10.0.0.7:4096"),
    "record_failed": lambda s: s.record_failed("the image is missing"),
    "record_paused": lambda s: s.record_paused(),
    "record_deleted": lambda s: s.record_deleted(),
    "record_deletion_delayed": lambda s: s.record_deletion_delayed(f"engine down {uuid4()}"),
    "record_connected": lambda s: s.record_connected(),
    "record_disconnected": lambda s: s.record_disconnected(),
}

# The documented lifecycle (docs/architecture.md), written out independently of
# domain.sandboxes: for each kind and command, the status it may be given in and the
# status it leads to.
EXPECTED: dict[tuple[Kind, str], dict[Status, Status]] = {
    (Kind.cloud, "request_pause"): {S.running: S.pausing},
    (Kind.cloud, "request_resume"): {S.paused: S.resuming, S.failed: S.resuming},
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
    EXPECTED[(_kind, "record_deletion_delayed")] = {S.deleting: S.deleting}

INITIAL = {Kind.cloud: S.creating, Kind.local: S.offline}
# Every event moves along TRANSITIONS, but for the one that stays: a deletion waiting on the
# engine says why (DeletionDelayed).
STEPS = TRANSITIONS | {(S.deleting, S.deleting)}


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
        assert (before["status"], after) in STEPS
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
        assert (a, b) in STEPS, (a, b)
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
        if name in ("record_deleted", "record_deletion_delayed"):
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
        st.tuples(st.sampled_from(["grant", "revoke", "limits"]), st.integers(0, PEOPLE - 1)),
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
    for i, (op, who) in enumerate(steps):
        if i == delete_at:
            workspace.delete()
            assert workspace.deleted
        pending = len(workspace.pending_events)
        before = (list(workspace.owner_ids), workspace.daily_requests, workspace.version)
        try:
            if op == "grant":
                workspace.grant_ownership(people[who])
            elif op == "revoke":
                workspace.revoke_ownership(people[who])
            else:
                workspace.set_limits(who, None)
        except LastOwner:
            assert op == "revoke"
            assert model == [people[who]]
            assert (list(workspace.owner_ids), workspace.daily_requests, workspace.version) == (
                before
            )
            assert len(workspace.pending_events) == pending
        except DomainError:
            assert workspace.deleted  # only a deleted workspace refuses anything else
            assert (list(workspace.owner_ids), workspace.daily_requests, workspace.version) == (
                before
            )
        else:
            assert not workspace.deleted
            if op == "grant" and people[who] not in model:
                model.append(people[who])
            elif op == "revoke" and people[who] in model:
                model.remove(people[who])
            changed = op == "limits" or list(workspace.owner_ids) != before[0]
            assert len(workspace.pending_events) == pending + int(changed)
        assert workspace.owner_ids, "a workspace was left without an owner"
        assert len(set(workspace.owner_ids)) == len(workspace.owner_ids)
        assert workspace.owner_ids == model

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


@given(kind=st.sampled_from(list(Kind)), status_path=st.data())
def test_a_users_delete_finishes_at_once_unless_the_engine_holds_something(
    kind: Kind, status_path: st.DataObject
) -> None:
    """``delete``: a local sandbox, or a cloud one whose agent never started, is deleted at
    once (nothing waits in the engine); any other waits in ``deleting``, and deleting it
    again changes nothing."""
    sandbox = Sandbox(workspace_id=uuid4(), name="s", type="opencode", kind=kind.value)
    started = False
    for _ in range(status_path.draw(st.integers(0, 12))):
        options = sorted(n for n in COMMANDS if sandbox.status in EXPECTED.get((kind, n), {}))
        options = [n for n in options if "delet" not in n]
        if not options:
            break
        name = status_path.draw(st.sampled_from(options))
        COMMANDS[name](sandbox)
        started = started or name == "record_started"
    sandbox.collect_events()
    sandbox.delete()
    names = [type(e).__name__ for e in sandbox.collect_events()]
    if kind is Kind.cloud and started:
        assert (sandbox.status, names) == (S.deleting, ["DeletionRequested"])
        sandbox.delete()
        assert (sandbox.status, sandbox.collect_events()) == (S.deleting, [])
        sandbox.record_deletion_delayed("the engine is away")
        sandbox.record_deletion_delayed("the engine is away")  # the same reason: no event
        assert [type(e).__name__ for e in sandbox.collect_events()] == ["DeletionDelayed"]
        assert sandbox.error == "the engine is away"
    else:
        assert (sandbox.status, names) == (S.deleted, ["DeletionRequested", "Deleted"])


# The lifecycle's dead ends, through the real server (no worker) and a worker whose
# engine is absent, on a database of their own (a worker converges every sandbox it sees).

NO_ENGINE = "unix:///nonexistent/sandbar-test/docker.sock"


@pytest.fixture(scope="module")
def own(
    make_database: Callable[[], str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[ServerProcess, Sandbar]]:
    env = {
        **FAST_HASHING,
        "SANDBAR_WORKER": "false",
        "SANDBAR_DATABASE_URL": make_database(),
        "SANDBAR_DATA_DIR": str(tmp_path_factory.mktemp("data")),
        "SANDBAR_SECRET_KEY": "states-key-" + uuid4().hex,
    }
    app = build(Settings.from_env(env))
    with running(env, tmp_path_factory.mktemp("states") / "server.log") as server:
        yield server, app
    app.close()


def cloud_sandbox(user: User) -> tuple[str, str]:
    wid = user.client.post("/api/workspaces", json={"name": "w"}).json()["id"]
    r = user.client.post(f"/api/workspaces/{wid}/sandboxes", json={"name": "b", "type": "opencode"})
    assert r.status_code == 201, r.text
    return wid, r.json()["id"]


def local_sandbox(user: User) -> str:
    wid = user.client.post("/api/workspaces", json={"name": "w"}).json()["id"]
    code = user.client.post(f"/api/workspaces/{wid}/agent-code").json()["code"]
    r = user.client.post("/api/agent/register", json={"code": code, "name": "laptop"})
    assert r.status_code == 201, r.text
    return r.json()["sandbox_id"]


def gone(user: User, sandbox_id: str) -> bool:
    return user.client.get(f"/api/sandboxes/{sandbox_id}").status_code == 404


def test_deleting_a_local_sandbox_reaches_deleted(own: tuple[ServerProcess, Sandbar]) -> None:
    server, _ = own
    alice = register(server.url, "alice")
    sid = local_sandbox(alice)
    r = alice.client.delete(f"/api/sandboxes/{sid}")
    assert r.status_code == 202, r.text
    assert r.json()["status"] == "deleted"  # it stayed "deleting" for ever
    assert gone(alice, sid)


def test_a_cloud_sandbox_that_never_started_is_deleted_at_once(
    own: tuple[ServerProcess, Sandbar],
) -> None:
    """No worker runs and no engine answers: a sandbox still being created, or one that
    failed to start, holds nothing worth waiting for."""
    server, app = own
    alice = register(server.url, "alice")
    _, creating = cloud_sandbox(alice)
    _, failed = cloud_sandbox(alice)
    with acting_as(SYSTEM):
        record(app, UUID(failed), lambda s: s.record_failed("the image is missing"))
    for sid in (creating, failed):
        r = alice.client.delete(f"/api/sandboxes/{sid}")
        assert (r.status_code, r.json()["status"]) == (202, "deleted"), r.text
        assert gone(alice, sid)


def test_deleting_a_sandbox_that_is_being_deleted_answers_202_again(
    own: tuple[ServerProcess, Sandbar],
) -> None:
    server, app = own
    alice = register(server.url, "alice")
    _, sid = cloud_sandbox(alice)
    with acting_as(SYSTEM):
        record(app, UUID(sid), lambda s: s.record_started("127.0.0.1:9"))
    for _ in range(2):  # the second answered 409 "a deleting sandbox cannot become deleting"
        r = alice.client.delete(f"/api/sandboxes/{sid}")
        assert (r.status_code, r.json()["status"]) == (202, "deleting"), r.text


def test_a_failed_sandbox_can_be_retried(own: tuple[ServerProcess, Sandbar]) -> None:
    server, app = own
    alice = register(server.url, "alice")
    _, sid = cloud_sandbox(alice)
    with acting_as(SYSTEM):
        record(app, UUID(sid), lambda s: s.record_failed("the agent did not answer"))
    r = alice.client.post(f"/api/sandboxes/{sid}/resume")
    assert (r.status_code, r.json()["status"], r.json().get("error")) == (202, "resuming", None)
    retried = app.log.find(UUID(sid), Sandbox)
    assert retried is not None and retried.remake  # the worker makes its container anew


def test_refusals_speak_the_users_words(own: tuple[ServerProcess, Sandbar]) -> None:
    server, app = own
    alice = register(server.url, "alice")
    _, sid = cloud_sandbox(alice)
    local = local_sandbox(alice)

    def refusal(path: str) -> str:
        message = assert_error(alice.client.post(path), 409, "illegal_transition")["message"]
        assert "cannot become" not in message, message
        return message

    assert refusal(f"/api/sandboxes/{sid}/pause") == (
        "only a running sandbox can be paused; this one is being created"
    )
    assert refusal(f"/api/sandboxes/{sid}/resume") == (
        "only a paused or failed sandbox can be resumed; this one is being created"
    )
    with acting_as(SYSTEM):
        record(app, UUID(sid), lambda s: s.record_started("127.0.0.1:9"))
    wait_until(  # (the server hears of the start a moment later)
        lambda: refusal(f"/api/sandboxes/{sid}/resume"),
        until=lambda message: message == "the sandbox is already running",
        what="a refusal saying the sandbox is running",
    )
    assert "local sandbox" in refusal(f"/api/sandboxes/{local}/pause")


def test_without_an_engine_the_reason_says_what_to_do_and_the_log_says_it_once(
    own: tuple[ServerProcess, Sandbar],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A worker whose engine is absent: a sandbox being created fails with what is wrong
    and what to do (not the engine client's "Error while fetching server API version:
    ..."); a started one being deleted waits, saying why in ``error``, with one event
    however many sweeps pass; the client's own text is logged once."""
    server, app = own
    monkeypatch.setenv("DOCKER_HOST", NO_ENGINE)
    alice = register(server.url, "alice")
    _, creating = cloud_sandbox(alice)
    _, started = cloud_sandbox(alice)
    with acting_as(SYSTEM):
        record(app, UUID(started), lambda s: s.record_started("127.0.0.1:9"))
    assert alice.client.delete(f"/api/sandboxes/{started}").status_code == 202
    worker = app.container_worker()
    with caplog.at_level(logging.INFO, logger="sandbar.worker"):
        for _ in range(3):
            worker.reconcile()  # each sweep converges every live cloud sandbox
        both = (creating, started)
        rows = wait_until(
            lambda: {s: alice.client.get(f"/api/sandboxes/{s}").json() for s in both},
            until=lambda rows: rows[creating]["status"] == "failed" and rows[started].get("error"),
            timeout=30,
            what="the one failed and the other's reason",
        )
        for _ in range(3):
            worker.converge(UUID(started))
    for row in rows.values():
        assert NO_ENGINE in row["error"] and "scripts/engine.sh" in row["error"], row
        assert "Error while fetching" not in row["error"], row
    assert rows[started]["status"] == "deleting"
    events = [type(e).__name__ for e in app.log.events.get(UUID(started))]
    assert events.count("DeletionDelayed") == 1, events
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1, warnings
    assert "Error while fetching server API version" in warnings[0]


def test_a_workspaces_sandboxes_that_hold_nothing_go_with_it(
    own: tuple[ServerProcess, Sandbar],
) -> None:
    """No worker runs: a local sandbox and one still being created are deleted with their
    workspace at once (they stayed ``deleting`` until a worker came by)."""
    server, app = own
    alice = register(server.url, "alice")
    local = local_sandbox(alice)
    wid = alice.client.get(f"/api/sandboxes/{local}").json()["workspace_id"]
    r = alice.client.post(
        f"/api/workspaces/{wid}/sandboxes", json={"name": "c", "type": "opencode"}
    )
    creating = r.json()["id"]
    assert alice.client.delete(f"/api/workspaces/{wid}").status_code == 204
    for sid in (local, creating):
        assert app.log.find(UUID(sid), Sandbox).status is S.deleted
        assert gone(alice, sid)


def test_a_local_sandbox_left_deleting_is_finished_by_the_worker(
    own: tuple[ServerProcess, Sandbar], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A local sandbox left ``deleting`` (by a version that asked the worker to finish
    it): the worker has nothing to remove and records it deleted, engine or not."""
    server, app = own
    monkeypatch.setenv("DOCKER_HOST", NO_ENGINE)
    alice = register(server.url, "alice")
    sid = local_sandbox(alice)
    with acting_as(SYSTEM):
        record(app, UUID(sid), lambda s: s.request_deletion())
    assert app.log.find(UUID(sid), Sandbox).status is S.deleting
    app.container_worker().converge(UUID(sid))
    assert app.log.find(UUID(sid), Sandbox).status is S.deleted
    assert app.reads.sandbox(UUID(sid)) is None
