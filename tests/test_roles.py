"""Who may do what: every route of docs/api.md for every kind of caller, with the exact status.

Each cell gets a fresh workspace with one member of each role, so destructive cells (delete
the workspace, remove a member) cannot disturb the others."""

from __future__ import annotations

from dataclasses import dataclass

import httpx
import pytest

from tests.conftest import User
from tests.errors import assert_error

PERSONAS = ("anonymous", "stranger", "guest", "developer", "maintainer", "owner")


@dataclass
class World:
    owner: User
    maintainer: User
    developer: User
    guest: User
    stranger: User
    anonymous: httpx.Client
    workspace: str
    sandbox: str
    target: User  # a developer others act on

    def client(self, persona: str) -> httpx.Client:
        if persona == "anonymous":
            return self.anonymous
        return getattr(self, persona).client

    def me(self, persona: str) -> str:
        return getattr(self, persona).id


@pytest.fixture(scope="module")
def people(server: str):
    from tests.conftest import register

    users = {p: register(server, p) for p in PERSONAS[1:]} | {"target": register(server, "t")}
    yield users
    for u in users.values():
        u.client.close()


@pytest.fixture
def world(people, anonymous) -> World:
    owner = people["owner"]
    wid = owner.client.post("/api/workspaces", json={"name": "matrix"}).json()["id"]
    for role in ("maintainer", "developer", "guest"):
        r = owner.client.post(
            f"/api/workspaces/{wid}/members", json={"username": people[role].username, "role": role}
        )
        assert r.status_code == 201, r.text
    r = owner.client.post(
        f"/api/workspaces/{wid}/members",
        json={"username": people["target"].username, "role": "developer"},
    )
    assert r.status_code == 201
    sandbox = owner.client.post(
        f"/api/workspaces/{wid}/sandboxes", json={"name": "box", "type": "opencode"}
    ).json()["id"]
    return World(
        **{p: people[p] for p in PERSONAS[1:]},
        anonymous=anonymous,
        workspace=wid,
        sandbox=sandbox,
        target=people["target"],
    )


def _call(w: World, persona: str, action: str) -> httpx.Response:
    c, wid, sid = w.client(persona), w.workspace, w.sandbox
    calls = {
        "me": lambda: c.get("/api/auth/me"),
        "workspaces.list": lambda: c.get("/api/workspaces"),
        "workspaces.create": lambda: c.post("/api/workspaces", json={"name": "mine"}),
        "workspace.get": lambda: c.get(f"/api/workspaces/{wid}"),
        "workspace.delete": lambda: c.delete(f"/api/workspaces/{wid}"),
        "members.list": lambda: c.get(f"/api/workspaces/{wid}/members"),
        "members.add_developer": lambda: c.post(
            f"/api/workspaces/{wid}/members",
            json={"username": w.stranger.username, "role": "developer"},
        ),
        "members.add_owner": lambda: c.post(
            f"/api/workspaces/{wid}/members",
            json={"username": w.stranger.username, "role": "owner"},
        ),
        "member.change_role": lambda: c.put(
            f"/api/workspaces/{wid}/members/{w.target.id}", json={"role": "guest"}
        ),
        "member.remove_other": lambda: c.delete(f"/api/workspaces/{wid}/members/{w.target.id}"),
        "sandboxes.list": lambda: c.get(f"/api/workspaces/{wid}/sandboxes"),
        "sandboxes.create": lambda: c.post(
            f"/api/workspaces/{wid}/sandboxes", json={"name": "b", "type": "openclaw"}
        ),
        "sandbox.get": lambda: c.get(f"/api/sandboxes/{sid}"),
        "sandbox.delete": lambda: c.delete(f"/api/sandboxes/{sid}"),
        # No container engine in these tests: the sandbox waits in `creating`, so those
        # allowed to pause or resume it get the state conflict.
        "sandbox.pause": lambda: c.post(f"/api/sandboxes/{sid}/pause"),
        "sandbox.resume": lambda: c.post(f"/api/sandboxes/{sid}/resume"),
    }
    return calls[action]()


# Expected status per persona, in PERSONAS order:
#              anonymous stranger guest developer maintainer owner
EXPECTED = {
    "me":                    (401, 200, 200, 200, 200, 200),
    "workspaces.list":       (401, 200, 200, 200, 200, 200),
    "workspaces.create":     (401, 201, 201, 201, 201, 201),
    "workspace.get":         (401, 404, 200, 200, 200, 200),
    "workspace.delete":      (401, 404, 403, 403, 403, 204),
    "members.list":          (401, 404, 200, 200, 200, 200),
    "members.add_developer": (401, 404, 403, 403, 201, 201),
    "members.add_owner":     (401, 404, 403, 403, 403, 201),
    "member.change_role":    (401, 404, 403, 403, 403, 200),
    "member.remove_other":   (401, 404, 403, 403, 403, 204),
    "sandboxes.list":        (401, 404, 200, 200, 200, 200),
    "sandboxes.create":      (401, 404, 403, 201, 201, 201),
    "sandbox.get":           (401, 404, 200, 200, 200, 200),
    "sandbox.delete":        (401, 404, 403, 202, 202, 202),
    "sandbox.pause":         (401, 404, 403, 409, 409, 409),
    "sandbox.resume":        (401, 404, 403, 409, 409, 409),
}  # fmt: skip

CELLS = [(a, p, s) for a, row in EXPECTED.items() for p, s in zip(PERSONAS, row, strict=True)]


@pytest.mark.parametrize(
    ("action", "persona", "status"), CELLS, ids=[f"{a}-{p}" for a, p, _ in CELLS]
)
def test_matrix(world: World, action: str, persona: str, status: int) -> None:
    r = _call(world, persona, action)
    if status >= 400:
        assert_error(r, status)
    else:
        assert r.status_code == status, r.text


def test_a_member_may_leave(world: World) -> None:
    for persona in ("guest", "developer", "maintainer"):
        c = world.client(persona)
        r = c.delete(f"/api/workspaces/{world.workspace}/members/{world.me(persona)}")
        assert r.status_code == 204
        assert c.get(f"/api/workspaces/{world.workspace}").status_code == 404


def test_the_last_owner_stays(world: World) -> None:
    owner, wid = world.owner, world.workspace
    url = f"/api/workspaces/{wid}/members/{owner.id}"
    assert_error(owner.client.put(url, json={"role": "guest"}), 409, "last_owner")
    assert_error(owner.client.delete(url), 409, "last_owner")
    # With a second owner, either can step down, but not both.
    second = world.maintainer
    r = owner.client.put(f"/api/workspaces/{wid}/members/{second.id}", json={"role": "owner"})
    assert r.status_code == 200
    assert owner.client.put(url, json={"role": "developer"}).status_code == 200
    r = second.client.put(f"/api/workspaces/{wid}/members/{second.id}", json={"role": "guest"})
    assert_error(r, 409, "last_owner")
    roles = {
        m["username"]: m["role"] for m in second.client.get(f"/api/workspaces/{wid}/members").json()
    }
    assert roles[second.username] == "owner"
    assert roles[owner.username] == "developer"


def test_membership_rules(world: World) -> None:
    owner, wid = world.owner, world.workspace
    members = f"/api/workspaces/{wid}/members"
    again = owner.client.post(members, json={"username": world.guest.username, "role": "guest"})
    assert_error(again, 409, "already_member")
    bad = owner.client.post(members, json={"username": world.stranger.username, "role": "boss"})
    assert_error(bad, 422, "invalid_field", field="role")
    nobody = owner.client.post(members, json={"username": "no-such-user", "role": "guest"})
    assert_error(nobody, 404, "user_not_found")
    r = owner.client.delete(f"{members}/{world.stranger.id}")
    assert_error(r, 404, "member_not_found")

    # A removed member loses access on the very next request, and can be added again.
    guest = world.guest
    assert owner.client.delete(f"{members}/{guest.id}").status_code == 204
    assert_error(guest.client.get(f"/api/workspaces/{wid}"), 404, "workspace_not_found")
    assert_error(guest.client.get(f"/api/sandboxes/{world.sandbox}"), 404)
    back = owner.client.post(members, json={"username": guest.username, "role": "developer"})
    assert back.status_code == 201
    assert back.json()["role"] == "developer"
    assert guest.client.get(f"/api/workspaces/{wid}").json()["role"] == "developer"
