"""``sandbar audit``: the real CLI, run as a user would, over history made through the API.

The history (one workspace W, made by alice over the HTTP API, with times taken between
the steps; the server and the tests share a clock):

    t0   ... W created by alice; bob added as developer; bob makes his own workspace W2
    t1   ... bob changed to guest; carol added as maintainer
    t2   ... sandbox s1 requested
    t3   ... s1 deleted by alice (it never started: nothing waits in the engine, so the
             deletion is finished at once, both events hers)
    t_end
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from uuid import UUID, uuid4

import pytest

from domain.base import acting_as
from domain.workspaces import Membership, Workspace
from infrastructure.settings import Settings
from interfaces.bootstrap import build
from interfaces.http.deps import SESSION_COOKIE
from tests.conftest import PASSWORD, User, env_for, register, run_sandbar, running

# Slack for the CLI printing times to the millisecond.
MS = timedelta(milliseconds=1)


def now() -> datetime:
    """A moment strictly between the step before and the step after."""
    time.sleep(0.005)
    moment = datetime.now(UTC)
    time.sleep(0.005)
    return moment


def stamp(t: datetime) -> str:
    return t.isoformat().replace("+00:00", "Z")


@dataclass
class History:
    alice: User
    bob: User
    carol: User
    wid: str
    w2: str
    sid: str
    t0: datetime
    t1: datetime
    t2: datetime
    t3: datetime
    t_end: datetime


# A database of the module's own: the CLI reads the whole log every time it runs, which
# should hold this module's history, not all that the run wrote before it.
@pytest.fixture(scope="module")
def server_env(make_database, tmp_path_factory):
    return env_for(make_database(), tmp_path_factory.mktemp("audit-data"))


@pytest.fixture(scope="module")
def sandbar(server_env):
    app = build(Settings.from_env(server_env))
    yield app
    app.close()


@pytest.fixture(scope="module")
def server(server_env, tmp_path_factory):
    with running(server_env, tmp_path_factory.mktemp("audit") / "server.log") as proc:
        yield proc.url


@pytest.fixture(scope="module")
def history(server, sandbar):
    alice, bob, carol = (
        register(server, "alice"),
        register(server, "bob"),
        register(server, "carol"),
    )
    t0 = now()
    r = alice.client.post("/api/workspaces", json={"name": "Audit team"})
    assert r.status_code == 201, r.text
    wid = r.json()["id"]
    r = alice.client.post(
        f"/api/workspaces/{wid}/members", json={"username": bob.username, "role": "developer"}
    )
    assert r.status_code == 201, r.text
    r = bob.client.post("/api/workspaces", json={"name": "Bob's own"})
    assert r.status_code == 201, r.text
    w2 = r.json()["id"]
    t1 = now()
    r = alice.client.put(f"/api/workspaces/{wid}/members/{bob.id}", json={"role": "guest"})
    assert r.status_code == 200, r.text
    r = alice.client.post(
        f"/api/workspaces/{wid}/members", json={"username": carol.username, "role": "maintainer"}
    )
    assert r.status_code == 201, r.text
    t2 = now()
    r = alice.client.post(
        f"/api/workspaces/{wid}/sandboxes", json={"name": "s1", "type": "opencode"}
    )
    assert r.status_code == 201, r.text
    sid = r.json()["id"]
    t3 = now()
    r = alice.client.delete(f"/api/sandboxes/{sid}")
    assert (r.status_code, r.json()["status"]) == (202, "deleted"), r.text
    assert alice.client.get(f"/api/workspaces/{wid}/sandboxes").json() == []
    t_end = now()
    yield History(alice, bob, carol, wid, w2, sid, t0, t1, t2, t3, t_end)
    for u in (alice, bob, carol):
        u.client.close()


# Reading the CLI's output.


def ok(*args: str, env: dict[str, str]) -> str:
    r = run_sandbar(*args, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Traceback" not in r.stderr
    return r.stdout


def parse_table(lines: list[str]) -> list[dict[str, str]]:
    """Rows of an aligned table (header, a rule of dashes, rows) as dicts."""
    header, rule, *rows = lines
    starts = [m.start() for m in re.finditer(r"-+", rule)]
    assert starts, rule
    bounds = [*zip(starts, [*starts[1:], None], strict=True)]
    names = [header[a:b].strip() for a, b in bounds]
    return [{n: row[a:b].strip() for n, (a, b) in zip(names, bounds, strict=True)} for row in rows]


def log_table(out: str) -> list[dict[str, str]]:
    return parse_table([line for line in out.splitlines() if line.strip()])


def log_json(out: str) -> list[dict]:
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def events_of(records: list[dict]) -> list[str]:
    return [r["event"] for r in records]


def section(out: str, title: str) -> list[dict[str, str]]:
    """The table under ``title (N)`` in ``audit replay``'s output."""
    lines = out.splitlines()
    for i, line in enumerate(lines):
        m = re.fullmatch(rf"{title} \((\d+)\)", line.strip())
        if m:
            body = []
            for row in lines[i + 1 :]:
                if not row.strip():
                    break
                body.append(row)
            rows = parse_table(body)
            assert len(rows) == int(m.group(1)), out
            return rows
    raise AssertionError(f"no {title!r} section in:\n{out}")


# What W's log should hold, in order.
W_EVENTS = [
    "Workspace.Created",
    "Membership.Added",  # alice, owner
    "Membership.Added",  # bob, developer
    "Membership.RoleChanged",  # bob -> guest
    "Membership.Added",  # carol, maintainer
    "Sandbox.Requested",
    "Sandbox.DeletionRequested",
    "Sandbox.Deleted",
]


# audit log


def test_log_table_lists_the_events_in_log_order(history, server_env):
    h = history
    rows = log_table(ok("audit", "log", env=server_env))
    assert [k for k in rows[0]] == ["#", "TIME", "ACTOR", "EVENT", "AGGREGATE", "DETAILS"]
    positions = [int(r["#"]) for r in rows]
    assert positions == sorted(positions) and len(set(positions)) == len(positions)

    # The registrations: by the new user, about the new user.
    for user in (h.alice, h.bob, h.carol):
        (reg,) = [
            r for r in rows if r["EVENT"] == "User.Registered" and r["ACTOR"] == user.username
        ]
        assert user.id.startswith(reg["AGGREGATE"])
        assert f"username={user.username}" in reg["DETAILS"]

    # W's events: those on W itself, its memberships and its sandbox.
    ours = {h.wid, h.sid} | {
        str(Membership.create_id(UUID(h.wid), UUID(u.id))) for u in (h.alice, h.bob, h.carol)
    }
    w_rows = [r for r in rows if any(a.startswith(r["AGGREGATE"]) for a in ours)]
    assert [r["EVENT"] for r in w_rows] == W_EVENTS
    times = [datetime.fromisoformat(r["TIME"]) for r in w_rows]
    assert times == sorted(times)

    created, owner, bob_added, bob_changed, carol_added, requested, asked, deleted = w_rows
    assert h.wid.startswith(created["AGGREGATE"])
    assert "name=Audit team" in created["DETAILS"]
    assert f"owner={h.alice.username}" in created["DETAILS"]  # a username, not an id
    assert f"user={h.alice.username}" in owner["DETAILS"] and "role=owner" in owner["DETAILS"]
    assert f"user={h.bob.username}" in bob_added["DETAILS"]
    assert "role=developer" in bob_added["DETAILS"]
    assert bob_changed["AGGREGATE"] == bob_added["AGGREGATE"]
    assert "role=guest" in bob_changed["DETAILS"]
    assert f"user={h.carol.username}" in carol_added["DETAILS"]
    assert "role=maintainer" in carol_added["DETAILS"]
    assert h.sid.startswith(requested["AGGREGATE"])
    assert "name=s1" in requested["DETAILS"] and "type=opencode" in requested["DETAILS"]
    assert asked["AGGREGATE"] == deleted["AGGREGATE"] == requested["AGGREGATE"]
    for row in w_rows:
        assert row["ACTOR"] == h.alice.username


def test_log_json_one_object_per_line(history, server_env):
    h = history
    records = log_json(ok("audit", "log", "--json", "--workspace", h.wid, env=server_env))
    for r in records:
        assert {
            "position",
            "time",
            "actor",
            "event",
            "aggregate_id",
            "workspace_id",
            "fields",
        } <= r.keys()
        assert isinstance(r["position"], int) and isinstance(r["fields"], dict)
        datetime.fromisoformat(r["time"])
    assert events_of(records) == W_EVENTS
    positions = [r["position"] for r in records]
    assert positions == sorted(positions)
    assert {r["workspace_id"] for r in records} == {h.wid}

    bob_membership = str(Membership.create_id(UUID(h.wid), UUID(h.bob.id)))
    created, owner, bob_added, bob_changed, carol_added, requested, _, deleted = records
    assert created["aggregate_id"] == h.wid
    assert created["actor"] == h.alice.id
    assert created["fields"] == {"name": "Audit team", "owner_id": h.alice.id}
    assert owner["fields"]["role"] == "owner" and owner["fields"]["user_id"] == h.alice.id
    assert bob_added["aggregate_id"] == bob_membership
    assert bob_added["fields"] == {"workspace_id": h.wid, "user_id": h.bob.id, "role": "developer"}
    assert bob_changed["aggregate_id"] == bob_membership
    assert bob_changed["fields"] == {"role": "guest"}
    assert carol_added["fields"]["user_id"] == h.carol.id
    assert requested["aggregate_id"] == h.sid
    assert requested["fields"]["name"] == "s1"
    assert deleted["aggregate_id"] == h.sid
    for r in records:
        assert h.t0 - MS <= datetime.fromisoformat(r["time"]) <= h.t_end
        assert r["actor"] == h.alice.id


def test_log_filters_by_workspace(history, server_env):
    h = history
    w = log_json(ok("audit", "log", "--json", "--workspace", h.wid, env=server_env))
    w2 = log_json(ok("audit", "log", "--json", "--workspace", h.w2, env=server_env))
    assert events_of(w2) == ["Workspace.Created", "Membership.Added"]
    assert all(r["workspace_id"] == h.w2 and r["actor"] == h.bob.id for r in w2)
    assert not {r["position"] for r in w} & {r["position"] for r in w2}
    nowhere = ok("audit", "log", "--json", "--workspace", str(uuid4()), env=server_env)
    assert nowhere.strip() == ""


def test_log_filters_by_user_id_and_username(history, server_env):
    h = history
    by_id = ok("audit", "log", "--json", "--user", h.bob.id, env=server_env)
    by_name = ok("audit", "log", "--json", "--user", h.bob.username, env=server_env)
    by_upper = ok("audit", "log", "--json", "--user", h.bob.username.upper(), env=server_env)
    assert by_id == by_name == by_upper
    records = log_json(by_id)
    bob_membership = str(Membership.create_id(UUID(h.wid), UUID(h.bob.id)))
    bob_memberships = {bob_membership, str(Membership.create_id(UUID(h.w2), UUID(h.bob.id)))}
    for r in records:  # by bob, or about bob
        assert h.bob.id in (r["actor"], r["aggregate_id"], r["fields"].get("user_id")) or (
            r["aggregate_id"] in bob_memberships
        ), r
    seen = {(r["event"], r["aggregate_id"]) for r in records}
    assert ("User.Registered", h.bob.id) in seen
    assert ("Workspace.Created", h.w2) in seen  # by bob
    assert ("Membership.Added", bob_membership) in seen  # about bob, by alice
    # Nothing merely near bob: carol's membership, alice's sandbox.
    assert not [r for r in records if r["fields"].get("user_id") == h.carol.id]
    assert not [r for r in records if r["aggregate_id"] == h.sid]
    # Bob's role change is about bob too (the event is on his membership, by alice).
    assert ("Membership.RoleChanged", bob_membership) in seen, events_of(records)


@pytest.mark.parametrize(
    "window",
    [
        ("--until", "2000-01-01T00:00:00Z"),  # before anything happened
        ("--since", "2999-01-01T00:00:00Z"),  # after
        ("--workspace", "W", "--since", "t1", "--until", "t2"),
    ],
)
def test_log_user_by_name_and_by_id_agree_in_any_window(history, server_env, window):
    """A user who exists is the same filter by name as by id, even in a window where
    they did nothing (an empty answer, not "no user is named")."""
    h = history
    values = {"W": h.wid, "t1": stamp(h.t1), "t2": stamp(h.t2)}
    args = ["audit", "log", "--json", *(values.get(a, a) for a in window)]
    by_id = run_sandbar(*args, "--user", h.carol.id, env=server_env)
    by_name = run_sandbar(*args, "--user", h.carol.username, env=server_env)
    assert by_id.returncode == 0, by_id.stderr
    assert (by_name.returncode, by_name.stdout) == (0, by_id.stdout), by_name.stderr


def test_log_filters_by_time(history, server_env):
    h = history
    w = ("--json", "--workspace", h.wid)

    def between(since: datetime | None, until: datetime | None) -> list[str]:
        args = [*w]
        if since:
            args += ["--since", stamp(since)]
        if until:
            args += ["--until", stamp(until)]
        return events_of(log_json(ok("audit", "log", *args, env=server_env)))

    assert between(h.t1, h.t2) == ["Membership.RoleChanged", "Membership.Added"]
    assert between(h.t2, h.t3) == ["Sandbox.Requested"]
    assert between(h.t3, None) == ["Sandbox.DeletionRequested", "Sandbox.Deleted"]
    assert between(None, h.t1) == W_EVENTS[:3]
    assert between(None, h.t0) == []
    assert between(h.t_end, None) == []
    # A time with an offset means the same moment.
    plus2 = h.t1.astimezone(timezone(timedelta(hours=2)))
    args = ["audit", "log", *w, "--since", plus2.isoformat(), "--until", stamp(h.t2)]
    assert events_of(log_json(ok(*args, env=server_env))) == [
        "Membership.RoleChanged",
        "Membership.Added",
    ]
    # The table and --json agree on what a window holds.
    table = log_table(
        ok(
            "audit",
            "log",
            "--workspace",
            h.wid,
            "--since",
            stamp(h.t1),
            "--until",
            stamp(h.t2),
            env=server_env,
        )
    )
    assert [r["EVENT"] for r in table] == ["Membership.RoleChanged", "Membership.Added"]


def test_log_until_keeps_events_committed_after_a_later_one(history, sandbar, server_env):
    """Events are stamped when they are made and numbered when they commit, so with two
    requests at once the log is not in time order: here the earlier-stamped workspace
    commits second. ``--until`` must still list it."""
    owner = UUID(history.alice.id)
    start = now()
    with acting_as(owner):
        early = Workspace(name="early", owner_id=owner)
        early_member = Membership(workspace_id=early.id, user_id=owner, role="owner")
    middle = now()
    with acting_as(owner):
        late = Workspace(name="late", owner_id=owner)
        late_member = Membership(workspace_id=late.id, user_id=owner, role="owner")
    sandbar.log.save(late, late_member)
    sandbar.log.save(early, early_member)

    args = ["--json", "--since", stamp(start), "--until", stamp(middle)]
    everything = log_json(ok("audit", "log", "--json", "--since", stamp(start), env=server_env))
    assert {r["aggregate_id"] for r in everything} >= {str(early.id), str(late.id)}
    listed = log_json(ok("audit", "log", *args, env=server_env))
    assert [(r["event"], r["aggregate_id"]) for r in listed if r["workspace_id"]] == [
        ("Workspace.Created", str(early.id)),
        ("Membership.Added", str(early_member.id)),
    ]


def test_log_holds_no_secret(history, sandbar, server_env):
    h = history
    outputs = [
        run_sandbar("audit", "log", env=server_env),
        run_sandbar("audit", "log", "--json", env=server_env),
        run_sandbar("audit", "replay", "--workspace", h.wid, "--at", stamp(h.t3), env=server_env),
    ]
    secrets = [PASSWORD, server_env["SANDBAR_SECRET_KEY"], sandbar.secrets.proxy_token(UUID(h.sid))]
    for u in (h.alice, h.bob, h.carol):
        token = u.client.cookies.get(SESSION_COOKIE)
        assert token
        secrets.append(token)
    for r in outputs:
        assert r.returncode == 0, r.stderr
        text = r.stdout + r.stderr
        assert h.alice.username in text
        for secret in secrets:
            assert secret not in text
        assert "argon2" not in text.lower()
        assert "$argon" not in text


# audit replay


def replay(h: History, at: datetime, env: dict[str, str]) -> tuple[str, dict[str, str], list]:
    out = ok("audit", "replay", "--workspace", h.wid, "--at", stamp(at), env=env)
    members = {r["USERNAME"]: r["ROLE"] for r in section(out, "members")}
    return out, members, section(out, "sandboxes")


def test_replay_shows_the_workspace_as_it_was(history, server_env):
    h = history
    out, members, sandboxes = replay(h, h.t1, server_env)
    assert "Audit team" in out and h.wid in out
    assert members == {h.alice.username: "owner", h.bob.username: "developer"}
    assert sandboxes == []

    _, members, sandboxes = replay(h, h.t2, server_env)
    assert members == {
        h.alice.username: "owner",
        h.bob.username: "guest",
        h.carol.username: "maintainer",
    }
    assert sandboxes == []

    _, _, sandboxes = replay(h, h.t3, server_env)
    assert [(s["NAME"], s["TYPE"], s["KIND"], s["STATUS"], s["SANDBOX ID"]) for s in sandboxes] == [
        ("s1", "opencode", "cloud", "creating", h.sid)
    ]

    out, members, sandboxes = replay(h, h.t_end, server_env)
    assert members == {
        h.alice.username: "owner",
        h.bob.username: "guest",
        h.carol.username: "maintainer",
    }
    assert sandboxes == []
    # The end of the log is what the API says now.
    api = h.alice.client.get(f"/api/workspaces/{h.wid}/members").json()
    assert members == {m["username"]: m["role"] for m in api}
    assert h.alice.client.get(f"/api/workspaces/{h.wid}/sandboxes").json() == []


def test_replay_before_the_workspace_existed(history, server_env):
    h = history
    r = run_sandbar("audit", "replay", "--workspace", h.wid, "--at", stamp(h.t0), env=server_env)
    assert r.returncode == 1
    assert "did not exist" in r.stdout + r.stderr
    assert "Traceback" not in r.stdout + r.stderr
    r = run_sandbar(
        "audit", "replay", "--workspace", str(uuid4()), "--at", stamp(h.t_end), env=server_env
    )
    assert r.returncode == 1
    assert "did not exist" in r.stdout + r.stderr


# Bad arguments.


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["audit", "log", "--workspace", "not-a-uuid"], "is not a UUID"),
        (["audit", "log", "--since", "yesterday"], "is not a time"),
        (["audit", "log", "--until", "2026-13-45T00:00:00Z"], "is not a time"),
        (["audit", "replay", "--workspace", "1234", "--at", "2026-01-01T00:00:00Z"], "not a UUID"),
        (["audit", "replay", "--workspace", str(uuid4()), "--at", "noon"], "is not a time"),
        (["audit", "replay", "--workspace", str(uuid4())], "--at"),
        (["audit", "log", "--user", "nobody-by-this-name"], "no user is named"),
        (["audit", "frobnicate"], "invalid choice"),
    ],
)
def test_bad_arguments_exit_2_with_a_message(args, message, server_env):
    r = run_sandbar(*args, env=server_env)
    assert r.returncode == 2, r.stdout + r.stderr
    assert message in r.stderr
    assert "Traceback" not in r.stdout + r.stderr


@pytest.mark.parametrize("at", ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00"])
def test_replay_at_a_time_at_the_edge_of_the_calendar(history, server_env, at):
    """Valid RFC 3339 times that cannot be written in UTC: refused (2) or answered, never
    a traceback."""
    r = run_sandbar("audit", "replay", "--workspace", history.wid, "--at", at, env=server_env)
    assert "Traceback" not in r.stdout + r.stderr, r.stderr
    assert r.returncode in (0, 1, 2)


# audit rebuild (last: it rewrites every view under the running server).


def api_state(h: History) -> dict[str, object]:
    a, b = h.alice.client, h.bob.client
    return {
        "alice_workspaces": a.get("/api/workspaces").json(),
        "bob_workspaces": b.get("/api/workspaces").json(),
        "workspace": a.get(f"/api/workspaces/{h.wid}").json(),
        "members": a.get(f"/api/workspaces/{h.wid}/members").json(),
        "sandboxes": a.get(f"/api/workspaces/{h.wid}/sandboxes").json(),
        "w2": b.get(f"/api/workspaces/{h.w2}").json(),
        "w2_members": b.get(f"/api/workspaces/{h.w2}/members").json(),
        "deleted_sandbox": a.get(f"/api/sandboxes/{h.sid}").status_code,
    }


def test_rebuild_gives_the_same_views(history, sandbar, server_env):
    h = history
    # A live sandbox too, so the routing table has a row.
    r = h.bob.client.post(
        f"/api/workspaces/{h.w2}/sandboxes", json={"name": "kept", "type": "openclaw"}
    )
    assert r.status_code == 201, r.text
    before = api_state(h)
    before["kept"] = h.bob.client.get(f"/api/sandboxes/{r.json()['id']}").json()
    views_before = sandbar.view.snapshot()

    result = run_sandbar("audit", "rebuild", env=server_env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert re.search(r"\(([\d,]+) events/s\)", result.stdout), result.stdout
    assert "the rebuilt views equal the ones they replaced" in result.stdout
    lines = result.stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("VIEW"))
    body = lines[start : start + 2] + [
        line for line in lines[start + 2 :] if line.startswith("sandbar_")
    ]
    rows = parse_table(body)
    assert rows and all(row["SAME"] == "yes" for row in rows), result.stdout
    assert all(row["ROWS BEFORE"] == row["ROWS AFTER"] for row in rows)

    after = api_state(h)
    after["kept"] = h.bob.client.get(f"/api/sandboxes/{r.json()['id']}").json()
    assert after == before
    assert sandbar.view.snapshot() == views_before

    # The server keeps writing and reading its own writes afterwards.
    r = h.bob.client.post(
        f"/api/workspaces/{h.w2}/sandboxes", json={"name": "after", "type": "opencode"}
    )
    assert r.status_code == 201, r.text
    listed = h.bob.client.get(f"/api/workspaces/{h.w2}/sandboxes").json()
    assert [s["name"] for s in listed] == ["kept", "after"]
