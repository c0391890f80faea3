"""The workspace list: each row carries the caller's role and the workspace's member and
sandbox counts, the same as the workspace's own answer, as members and sandboxes come
and go (a removed member and a sandbox being deleted are not counted)."""

from __future__ import annotations

from collections.abc import Callable

from tests.conftest import User


def _listed(user: User) -> dict[str, dict]:
    r = user.client.get("/api/workspaces")
    assert r.status_code == 200, r.text
    return {w["id"]: w for w in r.json()}


def test_list_rows_carry_the_role_and_the_counts(new_user: Callable[..., User]) -> None:
    owner, dev = new_user("owner"), new_user("dev")
    team = owner.client.post("/api/workspaces", json={"name": "Team"}).json()
    solo = owner.client.post("/api/workspaces", json={"name": "Solo"}).json()
    r = owner.client.post(
        f"/api/workspaces/{team['id']}/members",
        json={"username": dev.username, "role": "developer"},
    )
    assert r.status_code == 201, r.text
    boxes = [
        owner.client.post(
            f"/api/workspaces/{team['id']}/sandboxes", json={"name": n, "type": "opencode"}
        ).json()
        for n in ("a", "b", "c")
    ]

    def agree(user: User, expected: dict[str, tuple[str, int, int]]) -> None:
        rows = _listed(user)
        mine = {wid: rows[wid] for wid in expected}
        assert {
            wid: (w["role"], w["member_count"], w["sandbox_count"]) for wid, w in mine.items()
        } == expected
        for wid, row in mine.items():  # the same as the workspace's own answer
            assert user.client.get(f"/api/workspaces/{wid}").json() == row

    agree(owner, {team["id"]: ("owner", 2, 3), solo["id"]: ("owner", 1, 0)})
    agree(dev, {team["id"]: ("developer", 2, 3)})
    assert solo["id"] not in _listed(dev)

    # A sandbox being deleted no longer counts; a removed member neither.
    assert owner.client.delete(f"/api/sandboxes/{boxes[0]['id']}").status_code in (202, 204)
    agree(dev, {team["id"]: ("developer", 2, 2)})
    assert owner.client.delete(f"/api/workspaces/{team['id']}/members/{dev.id}").status_code == 204
    agree(owner, {team["id"]: ("owner", 1, 2), solo["id"]: ("owner", 1, 0)})
    assert team["id"] not in _listed(dev)
