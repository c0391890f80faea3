"""Fifty conflicting requests at once over real HTTP: exactly one winner where one is due,
no 5xx, the invariants hold and no event is lost."""

from __future__ import annotations

import random
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from domain.sandboxes import Sandbox
from domain.workspaces import Membership
from interfaces.bootstrap import Sandbar
from tests.conftest import PASSWORD, User

N = 50


def fire(requests: list) -> list[httpx.Response]:
    with ThreadPoolExecutor(max_workers=N) as pool:
        return list(pool.map(lambda f: f(), requests))


@pytest.fixture
def team(new_user):
    owner, member = new_user("owner"), new_user("member")
    wid = owner.client.post("/api/workspaces", json={"name": "race"}).json()["id"]
    return owner, member, wid


def clients(server: str, user: User, n: int) -> list[httpx.Client]:
    """n clients with the user's session (each its own connection)."""
    return [
        httpx.Client(base_url=server, cookies=user.client.cookies, timeout=60) for _ in range(n)
    ]


def membership_events(sandbar: Sandbar, wid: str, user_id: str) -> list[str]:
    mid = Membership.create_id(uuid.UUID(wid), uuid.UUID(user_id))
    return [type(e).__name__ for e in sandbar.log.events.get(mid)]


def test_same_username_once(server: str, sandbar: Sandbar) -> None:
    name = f"race-{uuid.uuid4().hex[:8]}"
    cs = [httpx.Client(base_url=server, timeout=60) for _ in range(N)]
    body = {"username": name, "password": PASSWORD}
    responses = fire([lambda c=c: c.post("/api/auth/register", json=body) for c in cs])
    assert Counter(r.status_code for r in responses) == {201: 1, 409: N - 1}
    assert all(
        r.json()["error"]["code"] == "username_taken" for r in responses if r.status_code == 409
    )
    registered = [
        n
        for n in sandbar.log.recorder.select_notifications(start=1, limit=1_000_000)
        if n.topic.endswith("User.Registered") and f'"username":"{name}"'.encode() in n.state
    ]
    assert len(registered) == 1


def test_role_changes_on_one_member(server: str, sandbar: Sandbar, team) -> None:
    owner, member, wid = team
    owner.client.post(
        f"/api/workspaces/{wid}/members", json={"username": member.username, "role": "guest"}
    )
    roles = [random.choice(["maintainer", "developer", "guest"]) for _ in range(N)]
    url = f"/api/workspaces/{wid}/members/{member.id}"
    responses = fire(
        [
            lambda c=c, r=r: c.put(url, json={"role": r})
            for c, r in zip(clients(server, owner, N), roles, strict=True)
        ]
    )
    assert {r.status_code for r in responses} <= {200, 409}
    assert sum(r.status_code == 200 for r in responses) >= 1
    events = list(
        sandbar.log.events.get(Membership.create_id(uuid.UUID(wid), uuid.UUID(member.id)))
    )
    # Every accepted change that changed something is one event; the last one wins.
    changes = [e for e in events if type(e).__name__ == "RoleChanged"]
    final = {
        m["user_id"]: m["role"] for m in owner.client.get(f"/api/workspaces/{wid}/members").json()
    }[member.id]
    expected_last = changes[-1].role if changes else "guest"
    assert final == expected_last
    previous, distinct = "guest", 0
    for e in changes:
        assert e.role != previous
        previous, distinct = e.role, distinct + 1
    assert distinct <= sum(r.status_code == 200 for r in responses)


def test_add_and_remove_the_same_member(server: str, sandbar: Sandbar, team) -> None:
    owner, member, wid = team
    members = f"/api/workspaces/{wid}/members"
    calls = []
    for i, c in enumerate(clients(server, owner, N)):
        if i % 2:
            calls.append(
                (
                    "add",
                    lambda c=c: c.post(
                        members, json={"username": member.username, "role": "developer"}
                    ),
                )
            )
        else:
            calls.append(("remove", lambda c=c: c.delete(f"{members}/{member.id}")))
    random.shuffle(calls)
    responses = fire([f for _, f in calls])
    outcomes = Counter((kind, r.status_code) for (kind, _), r in zip(calls, responses, strict=True))
    assert set(outcomes) <= {("add", 201), ("add", 409), ("remove", 204), ("remove", 404)}
    added, removed = outcomes[("add", 201)], outcomes[("remove", 204)]
    present = member.id in [m["user_id"] for m in owner.client.get(members).json()]
    assert added - removed == int(present)
    # No event lost: one event per accepted add or remove.
    events = membership_events(sandbar, wid, member.id)
    assert len(events) == added + removed
    assert events[0] == "Added"
    assert all(e in {"Rejoined", "Removed"} for e in events[1:])


def test_owners_demoting_each_other_keep_one(server: str, team, new_user) -> None:
    owner, _, wid = team
    second = new_user("second")
    owner.client.post(
        f"/api/workspaces/{wid}/members", json={"username": second.username, "role": "owner"}
    )
    calls = []
    for actor in (owner, second):
        for target in (owner, second):
            for client in clients(server, actor, N // 4):
                url = f"/api/workspaces/{wid}/members/{target.id}"
                calls.append(lambda cl=client, u=url: cl.put(u, json={"role": "developer"}))
    random.shuffle(calls)
    responses = fire(calls)
    assert {r.status_code for r in responses} <= {200, 403, 404, 409}
    roles = [m["role"] for m in owner.client.get(f"/api/workspaces/{wid}/members").json()] or [
        m["role"] for m in second.client.get(f"/api/workspaces/{wid}/members").json()
    ]
    assert roles.count("owner") == 1


def test_sandboxes_made_while_the_workspace_is_deleted(server: str, sandbar: Sandbar, team) -> None:
    owner, _, wid = team
    calls = [
        lambda c=c: c.post(
            f"/api/workspaces/{wid}/sandboxes", json={"name": "s", "type": "opencode"}
        )
        for c in clients(server, owner, N - 1)
    ]
    calls.insert(N // 2, lambda: owner.client.delete(f"/api/workspaces/{wid}"))
    responses = fire(calls)
    assert {r.status_code for r in responses} <= {201, 204, 404}
    created = [r.json()["id"] for r in responses if r.status_code == 201]
    for sid in created:
        assert sandbar.log.find(uuid.UUID(sid), Sandbox).status == "deleting", sid
