"""Fifty conflicting requests at once, over real HTTP against a real ``sandbar serve``.

Each request has its own client (its own connection) and all of them are released at
once by a barrier. Afterwards the answers, the views and the event log must agree: exactly
one winner where one is due, no 5xx ever, no event lost or invented, and the rules that
hold one at a time (a workspace keeps an owner, a deleted workspace keeps no live
sandbox) also hold under the race.
"""

from __future__ import annotations

import random
import threading
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from uuid import UUID

import httpx
import pytest
from eventsourcing.persistence import StoredEvent
from eventsourcing.utils import get_topic

from application.errors import Forbidden, NotFound
from domain.sandboxes import Sandbox, Status
from domain.users import User as UserAggregate
from domain.users import Username
from domain.workspaces import Membership, Workspace
from interfaces.bootstrap import Sandbar
from tests.conftest import PASSWORD, User

N = 50
Call = Callable[[httpx.Client], httpx.Response]


@pytest.fixture
def pool(server: str) -> Iterator[Callable[..., list[httpx.Client]]]:
    """Makes clients, each with its own connection, optionally with a user's session."""
    made: list[httpx.Client] = []

    def make(n: int, user: User | None = None) -> list[httpx.Client]:
        cookies = user.client.cookies if user is not None else None
        clients = [httpx.Client(base_url=server, cookies=cookies, timeout=120) for _ in range(n)]
        made.extend(clients)
        return clients

    yield make
    for c in made:
        c.close()


def fire(calls: list[tuple[httpx.Client, Call]]) -> list[httpx.Response]:
    """Run every call on its own thread, all released at the same moment."""
    barrier = threading.Barrier(len(calls))

    def run(item: tuple[httpx.Client, Call]) -> httpx.Response:
        client, call = item
        barrier.wait()
        return call(client)

    with ThreadPoolExecutor(max_workers=len(calls)) as executor:
        return list(executor.map(run, calls))


def no_server_errors(responses: list[httpx.Response]) -> None:
    errors = [(r.request.method, r.request.url.path, r.status_code, r.text) for r in responses]
    assert not [e for e in errors if e[2] >= 500], errors


def codes(responses: list[httpx.Response], status: int) -> Counter[str]:
    return Counter(r.json()["error"]["code"] for r in responses if r.status_code == status)


def _code(r: httpx.Response) -> str | None:
    return r.json()["error"]["code"] if r.status_code >= 400 else None


def log_events(sandbar: Sandbar, *originators: UUID) -> list[tuple[int, Any]]:
    """(notification id, domain event) of these aggregates, in log order."""
    return _select(sandbar, "originator_id = ANY(%s)", ([*originators],))


def log_events_of_type(sandbar: Sandbar, cls: type) -> list[tuple[int, Any]]:
    return _select(sandbar, "topic = %s", (get_topic(cls),))


def _select(sandbar: Sandbar, where: str, params: tuple[Any, ...]) -> list[tuple[int, Any]]:
    datastore = sandbar.log.recorder.datastore  # type: ignore[attr-defined]
    with datastore.transaction(commit=False) as curs:
        curs.execute(
            "SELECT notification_id, originator_id, originator_version, topic, state"
            f" FROM sandbar_events WHERE {where} ORDER BY notification_id",
            params,
        )
        rows = curs.fetchall()
    to_domain = sandbar.log.mapper.to_domain_event
    return [
        (
            r["notification_id"],
            to_domain(
                StoredEvent(
                    originator_id=r["originator_id"],
                    originator_version=r["originator_version"],
                    topic=r["topic"],
                    state=bytes(r["state"]),
                )
            ),
        )
        for r in rows
    ]


def members(sandbar: Sandbar, wid: str) -> dict[str, str]:
    rows = sandbar.reads.members(UUID(wid))
    assert len(rows) == len({r["user_id"] for r in rows}), rows
    return {str(r["user_id"]): r["role"] for r in rows}


def workspace(owner: User, name: str = "race") -> str:
    r = owner.client.post("/api/workspaces", json={"name": name})
    assert r.status_code == 201, r.text
    return r.json()["id"]


def add(owner: User, wid: str, member: User, role: str) -> None:
    r = owner.client.post(
        f"/api/workspaces/{wid}/members", json={"username": member.username, "role": role}
    )
    assert r.status_code == 201, r.text


class OwnerWatch:
    """Reads the members view over and over while a race runs; remembers any moment a
    live workspace had no owner."""

    def __init__(self, sandbar: Sandbar, wid: str) -> None:
        self.sandbar, self.wid = sandbar, UUID(wid)
        self.stop = threading.Event()
        self.reads = 0
        self.ownerless: list[list[dict[str, Any]]] = []
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        while not self.stop.is_set():
            rows = self.sandbar.reads.members(self.wid)
            self.reads += 1
            if not any(r["role"] == "owner" for r in rows):
                self.ownerless.append(rows)

    def __enter__(self) -> OwnerWatch:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()


# (a)
def test_fifty_registrations_of_one_username_make_one_user(
    server: str, sandbar: Sandbar, pool: Callable[..., list[httpx.Client]]
) -> None:
    name = f"race-{uuid.uuid4().hex[:8]}"
    # The same name in different cases: usernames are unique case-insensitively.
    spellings = [name, name.upper(), name.capitalize()]
    calls: list[tuple[httpx.Client, Call]] = [
        (
            c,
            lambda c, i=i: c.post(
                "/api/auth/register",
                json={"username": spellings[i % 3], "password": PASSWORD},
            ),
        )
        for i, c in enumerate(pool(N))
    ]
    responses = fire(calls)
    no_server_errors(responses)
    assert Counter(r.status_code for r in responses) == {201: 1, 409: N - 1}
    assert codes(responses, 409) == {"username_taken": N - 1}
    winner = next(r for r in responses if r.status_code == 201)
    user_id = winner.json()["id"]
    assert winner.json()["username"] == name
    # Only the winner was signed in.
    for (client, _), r in zip(calls, responses, strict=True):
        signed_in = client.get("/api/auth/me")
        if r.status_code == 201:
            assert signed_in.status_code == 200 and signed_in.json()["id"] == user_id
        else:
            assert signed_in.status_code == 401

    registered = [
        e for _, e in log_events_of_type(sandbar, UserAggregate.Registered) if e.username == name
    ]
    assert len(registered) == 1, registered
    assert str(registered[0].originator_id) == user_id
    claims = [type(e).__name__ for _, e in log_events(sandbar, Username.create_id(name))]
    assert claims == ["Claimed"]
    assert str(sandbar.reads.user_by_username(name.upper())["id"]) == user_id


# (b)
def test_fifty_role_changes_on_one_member_lose_no_event(
    server: str, sandbar: Sandbar, new_user, pool: Callable[..., list[httpx.Client]]
) -> None:
    owner, member = new_user("owner"), new_user("member")
    wid = workspace(owner)
    add(owner, wid, member, "guest")
    url = f"/api/workspaces/{wid}/members/{member.id}"
    wanted = [random.choice(["maintainer", "developer", "guest"]) for _ in range(N)]
    calls: list[tuple[httpx.Client, Call]] = [
        (c, lambda c, role=role: c.put(url, json={"role": role}))
        for c, role in zip(pool(N, owner), wanted, strict=True)
    ]
    responses = fire(calls)
    no_server_errors(responses)
    assert {r.status_code for r in responses} <= {200, 409}, Counter(
        r.status_code for r in responses
    )
    assert set(codes(responses, 409)) <= {"busy"}
    ok = Counter(role for role, r in zip(wanted, responses, strict=True) if r.status_code == 200)
    assert ok, "not one role change was accepted"

    mid = Membership.create_id(UUID(wid), UUID(member.id))
    events = [e for _, e in log_events(sandbar, mid)]
    assert type(events[0]).__name__ == "Added"
    changes = [e for e in events[1:] if type(e).__name__ == "RoleChanged"]
    assert len(changes) == len(events) - 1, [type(e).__name__ for e in events]
    assert {e.actor for e in changes} <= {owner.id}
    # Each event changed the role (an accepted request asking for the role the member
    # already had records nothing)...
    previous = "guest"
    for e in changes:
        assert e.role != previous, [c.role for c in changes]
        previous = e.role
    # ...so the events are the accepted requests that differed from the role before
    # them in log order: no more events per role than accepted requests for it, and no
    # accepted request lost (a role asked for and accepted was, at some point, the role).
    made = Counter(e.role for e in changes)
    assert all(made[role] <= ok[role] for role in made), (made, ok)
    assert all(role == "guest" or made[role] >= 1 for role in ok), (made, ok)
    assert len(changes) <= sum(ok.values())
    final = previous
    # The state everyone reads is the last event's.
    assert members(sandbar, wid)[member.id] == final
    listed = owner.client.get(f"/api/workspaces/{wid}/members").json()
    assert {m["user_id"]: m["role"] for m in listed}[member.id] == final
    aggregate = sandbar.log.find(mid, Membership)
    assert aggregate is not None and aggregate.role == final and aggregate.active
    assert member.client.get(f"/api/workspaces/{wid}").json()["role"] == final
    # Nobody became an owner on the way.
    assert sandbar.log.find(UUID(wid), Workspace).owner_ids == [UUID(owner.id)]


# (c)
def test_fifty_adds_and_removes_of_one_member_balance(
    server: str, sandbar: Sandbar, new_user, pool: Callable[..., list[httpx.Client]]
) -> None:
    owner, member = new_user("owner"), new_user("member")
    wid = workspace(owner)
    path = f"/api/workspaces/{wid}/members"
    kinds = ["add", "remove"] * (N // 2)
    random.shuffle(kinds)
    body = {"username": member.username, "role": "developer"}
    calls: list[tuple[httpx.Client, Call]] = [
        (
            c,
            (lambda c: c.post(path, json=body))
            if kind == "add"
            else (lambda c: c.delete(f"{path}/{member.id}")),
        )
        for c, kind in zip(pool(N, owner), kinds, strict=True)
    ]
    responses = fire(calls)
    no_server_errors(responses)
    outcomes = Counter((k, r.status_code) for k, r in zip(kinds, responses, strict=True))
    # Adds: 201 or 409 (already a member); removes: 204 or 404 (not a member). Either may
    # also give up cleanly with 409 "busy" after its retries, recording nothing.
    answers = Counter((k, r.status_code, _code(r)) for k, r in zip(kinds, responses, strict=True))
    assert set(answers) <= {
        ("add", 201, None),
        ("add", 409, "already_member"),
        ("add", 409, "busy"),
        ("remove", 204, None),
        ("remove", 404, "member_not_found"),
        ("remove", 409, "busy"),
    }, answers
    for kind, r in zip(kinds, responses, strict=True):
        if (kind, r.status_code) == ("add", 201):
            assert r.json()["user_id"] == member.id and r.json()["role"] == "developer"

    added, removed = outcomes[("add", 201)], outcomes[("remove", 204)]
    present = member.id in members(sandbar, wid)
    assert added - removed in (0, 1), outcomes
    assert added - removed == int(present), (outcomes, present)

    # The log: Added, then Removed and Rejoined taking turns; one event per success.
    mid = Membership.create_id(UUID(wid), UUID(member.id))
    names = [type(e).__name__ for _, e in log_events(sandbar, mid)]
    expected = ["Added"] + ["Removed", "Rejoined"] * N
    if added:
        assert names == expected[: added + removed], names
        assert names.count("Added") + names.count("Rejoined") == added
        assert names.count("Removed") == removed
    else:
        assert names == []
    aggregate = sandbar.log.find(mid, Membership)
    assert (aggregate is not None and aggregate.active) == present
    listed = {m["user_id"] for m in owner.client.get(path).json()}
    assert (member.id in listed) == present
    assert member.client.get(f"/api/workspaces/{wid}").status_code == (200 if present else 404)


# (d)
def test_two_owners_demoting_each_other_keep_one_owner(
    server: str, sandbar: Sandbar, new_user, pool: Callable[..., list[httpx.Client]]
) -> None:
    first, second = new_user("first"), new_user("second")
    wid = workspace(first)
    add(first, wid, second, "owner")
    calls: list[tuple[httpx.Client, Call]] = []
    for actor in (first, second):
        for i, c in enumerate(pool(N // 2, actor)):
            target = (first, second)[i % 2]
            url = f"/api/workspaces/{wid}/members/{target.id}"
            calls.append((c, lambda c, url=url: c.put(url, json={"role": "developer"})))
    random.shuffle(calls)
    with OwnerWatch(sandbar, wid) as watch:
        responses = fire(calls)
    no_server_errors(responses)
    assert {r.status_code for r in responses} <= {200, 403, 409}
    assert set(codes(responses, 409)) <= {"last_owner", "busy"}
    assert watch.reads > 0 and not watch.ownerless, watch.ownerless[:3]

    roles = members(sandbar, wid)
    owners = {u for u, r in roles.items() if r == "owner"}
    assert len(owners) == 1, roles
    assert set(roles) == {first.id, second.id}
    agg = sandbar.log.find(UUID(wid), Workspace)
    assert agg is not None and [str(u) for u in agg.owner_ids] == sorted(owners)
    # Exactly one demotion went through, and the other owner is left.
    revoked = [
        e for _, e in log_events(sandbar, UUID(wid)) if type(e).__name__ == "OwnershipRevoked"
    ]
    assert len(revoked) == 1
    assert {str(revoked[0].user_id)} | owners == {first.id, second.id}


def test_owners_changing_roles_at_once_stay_owned_and_authorized(
    server: str, sandbar: Sandbar, new_user, pool: Callable[..., list[httpx.Client]]
) -> None:
    """Three owners promote and demote each other and themselves, and change a fourth
    member's role, all at once (a few rounds, everyone made owner again between them).
    At every moment (watched in the view, and folded from the log) there is an owner,
    and every change in the log was made by someone who was an owner when it was
    recorded: an owner demoted while their request was in flight must not get it done
    (the design: revoking takes effect on the next request; the request is checked when
    it runs, here once before its retries)."""
    people = [new_user(f"own{i}") for i in range(3)]
    other = new_user("other")
    wid = workspace(people[0])
    for p in people[1:]:
        add(people[0], wid, p, "owner")
    add(people[0], wid, other, "developer")
    ids = {UUID(p.id) for p in [*people, other]}
    mids = {Membership.create_id(UUID(wid), u): u for u in ids}
    by_id = {p.id: p for p in people}
    rng = random.Random()
    unauthorized: list[tuple[str, str, list[str]]] = []

    for _round in range(3):
        owner = by_id[next(u for u, r in members(sandbar, wid).items() if r == "owner")]
        for p in people:  # everyone an owner again
            r = owner.client.put(f"/api/workspaces/{wid}/members/{p.id}", json={"role": "owner"})
            assert r.status_code == 200, r.text
        calls: list[tuple[httpx.Client, Call]] = []
        for actor in people:
            for i, c in enumerate(pool(N // 3, actor)):
                if i % 3 == 0:  # an owner's role: demote mostly, sometimes promote
                    target = rng.choice(people).id
                    role = rng.choice(["owner", "developer", "developer", "guest"])
                else:  # the other member's role, which only an owner may change
                    target = other.id
                    role = rng.choice(["maintainer", "developer", "guest"])
                url = f"/api/workspaces/{wid}/members/{target}"
                calls.append((c, lambda c, url=url, role=role: c.put(url, json={"role": role})))
        with OwnerWatch(sandbar, wid) as watch:
            responses = fire(calls)
        no_server_errors(responses)
        assert {r.status_code for r in responses} <= {200, 403, 409}, Counter(
            r.status_code for r in responses
        )
        assert set(codes(responses, 409)) <= {"last_owner", "busy"}
        assert watch.reads > 0 and not watch.ownerless, watch.ownerless[:3]

        # Fold the log: the owners after each event, and who made each change.
        owners: set[UUID] = set()
        roles: dict[UUID, str] = {}
        unauthorized = []
        for _, e in log_events(sandbar, UUID(wid), *mids):
            name = type(e).__name__
            if name in ("RoleChanged", "OwnershipGranted", "OwnershipRevoked") and (
                UUID(e.actor) not in owners
            ):
                unauthorized.append((name, e.actor, sorted(map(str, owners))))
            if name == "Created":
                owners.add(UUID(e.actor))
            elif name == "OwnershipGranted":
                owners.add(e.user_id)
            elif name == "OwnershipRevoked":
                owners.discard(e.user_id)
                assert owners, "the log left the workspace without an owner"
            elif name in ("Added", "RoleChanged"):
                roles[mids[e.originator_id]] = e.role
        assert owners == {u for u, r in roles.items() if r == "owner"}
        view = members(sandbar, wid)
        assert {UUID(u): r for u, r in view.items()} == roles
        assert set(sandbar.log.find(UUID(wid), Workspace).owner_ids) == owners
        if unauthorized:
            break
    assert not unauthorized, (
        f"{len(unauthorized)} change(s) recorded for someone who was no longer an owner "
        f"(event, actor, owners then): {unauthorized[:3]}"
    )


# (e)
def test_sandboxes_created_while_the_workspace_is_deleted_are_all_deleting(
    server: str, sandbar: Sandbar, new_user, pool: Callable[..., list[httpx.Client]]
) -> None:
    owner, dev = new_user("owner"), new_user("dev")
    wid = workspace(owner)
    add(owner, wid, dev, "developer")
    created = threading.Semaphore(0)
    creations: list[httpx.Response] = []
    lock = threading.Lock()

    def create(c: httpx.Client) -> httpx.Response:
        r = c.post(f"/api/workspaces/{wid}/sandboxes", json={"name": "s", "type": "opencode"})
        with lock:
            creations.append(r)
        created.release()
        return r

    def delete(c: httpx.Client) -> httpx.Response:
        for _ in range(3):  # once the first creations have landed: race the rest
            created.acquire(timeout=30)
        return c.delete(f"/api/workspaces/{wid}")

    clients = pool(N // 2, owner) + pool(N // 2 - 1, dev)
    calls: list[tuple[httpx.Client, Call]] = [(c, create) for c in clients]
    calls.insert(N // 2, (pool(1, owner)[0], delete))
    responses = fire(calls)
    no_server_errors(responses)
    deletion = responses[N // 2]
    assert deletion.status_code == 204, deletion.text
    assert len(creations) == N - 1
    # A creation either made a sandbox, found the workspace gone, or (a clean answer
    # under this much contention on one workspace) gave up retrying.
    assert {r.status_code for r in creations} <= {201, 404, 409}, Counter(
        r.status_code for r in creations
    )
    assert set(codes(creations, 404)) <= {"workspace_not_found", "sandbox_not_found"}
    assert set(codes(creations, 409)) <= {"busy"}
    answered = {r.json()["id"] for r in creations if r.status_code == 201}
    assert all(r.json()["status"] == "creating" for r in creations if r.status_code == 201)

    ws = sandbar.log.find(UUID(wid), Workspace)
    assert ws is not None and ws.deleted
    # Every sandbox ever requested for this workspace (the log says which)...
    requested = {
        str(e.originator_id)
        for _, e in log_events_of_type(sandbar, Sandbox.Requested)
        if str(e.workspace_id) == wid
    }
    assert answered <= requested
    # ...was requested before the workspace's deletion, and none is left live: none was
    # given a container (no worker runs), so each one is deleted with the workspace
    # (aggregate and view).
    (deleted_at,) = [
        n for n, e in log_events(sandbar, UUID(wid)) if isinstance(e, Workspace.Deleted)
    ]
    for sid in requested:
        made_at = log_events(sandbar, UUID(sid))[0][0]
        assert made_at < deleted_at, f"{sid} was requested after its workspace was deleted"
    for sid in requested:
        sandbox = sandbar.log.find(UUID(sid), Sandbox)
        assert sandbox is not None and sandbox.status is Status.deleted, (sid, sandbox.status)
        assert sandbar.reads.sandbox(UUID(sid)) is None
    assert sandbar.reads.sandboxes(UUID(wid)) == []
    # The workspace is gone for everyone.
    assert owner.client.get(f"/api/workspaces/{wid}").status_code == 404
    assert dev.client.get(f"/api/workspaces/{wid}/sandboxes").status_code == 404
    assert members(sandbar, wid) == {}


# Interleavings the races above hit only by chance, made deterministic: one request is
# held at a point of its run (in-process, on the same database) while another commits.


class Held:
    """Patches ``obj.name`` so that a call from the thread named ``held`` first waits
    until released; runs ``work`` on that thread."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, obj: Any, name: str) -> None:
        self.reached, self.released = threading.Event(), threading.Event()
        original = getattr(obj, name)

        def gated(*args: Any, **kwargs: Any) -> Any:
            if threading.current_thread().name == "held" and not self.reached.is_set():
                self.reached.set()
                assert self.released.wait(30)
            return original(*args, **kwargs)

        monkeypatch.setattr(obj, name, gated)
        self.result: Any = None
        self.error: BaseException | None = None

    def start(self, work: Callable[[], Any]) -> None:
        def run() -> None:
            try:
                self.result = work()
            except BaseException as e:
                self.error = e

        self.thread = threading.Thread(target=run, name="held", daemon=True)
        self.thread.start()
        assert self.reached.wait(30), "the held request never got there"

    def release(self) -> None:
        self.released.set()
        self.thread.join(30)
        assert not self.thread.is_alive()


@pytest.fixture
def accounts(sandbar: Sandbar) -> Callable[[int], list[UUID]]:
    def make(n: int) -> list[UUID]:
        return [
            sandbar.accounts.register(f"held-{uuid.uuid4().hex[:10]}", PASSWORD, None)[0]["id"]
            for _ in range(n)
        ]

    return make


def name_of(sandbar: Sandbar, user: UUID) -> str:
    return sandbar.reads.user(user)["username"]


def test_an_owner_demoted_while_their_request_runs_cannot_change_roles(
    sandbar: Sandbar, accounts: Callable[[int], list[UUID]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """B (an owner) asks to change C's role; before B's change is recorded, A demotes B.
    B is no longer an owner when the change would be recorded: it must be refused (as
    under contention, where the command is retried long after its access check)."""
    a, b, c = accounts(3)
    ws = sandbar.workspaces.create(a, "held")["id"]
    sandbar.workspaces.add_member(a, ws, name_of(sandbar, b), "owner")
    sandbar.workspaces.add_member(a, ws, name_of(sandbar, c), "developer")
    held = Held(monkeypatch, sandbar.log, "retrying")  # past its access check
    held.start(lambda: sandbar.workspaces.change_role(b, ws, c, "guest"))
    sandbar.workspaces.change_role(a, ws, b, "developer")
    held.release()

    assert isinstance(held.error, Forbidden), held.error or held.result
    assert sandbar.reads.role(ws, c) == "developer"
    mid = Membership.create_id(ws, c)
    assert [type(e).__name__ for _, e in log_events(sandbar, mid)] == ["Added"]


def test_a_role_change_decided_on_a_stale_workspace_is_run_again(
    sandbar: Sandbar, accounts: Callable[[int], list[UUID]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A makes C a guest: the command reads the workspace (C not an owner), then C's
    membership; in between, C is made an owner. The guest change gives the workspace no
    event, yet it was decided on the workspace as it was: it must run again on fresh
    state (and revoke C's ownership), not leave the members view saying guest while the
    workspace counts C among its owners (the three-owner race, made deterministic)."""
    a, c = accounts(2)
    ws = sandbar.workspaces.create(a, "held")["id"]
    sandbar.workspaces.add_member(a, ws, name_of(sandbar, c), "developer")
    held = Held(monkeypatch, sandbar.workspaces, "_membership")  # workspace already read
    held.start(lambda: sandbar.workspaces.change_role(a, ws, c, "guest"))
    sandbar.workspaces.change_role(a, ws, c, "owner")
    held.release()

    assert held.error is None, held.error
    assert sandbar.reads.role(ws, c) == "guest"
    workspace = sandbar.log.find(ws, Workspace)
    assert workspace is not None and set(workspace.owner_ids) == {a}
    assert {u: r for u, r in members(sandbar, str(ws)).items() if r == "owner"} == {str(a): "owner"}


def test_an_added_member_removed_at_once_is_still_answered_as_added(
    sandbar: Sandbar, accounts: Callable[[int], list[UUID]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A's add of B is recorded; before A's answer is read, B leaves. The add did happen
    (the log says Added): its answer must not be 404 'not a member'."""
    a, b = accounts(2)
    ws = sandbar.workspaces.create(a, "held")["id"]
    held = Held(monkeypatch, sandbar.reads, "member")  # reached after the add is saved
    held.start(lambda: sandbar.workspaces.add_member(a, ws, name_of(sandbar, b), "guest"))
    sandbar.workspaces.remove_member(b, ws, b)
    held.release()

    mid = Membership.create_id(ws, b)
    assert [type(e).__name__ for _, e in log_events(sandbar, mid)] == ["Added", "Removed"]
    assert held.error is None, f"the add was applied but answered {held.error!r}"
    assert (held.result["user_id"], held.result["role"]) == (b, "guest")


def test_a_sandbox_created_just_before_its_workspace_is_deleted_is_answered_as_created(
    sandbar: Sandbar, accounts: Callable[[int], list[UUID]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A's sandbox is recorded; before A's answer is read, the workspace is deleted (so
    the sandbox is deleted too). The creation did happen: not a 404."""
    (a,) = accounts(1)
    ws = sandbar.workspaces.create(a, "held")["id"]
    held = Held(monkeypatch, sandbar.reads, "sandbox")  # reached after the save
    held.start(lambda: sandbar.sandboxes.create(a, ws, "s", "opencode"))
    sandbar.workspaces.delete(a, ws)
    held.release()

    made = requested_in(sandbar, ws)
    assert len(made) == 1
    assert sandbar.log.find(made[0], Sandbox).status is Status.deleted  # (no container)
    assert held.error is None, f"the sandbox was created but answered {held.error!r}"
    assert held.result["id"] == made[0]


def requested_in(sandbar: Sandbar, ws: UUID) -> list[UUID]:
    """The sandboxes the log says were ever requested in ``ws``."""
    return [
        e.originator_id
        for _, e in log_events_of_type(sandbar, Sandbox.Requested)
        if e.workspace_id == ws
    ]


def test_a_creation_decided_before_its_workspace_was_deleted_is_refused(
    sandbar: Sandbar, accounts: Callable[[int], list[UUID]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A's creation has read the workspace (live) and is about to save; the workspace is
    deleted meanwhile. The creation must not commit a sandbox into the deleted workspace:
    its save conflicts, and run again it finds the workspace gone."""
    (a,) = accounts(1)
    ws = sandbar.workspaces.create(a, "held")["id"]
    held = Held(monkeypatch, sandbar.log, "save")  # the workspace read, the sandbox made
    held.start(lambda: sandbar.sandboxes.create(a, ws, "s", "opencode"))
    sandbar.workspaces.delete(a, ws)
    held.release()

    assert isinstance(held.error, NotFound), held.error or held.result
    assert held.error.code == "workspace_not_found"
    assert requested_in(sandbar, ws) == []
    assert sandbar.reads.sandboxes(ws) == []


def test_a_deletion_decided_before_a_sandbox_was_made_deletes_it_too(
    sandbar: Sandbar, accounts: Callable[[int], list[UUID]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The workspace's deletion has read its live sandboxes (one) and is about to save; a
    second sandbox is made meanwhile. The deletion must not leave that one live in a
    deleted workspace: its save conflicts, and run again it deletes both."""
    (a,) = accounts(1)
    ws = sandbar.workspaces.create(a, "held")["id"]
    first = sandbar.sandboxes.create(a, ws, "first", "opencode")["id"]
    held = Held(monkeypatch, sandbar.log, "save")  # the live sandboxes read
    held.start(lambda: sandbar.workspaces.delete(a, ws))
    second = sandbar.sandboxes.create(a, ws, "second", "opencode")["id"]
    held.release()

    assert held.error is None, held.error
    assert sandbar.log.find(ws, Workspace).deleted
    assert set(requested_in(sandbar, ws)) == {first, second}
    for sid in (first, second):
        assert sandbar.log.find(sid, Sandbox).status is Status.deleted, sid  # (no container)
    assert sandbar.reads.sandboxes(ws) == []


def test_creations_in_one_workspace_leave_its_version_alone(
    sandbar: Sandbar, accounts: Callable[[int], list[UUID]]
) -> None:
    """A sandbox's creation gives its workspace no event: a full workspace loads as fast
    as an empty one, and creations in it do not conflict with one another."""
    (a,) = accounts(1)
    ws = sandbar.workspaces.create(a, "flat")["id"]
    for i in range(3):
        sandbar.sandboxes.create(a, ws, f"s{i}", "opencode")
    assert sandbar.log.find(ws, Workspace).version == 1
    assert [type(e).__name__ for _, e in log_events(sandbar, ws)] == ["Created"]
