"""Every list is paged (docs/api.md "Paging"): ``?limit=&after=``, the same JSON array, and
a ``Link: <...>; rel="next"`` header while more rows may follow. Walking the pages sees
every row that stays listed exactly once, in order, while rows are added and removed
between pages; a limit out of bounds or a cursor that is not the list's own is a 422."""

from __future__ import annotations

import base64
import re
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

import httpx
import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from application.paging import Page
from infrastructure.settings import Settings
from interfaces.bootstrap import build
from projections import read_model
from tests.conftest import FAST_HASHING, User, register
from tests.errors import assert_error

LINK = re.compile(r'^<(/api/[^>\s]+)>; rel="next"$')
Row = dict[str, Any]


def next_path(r: httpx.Response) -> str | None:
    """The next page's path and query, from the Link header (None: the last page)."""
    link = r.headers.get("link")
    if link is None:
        return None
    found = LINK.fullmatch(link)
    assert found, link
    return found[1]


def walk(client: httpx.Client, path: str, between: Callable[[], None] = lambda: None) -> list[Row]:
    """Every page from ``path`` on, calling ``between`` between two pages."""
    rows: list[Row] = []
    at: str | None = path
    while at is not None:
        r = client.get(at)
        assert r.status_code == 200, r.text
        rows += r.json()
        at = next_path(r)
        if at is not None:
            between()
    return rows


# The lists, each as rows a test can add and remove.


@dataclass
class Subject:
    """One list: its path, its sort key, and how to add a row and remove one."""

    path: str
    client: httpx.Client
    add: Callable[[], str]
    remove: Callable[[str], None]
    key: Callable[[Row], tuple[Any, ...]]
    id_of: Callable[[Row], str] = lambda row: row["id"]
    fixed: set[str] = field(default_factory=set)  # rows there before, never removed


def _time(value: str) -> datetime:
    return datetime.fromisoformat(value)


def _created(row: Row) -> tuple[Any, ...]:
    return (_time(row["created_at"]), uuid.UUID(row["id"]))


def _ok(r: httpx.Response, status: int) -> httpx.Response:
    assert r.status_code == status, r.text
    return r


@pytest.fixture(scope="module")
def pool(server: str) -> Iterator[list[User]]:
    """Users to add as members (and remove again)."""
    users = [register(server, "pg") for _ in range(10 + ADDED)]
    yield users
    for u in users:
        u.client.close()


def workspaces_of(owner: User) -> Subject:
    c = owner.client

    def add() -> str:
        return _ok(c.post("/api/workspaces", json={"name": "w"}), 201).json()["id"]

    def remove(wid: str) -> None:
        _ok(c.delete(f"/api/workspaces/{wid}"), 204)

    return Subject("/api/workspaces", c, add, remove, key=_created)


def sandboxes_of(owner: User) -> Subject:
    c = owner.client
    wid = _ok(c.post("/api/workspaces", json={"name": "boxes"}), 201).json()["id"]
    path = f"/api/workspaces/{wid}/sandboxes"

    def add() -> str:
        return _ok(c.post(path, json={"name": "b", "type": "opencode"}), 201).json()["id"]

    def remove(sid: str) -> None:
        _ok(c.delete(f"/api/sandboxes/{sid}"), 202)

    return Subject(path, c, add, remove, key=_created)


def members_of(owner: User, pool: list[User]) -> Subject:
    c = owner.client
    wid = _ok(c.post("/api/workspaces", json={"name": "people"}), 201).json()["id"]
    free = list(pool)

    def add() -> str:
        user = free.pop()
        body = {"username": user.username, "role": "guest"}
        _ok(c.post(f"/api/workspaces/{wid}/members", json=body), 201)
        return user.id

    def remove(user_id: str) -> None:
        _ok(c.delete(f"/api/workspaces/{wid}/members/{user_id}"), 204)
        free.insert(0, next(u for u in pool if u.id == user_id))

    return Subject(
        f"/api/workspaces/{wid}/members",
        c,
        add=add,
        remove=remove,
        key=lambda row: (_time(row["added_at"]), uuid.UUID(row["user_id"])),
        id_of=lambda row: row["user_id"],
        fixed={owner.id},
    )


LISTS = ("workspaces", "sandboxes", "members")


def subject(name: str, owner: User, pool: list[User]) -> Subject:
    if name == "workspaces":
        return workspaces_of(owner)
    if name == "sandboxes":
        return sandboxes_of(owner)
    return members_of(owner, pool)


# Walking while rows come and go.

ADDED = 10


@pytest.mark.parametrize("name", LISTS)
@given(data=st.data())
@settings(
    max_examples=6,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
def test_a_walk_sees_every_row_that_stays_once_in_order(
    name: str, server: str, pool: list[User], data: st.DataObject
) -> None:
    """Rows are added and removed between pages: each row there from the walk's start to
    its end is seen exactly once; no row is seen twice; the rows come in key order; a
    removed row is never seen after its removal."""
    owner = register(server, "walker")
    try:
        s = subject(name, owner, pool)
        kept = {s.add() for _ in range(data.draw(st.integers(0, 10), label="rows first"))}
        kept |= s.fixed
        added: set[str] = set()
        removed: set[str] = set()
        limit = data.draw(st.integers(1, 4), label="limit")

        def between() -> None:
            # (At most ADDED in all, so that the walk ends.)
            for _ in range(min(data.draw(st.integers(0, 2), label="added"), ADDED - len(added))):
                added.add(s.add())
            gone = sorted((kept | added) - removed - s.fixed)
            if gone and data.draw(st.booleans(), label="remove one"):
                victim = data.draw(st.sampled_from(gone), label="removed")
                s.remove(victim)
                removed.add(victim)

        seen = walk(s.client, f"{s.path}?limit={limit}", between)
        ids = [s.id_of(row) for row in seen]
        assert len(ids) == len(set(ids)), ids  # none twice
        assert (kept - removed) <= set(ids), (kept - removed) - set(ids)  # none lost
        assert set(ids) <= kept | added, set(ids) - kept - added  # none made up
        keys = [s.key(row) for row in seen]
        assert keys == sorted(keys) and len(set(keys)) == len(keys), keys
    finally:
        owner.client.close()


# The limit and the Link header.


def test_the_default_page_is_100_rows_and_the_last_has_no_link(new_user) -> None:
    owner = new_user("many")
    s = sandboxes_of(owner)
    made = [s.add() for _ in range(101)]
    first = owner.client.get(s.path)
    assert first.status_code == 200 and len(first.json()) == 100
    after = next_path(first)
    assert after is not None and after.startswith(f"{s.path}?limit=100&after=")
    last = owner.client.get(after)
    assert last.status_code == 200 and [b["id"] for b in last.json()] == [made[-1]]
    assert "link" not in last.headers
    exact = owner.client.get(f"{s.path}?limit=101")
    assert len(exact.json()) == 101 and "link" not in exact.headers
    assert [b["id"] for b in walk(owner.client, f"{s.path}?limit=1000")] == made


def test_a_full_page_that_is_the_last_has_no_link(new_user) -> None:
    owner = new_user("exact")
    s = workspaces_of(owner)
    made = [s.add() for _ in range(3)]
    r = owner.client.get(f"{s.path}?limit=3")
    assert [w["id"] for w in r.json()] == made and "link" not in r.headers
    r = owner.client.get(f"{s.path}?limit=2")
    assert next_path(r) is not None
    assert [w["id"] for w in owner.client.get(next_path(r) or "").json()] == made[2:]


def test_the_link_is_a_quoted_path_that_leads_on(new_user) -> None:
    """A path id in another form UUID() takes (braces) still makes a Link to follow."""
    owner = new_user("braces")
    s = sandboxes_of(owner)
    made = [s.add() for _ in range(2)]
    wid = s.path.split("/")[3]
    r = owner.client.get(f"/api/workspaces/%7B{wid}%7D/sandboxes?limit=1")
    link = next_path(r)
    assert link is not None and link.startswith(f"/api/workspaces/%7B{wid}%7D/sandboxes?")
    assert [b["id"] for b in owner.client.get(link).json()] == made[1:]


def test_limits_out_of_bounds_are_refused(new_user) -> None:
    owner = new_user("bounds")
    wid = workspaces_of(owner).add()
    for path in [*paths(wid), f"/api/workspaces/{wid}/history"]:
        for bad in ("0", "-1", "1001", "1000000000000000000000", "ten", "1.5", ""):
            assert_error(owner.client.get(path, params={"limit": bad}), 422, "invalid_field")
        for good in ("1", "1000"):
            assert owner.client.get(path, params={"limit": good}).status_code == 200


def paths(wid: str) -> list[str]:
    return [
        "/api/workspaces",
        f"/api/workspaces/{wid}/members",
        f"/api/workspaces/{wid}/sandboxes",
        f"/api/workspaces/{wid}/usage",
    ]


# Cursors.


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


BAD_CURSORS = [
    "",
    "!",
    "not a cursor",
    "a" * 97,
    "a",  # not base64 of anything
    _b64(b"garbage"),
    _b64(b"w.1.2"),
    _b64(b"w.99999999999999999999." + b"0" * 32),  # a time out of range
    _b64(b"u.0." + b"0" * 32),  # a date out of range
    _b64("w.1.\u00e9".encode()),
    _b64(b"w.1." + b"0" * 31 + b"g"),
    _b64(b"w.1." + b"0" * 32 + b"\n"),
    _b64(b"\xff\xfe"),
]


@pytest.mark.parametrize("cursor", BAD_CURSORS)
def test_a_malformed_cursor_is_refused(new_user, cursor: str) -> None:
    owner = new_user("cursor")
    wid = workspaces_of(owner).add()
    for path in paths(wid):
        r = owner.client.get(path, params={"after": cursor})
        assert_error(r, 422, "invalid_field", field="after")


def test_a_cursor_of_another_list_is_refused(new_user) -> None:
    """A cursor names its list: another list refuses it. Between two workspaces' lists of
    the same kind it is only a position: harmless."""
    owner = new_user("swap")
    one, two = sandboxes_of(owner), sandboxes_of(owner)
    first = [one.add() for _ in range(2)]
    later = [two.add() for _ in range(2)]
    link = next_path(owner.client.get(f"{one.path}?limit=1"))
    assert link is not None
    cursor = link.split("after=", 1)[1]
    workspace = one.path.rsplit("/", 1)[0]
    for path in ("/api/workspaces", f"{workspace}/members", f"{workspace}/usage"):
        assert_error(owner.client.get(path, params={"after": cursor}), 422, field="after")
    # Another workspace's sandboxes after the first box of the first: those made later.
    r = owner.client.get(two.path, params={"after": cursor})
    assert r.status_code == 200 and [b["id"] for b in r.json()] == later
    assert [b["id"] for b in walk(owner.client, f"{one.path}?limit=1")] == first


def test_usage_is_paged_and_its_link_keeps_days(new_user, database_url: str) -> None:
    """Usage rows: newest day first, then by sandbox id descending; the next page's link
    keeps ``days``; rows older than ``days`` stay out."""
    owner = new_user("usage")
    wid = workspaces_of(owner).add()
    boxes = [uuid.uuid4() for _ in range(3)]
    today = datetime.now(UTC).date()
    days = [today - timedelta(days=n) for n in (0, 1, 5, 9)]
    with psycopg.connect(database_url, autocommit=True) as conn:
        for day in days:
            for box in boxes:
                conn.execute(
                    "INSERT INTO sandbar_usage (day, workspace_id, sandbox_id, requests)"
                    " VALUES (%s, %s, %s, 1)",
                    (day, wid, box),
                )
    r = owner.client.get(f"/api/workspaces/{wid}/usage?days=7&limit=2")
    assert r.status_code == 200 and set(r.json()) == {"limits", "days"}
    link = next_path(r)
    assert link is not None and "days=7" in link and "limit=2" in link
    rows: list[Row] = []
    while True:
        rows += r.json()["days"]
        link = next_path(r)
        if link is None:
            break
        r = owner.client.get(link)
        assert r.status_code == 200, r.text
    got = [(date.fromisoformat(d["day"]), uuid.UUID(d["sandbox_id"])) for d in rows]
    assert got == sorted(((d, b) for d in days[:3] for b in boxes), reverse=True)


# The views' shape changed (version 5): a database of the shape before is made anew.


def test_views_of_the_version_before_are_rebuilt(make_database, tmp_path) -> None:
    env = {
        "SANDBAR_DATABASE_URL": make_database(),
        "SANDBAR_DATA_DIR": str(tmp_path),
        "SANDBAR_SECRET_KEY": "k" * 32,
        "SANDBAR_WORKER": "false",
        **FAST_HASHING,
    }
    app = build(Settings.from_env(env))
    try:
        user, _ = app.accounts.register("oldtimer", "correct horse battery", None, "test")
        made = [app.workspaces.create(user["id"], f"w{i}")["id"] for i in range(3)]
    finally:
        app.close()
    url = env["SANDBAR_DATABASE_URL"]
    with psycopg.connect(url, autocommit=True) as conn:  # the shape version 4 had
        conn.execute("DROP INDEX sandbar_members_workspace_list_idx")
        conn.execute("ALTER TABLE sandbar_members DROP COLUMN workspace_created_at")
        conn.execute("CREATE INDEX sandbar_members_user_idx ON sandbar_members (user_id)")
        conn.execute("UPDATE sandbar_read_model_meta SET version = 4")
    app = build(Settings.from_env(env))
    try:
        # Made anew, then filled by the catch-up (`sandbar serve` runs it in the background).
        assert app.readiness.run(threading.Event())
        found = app.workspaces.list(user["id"], Page(limit=2))
        assert [w["id"] for w in found.rows] == made[:2] and found.next is not None
        rest = app.workspaces.list(user["id"], Page(limit=2, after=found.next))
        assert [w["id"] for w in rest.rows] == made[2:] and rest.next is None
    finally:
        app.close()
    assert read_model.VERSION >= 6  # (5: the columns above; 6: the audit index; 7: the log's)


def test_rows_of_the_same_time_are_ordered_by_id(make_database, tmp_path) -> None:
    """The key is unique: rows with one created_at are told apart by id, so a page
    boundary between them loses and repeats none."""
    env = {
        "SANDBAR_DATABASE_URL": make_database(),
        "SANDBAR_DATA_DIR": str(tmp_path),
        "SANDBAR_SECRET_KEY": "k" * 32,
        "SANDBAR_WORKER": "false",
        **FAST_HASHING,
    }
    app = build(Settings.from_env(env))
    try:
        user, _ = app.accounts.register("sametime", "correct horse battery", None, "test")
        wid = app.workspaces.create(user["id"], "w")["id"]
        made = sorted(uuid.uuid4() for _ in range(7))
        with psycopg.connect(env["SANDBAR_DATABASE_URL"], autocommit=True) as conn:
            for sid in reversed(made):
                conn.execute(
                    "INSERT INTO sandbar_sandboxes (id, workspace_id, name, type, kind, status,"
                    " created_by, created_at, updated_at) VALUES (%s, %s, 'b', 'opencode',"
                    " 'cloud', 'creating', 'x', '2026-01-01T00:00:00Z', now())",
                    (sid, wid),
                )
        seen: list[uuid.UUID] = []
        page = Page(limit=2)
        while True:
            found = app.sandboxes.list(user["id"], wid, page)
            seen += [row["id"] for row in found.rows]
            if found.next is None:
                break
            page = Page(limit=2, after=found.next)
        assert seen == made
    finally:
        app.close()
