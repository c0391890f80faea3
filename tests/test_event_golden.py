"""Events written by an earlier version still decode and replay to the same views.

``tests/golden/<name>.events.json`` holds stored rows of the events table (topic, state,
originator id and version) as that version wrote them, every event type among them
(``tests/golden/make_golden.py`` wrote them; they are never rewritten). Each is loaded
into a fresh database; ``sandbar audit rebuild`` must rebuild the views from it and find
them equal to the start-up catch-up's, the views must equal what the version that wrote
the log projected, and every event must decode to the same class and attributes and fold
to the same aggregates. A renamed event class, a lost or added field without an upcaster
(docs/architecture.md, "Changing an event"), or a change in how an event decodes or
applies fails here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest

from application.eventlog import EventLog
from infrastructure.settings import Settings
from interfaces.event_log import open_event_log
from projections.view import ReadModelView
from tests.conftest import run_sandbar
from tests.golden import record

LOGS = sorted(p.name.removesuffix(".events.json") for p in record.HERE.glob("*.events.json"))


@dataclasses.dataclass
class Loaded:
    name: str
    url: str
    env: dict[str, str]
    rows: list[dict[str, Any]]
    expected: dict[str, Any]


@pytest.fixture(scope="module", params=LOGS)
def golden(
    request: pytest.FixtureRequest,
    make_database: Callable[[], str],
    tmp_path_factory: pytest.TempPathFactory,
) -> Loaded:
    """A fresh database whose events table holds the golden log's rows as stored."""
    name: str = request.param
    url = make_database()
    env = {
        "SANDBAR_DATABASE_URL": url,
        "SANDBAR_DATA_DIR": str(tmp_path_factory.mktemp("golden")),
        "SANDBAR_SECRET_KEY": "golden-test-key",
        "SANDBAR_WORKER": "false",
    }
    open_event_log(Settings.from_env(env), url).close()  # the tables, empty
    rows = record.load(f"{name}.events.json")
    with psycopg.connect(url) as conn:
        conn.cursor().executemany(
            "INSERT INTO sandbar_events"
            " (notification_id, originator_id, originator_version, topic, state)"
            " VALUES (%s, %s, %s, %s, %s)",
            [
                (
                    r["notification_id"],
                    r["originator_id"],
                    r["originator_version"],
                    r["topic"],
                    r["state"].encode(),
                )
                for r in rows
            ],
        )
    return Loaded(name, url, env, rows, record.load(f"{name}.expected.json"))


@pytest.fixture
def log(golden: Loaded) -> Iterator[EventLog]:
    event_log = open_event_log(Settings.from_env(golden.env), golden.url)
    yield event_log
    event_log.close()


def test_every_event_type_is_in_a_golden_log() -> None:
    """A new event type needs a golden log of its own (make_golden.py under a new name)."""
    assert LOGS, "no golden log in tests/golden"
    logged = {e["type"] for n in LOGS for e in record.load(f"{n}.expected.json")["events"]}
    assert record.event_types() - logged == set()


def test_the_rebuild_command_replays_the_golden_log(golden: Loaded) -> None:
    r = run_sandbar("audit", "rebuild", env=golden.env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"replayed {len(golden.rows)} events" in r.stdout
    assert "the rebuilt views equal the ones they replaced" in r.stdout


def test_the_views_are_those_the_log_was_written_with(golden: Loaded, log: EventLog) -> None:
    view = log.recorder.read_model
    assert isinstance(view, ReadModelView)
    assert view.rebuild(log.mapper.to_domain_event).events == len(golden.rows)
    expected = golden.expected["views"]
    # (A view added since is built from the same log; the ones the version had must match.)
    views = {t: rows for t, rows in record.views(view.snapshot()).items() if t in expected}
    assert views == expected
    added = set(record.views(view.snapshot())) - set(expected)
    assert added <= {"sandbar_workspace_log", "sandbar_identities"}, added


def test_every_event_decodes_as_it_did(golden: Loaded, log: EventLog) -> None:
    events = record.decode(log.mapper, golden.rows)
    for event in events:
        declared = {f.name for f in dataclasses.fields(event)}
        # A field the class lost, or gained without an upcaster to fill it in.
        assert declared == set(vars(event)), type(event).__qualname__
    described = record.described(events)
    assert [e["type"] for e in described] == [e["type"] for e in golden.expected["events"]]
    for now, then in zip(described, golden.expected["events"], strict=True):
        assert kept(now["fields"], then["fields"]), now["type"]


def test_the_aggregates_fold_as_they_did(golden: Loaded, log: EventLog) -> None:
    """Replaying the old events gives each aggregate the state it had then, as its class
    today upcasts that state (what loading a snapshot taken then gives): an attribute
    leaves an aggregate only through an upcaster that drops it from old snapshots too."""
    folded = record.folded(record.decode(log.mapper, golden.rows))
    assert folded.keys() == golden.expected["aggregates"].keys()
    for key, states in golden.expected["aggregates"].items():
        assert len(folded[key]) == len(states), key
        for now, then in zip(folded[key], states, strict=True):
            assert now["class"] == then["class"], key
            assert kept(now["state"], record.upcast(then)), (then["class"], key)


def kept(now: dict[str, Any], then: dict[str, Any]) -> bool:
    """Whether every attribute there was is still there with the same value (a later
    version may add attributes: an event's through its upcaster, an aggregate's from
    them; docs/architecture.md, "Changing an event")."""
    return {k: now.get(k, "(missing)") for k in then} == then
