"""A workspace's log over HTTP: the live events (Server-Sent Events) a member receives as
things change, resumed with Last-Event-ID without a gap; its history, paged with a Link
header; and its members and sandboxes as they were at a moment, as `sandbar audit replay`
folds them from the log."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import httpx
import orjson
import pytest

from application.audit import AuditLog
from interfaces.bootstrap import Sandbar
from projections.audit_reads import AuditReads
from tests.conftest import User
from tests.errors import assert_error

Event = dict[str, Any]


class EventReader:
    """Reads one stream in a thread; its events wait in a queue."""

    def __init__(self, client: httpx.Client, path: str, headers: dict[str, str]) -> None:
        self.events: queue.Queue[Event | None] = queue.Queue()
        self.status = 0
        self._client, self._path, self._headers = client, path, headers
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._response: httpx.Response | None = None

    def _run(self) -> None:
        timeout = httpx.Timeout(30, read=60)
        try:
            with self._client.stream(
                "GET", self._path, headers=self._headers, timeout=timeout
            ) as r:
                self._response = r
                self.status = r.status_code
                self.content_type = r.headers.get("content-type", "")
                self._started.set()
                event: Event = {}
                for line in r.iter_lines():
                    if not line:
                        if "event" in event:
                            self.events.put(event)
                        event = {}
                    elif line.startswith(":"):
                        continue
                    else:
                        name, _, value = line.partition(": ")
                        event[name] = orjson.loads(value) if name == "data" else value
        except (httpx.HTTPError, RuntimeError):
            pass
        finally:
            self._started.set()
            self.events.put(None)

    def start(self) -> EventReader:
        self._thread.start()
        self._started.wait(30)
        return self

    def next(self, kind: str | None = None, timeout: float = 15) -> Event:
        """The next event (of ``kind``, skipping others)."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {kind or 'event'} within {timeout} s")
            try:
                event = self.events.get(timeout=left)
            except queue.Empty:
                continue
            if event is None:
                raise AssertionError(f"the stream ended before a {kind or 'event'}")
            if kind is None or event["event"] == kind:
                return event

    def ended(self, timeout: float = 15) -> list[Event]:
        """Every event until the stream closes."""
        seen = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                event = self.events.get(timeout=deadline - time.monotonic())
            except queue.Empty:
                break
            if event is None:
                return seen
            seen.append(event)
        raise AssertionError(f"the stream did not end; it sent {seen}")

    def close(self) -> None:
        if self._response is not None:
            self._response.close()
        self._thread.join(timeout=10)


@contextmanager
def reading(user: User, wid: str, **headers: str) -> Iterator[EventReader]:
    client = httpx.Client(base_url=str(user.client.base_url), cookies=user.client.cookies)
    reader = EventReader(client, f"/api/workspaces/{wid}/events", headers).start()
    try:
        yield reader
    finally:
        reader.close()
        client.close()


@pytest.fixture
def team(new_user: Callable[..., User]) -> tuple[User, User, str]:
    """An owner and a developer of a workspace."""
    owner, dev = new_user("owner"), new_user("dev")
    wid = owner.client.post("/api/workspaces", json={"name": "live"}).json()["id"]
    r = owner.client.post(
        f"/api/workspaces/{wid}/members", json={"username": dev.username, "role": "developer"}
    )
    assert r.status_code == 201, r.text
    return owner, dev, wid


def test_a_member_sees_changes_live_and_resumes_without_a_gap(
    team: tuple[User, User, str],
) -> None:
    owner, dev, wid = team
    with reading(dev, wid) as stream:
        assert stream.status == 200 and stream.content_type.startswith("text/event-stream")
        ready = stream.next("ready")
        made = owner.client.post(
            f"/api/workspaces/{wid}/sandboxes", json={"name": "box", "type": "opencode"}
        ).json()
        event = stream.next("sandbox")
        assert int(event["id"]) > int(ready["id"])
        entry = event["data"]
        assert entry["event"] == "Sandbox.Requested" and entry["actor"] == owner.id
        assert entry["actor_name"] == owner.username and entry["position"] == int(event["id"])
        assert entry["item"] == made  # the row, as the API shows it
        owner.client.delete(f"/api/sandboxes/{made['id']}")
        gone = stream.next("sandbox")
        assert gone["data"]["event"] == "Sandbox.DeletionRequested"
        assert gone["data"]["item"]["status"] == "deleting"
        last = gone["id"]
    # Missed while away: given again from the last id seen, in order.
    names = [f"b{i}" for i in range(3)]
    for name in names:
        r = owner.client.post(
            f"/api/workspaces/{wid}/sandboxes", json={"name": name, "type": "openclaw"}
        )
        assert r.status_code == 201
    with reading(dev, wid, **{"last-event-id": last}) as stream:
        seen = [stream.next("sandbox")["data"] for _ in range(len(names) + 1)]
        # (without a worker, a sandbox that never ran is gone at once)
        assert seen[0]["event"] == "Sandbox.Deleted" and seen[0]["item"] is None
        assert [e["item"]["name"] for e in seen[1:]] == names


def test_a_removed_member_gets_no_more_events(team: tuple[User, User, str]) -> None:
    owner, dev, wid = team
    with reading(dev, wid) as stream:
        stream.next("ready")
        r = owner.client.delete(f"/api/workspaces/{wid}/members/{dev.id}")
        assert r.status_code == 204
        owner.client.post(
            f"/api/workspaces/{wid}/sandboxes", json={"name": "secret", "type": "opencode"}
        )
        rest = stream.ended()
        assert [e["event"] for e in rest] == ["end"], rest
        assert rest[0]["data"]["code"] == "workspace_not_found"
    # and may not come back
    r = dev.client.get(f"/api/workspaces/{wid}/events")
    assert_error(r, 404, "workspace_not_found")


def test_signing_out_ends_the_stream(team: tuple[User, User, str]) -> None:
    owner, dev, wid = team
    with reading(dev, wid) as stream:
        stream.next("ready")
        dev.client.post("/api/auth/logout")
        owner.client.post(
            f"/api/workspaces/{wid}/sandboxes", json={"name": "later", "type": "opencode"}
        )
        rest = stream.ended()
        assert [e["event"] for e in rest] == ["end"], rest


def test_streams_are_for_members_only(
    team: tuple[User, User, str], new_user: Callable[..., User], anonymous: httpx.Client
) -> None:
    _, _, wid = team
    stranger = new_user("stranger")
    assert_error(stranger.client.get(f"/api/workspaces/{wid}/events"), 404, "workspace_not_found")
    assert_error(anonymous.get(f"/api/workspaces/{wid}/events"), 401, "unauthenticated")
    r = stranger.client.get(f"/api/workspaces/{wid}/events", headers={"last-event-id": "x"})
    assert_error(r, 422, "invalid_field", "Last-Event-ID")


def test_history_pages_newest_first_with_a_link(team: tuple[User, User, str]) -> None:
    owner, dev, wid = team
    for i in range(5):
        owner.client.post(
            f"/api/workspaces/{wid}/sandboxes", json={"name": f"h{i}", "type": "opencode"}
        )
    r = dev.client.get(f"/api/workspaces/{wid}/history", params={"limit": 3})
    assert r.status_code == 200, r.text
    first = r.json()
    assert [e["item"]["name"] for e in first] == ["h4", "h3", "h2"]
    assert r.links["next"]["url"].startswith(f"/api/workspaces/{wid}/history?limit=3&after=")
    seen = [e["position"] for e in first]
    url: str | None = r.links["next"]["url"]
    while url:
        r = dev.client.get(url)
        seen += [e["position"] for e in r.json()]
        url = r.links.get("next", {}).get("url")
    assert seen == sorted(seen, reverse=True) and len(seen) == len(set(seen))
    # workspace made, owner and developer added, five sandboxes
    assert len(seen) == 8
    mine = dev.client.get(f"/api/workspaces/{wid}/history", params={"person": dev.id}).json()
    assert [e["event"] for e in mine] == ["Membership.Added"]
    assert mine[0]["item"]["username"] == dev.username and mine[0]["actor"] == owner.id
    kinds = dev.client.get(f"/api/workspaces/{wid}/history", params={"kind": "member"}).json()
    assert {e["kind"] for e in kinds} == {"member"} and len(kinds) == 2
    r = dev.client.get(f"/api/workspaces/{wid}/history", params={"kind": "nonsense"})
    assert_error(r, 422, "invalid_field", "kind")
    assert_error(
        dev.client.get(f"/api/workspaces/{wid}/history", params={"limit": 0}),
        422,
        "invalid_field",
        "limit",
    )


def test_history_filters_page_like_the_whole_history_filtered(
    team: tuple[User, User, str],
) -> None:
    """Each filter (person, kind, event, both) pages through exactly the rows of the
    whole history it matches: none lost, none twice (an owner's own membership is by
    and about them), in the same order."""
    owner, dev, wid = team
    boxes = f"/api/workspaces/{wid}/sandboxes"
    for who, name in ((owner, "o1"), (dev, "d1"), (owner, "o2"), (dev, "d2")):
        who.client.post(boxes, json={"name": name, "type": "opencode"})
    history = f"/api/workspaces/{wid}/history"

    def every(params: dict[str, str], limit: int = 2) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []
        r = dev.client.get(history, params={**params, "limit": limit})
        while True:
            assert r.status_code == 200, r.text
            rows += r.json()
            if "next" not in r.links:
                return rows
            r = dev.client.get(r.links["next"]["url"])

    whole = every({})

    def about(e: dict[str, Any]) -> str | None:  # (a member's entry is about that user)
        return e["id"] if e["kind"] == "member" else None

    for person in (owner.id, dev.id, None):
        for kind in (None, "member", "sandbox", "Membership.Added", "Sandbox.Requested"):
            params = {k: v for k, v in (("person", person), ("kind", kind)) if v}
            expected = [
                e
                for e in whole
                if (person is None or person in (e["actor"], about(e)))
                and (kind is None or kind in (e["kind"], e["event"]))
            ]
            assert every(params) == expected == every(params, 100), params
    assert any(e["actor"] == about(e) == owner.id for e in whole)


def test_as_it_was_at_a_moment_matches_the_audit_replay(
    team: tuple[User, User, str], sandbar: Sandbar
) -> None:
    owner, dev, wid = team
    boxes = f"/api/workspaces/{wid}/sandboxes"
    first = owner.client.post(boxes, json={"name": "first", "type": "opencode"}).json()
    time.sleep(0.01)  # (two moments apart, so that one lies between them)
    moment = datetime.now(UTC)
    time.sleep(0.01)
    owner.client.post(boxes, json={"name": "second", "type": "opencode"})
    owner.client.delete(f"/api/workspaces/{wid}/members/{dev.id}")
    at = moment.isoformat().replace("+00:00", "Z")
    then = owner.client.get(f"/api/workspaces/{wid}/as-at", params={"time": at}).json()
    assert [s["name"] for s in then["sandboxes"]] == ["first"]
    assert then["sandboxes"][0] == first
    assert [m["username"] for m in then["members"]] == [owner.username, dev.username]
    assert then["workspace"]["name"] == "live"
    now = owner.client.get(f"/api/workspaces/{wid}/as-at", params={"time": "9999-01-01"}).json()
    assert [m["username"] for m in now["members"]] == [owner.username]
    assert len(now["sandboxes"]) == 2
    before = owner.client.get(
        f"/api/workspaces/{wid}/as-at", params={"time": "2000-01-01T00:00:00Z"}
    ).json()
    assert before["workspace"] is None and before["members"] == [] == before["sandboxes"]
    # The audit log's replay (`sandbar audit replay`), folding the aggregates from the
    # log, says the same.
    replayed = AuditLog(sandbar.log, AuditReads(sandbar.view.datastore)).replay(UUID(wid), moment)
    assert [s.name for s in replayed.sandboxes] == ["first"]
    assert [name for _, name in replayed.members] == [m["username"] for m in then["members"]]
    r = owner.client.get(f"/api/workspaces/{wid}/as-at", params={"time": "yesterday"})
    assert_error(r, 422, "invalid_field", "time")
