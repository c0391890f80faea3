"""What the golden test compares, computed the same way when the golden log is written
(``make_golden.py``) and when it is read back (``tests/test_event_golden.py``): the events
as decoded, every aggregate folded from them, and the view tables, all as plain JSON."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from datetime import datetime
from enum import Enum
from pathlib import Path
from typing import Any
from uuid import UUID

from eventsourcing.domain import Aggregate
from eventsourcing.persistence import Mapper, Notification

from domain import sandboxes, users, workspaces

HERE = Path(__file__).resolve().parent
AGGREGATES: tuple[type[Aggregate], ...] = (
    users.User,
    users.Username,
    users.Identity,
    workspaces.Workspace,
    workspaces.Membership,
    sandboxes.Sandbox,
)


def plain(value: Any) -> Any:
    """``value`` as JSON can hold it, keeping its type in sight: a UUID decoded as text,
    or a member of an enum as a bare string, differs from what was."""
    if isinstance(value, Enum):
        return f"{type(value).__name__}.{value.name}"
    if isinstance(value, UUID):
        return f"UUID {value}"
    if isinstance(value, datetime):
        return f"datetime {value.isoformat()}"
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in sorted(value.items())}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value


def event_types() -> set[str]:
    """Every event an aggregate of ours can record, by qualified name. ``Created`` is left
    out where it is only the library's default, inherited beside a created event of
    another name (``Sandbox.Requested``)."""
    names = set()
    for aggregate in AGGREGATES:
        nested = {
            name: value
            for name, value in vars(aggregate).items()
            if isinstance(value, type) and issubclass(value, Aggregate.Event) and name != "Event"
        }
        created = {n for n, v in nested.items() if issubclass(v, Aggregate.Created)}
        if created - {"Created"}:
            nested.pop("Created", None)
        names |= {f"{aggregate.__qualname__}.{name}" for name in nested}
    return names


def notification(row: Mapping[str, Any]) -> Notification:
    """A stored row of the golden log as the recorder reads it from the events table."""
    return Notification(
        id=row["notification_id"],
        originator_id=UUID(row["originator_id"]),
        originator_version=row["originator_version"],
        topic=row["topic"],
        state=row["state"].encode(),
    )


def decode(mapper: Mapper[UUID], rows: Iterable[Mapping[str, Any]]) -> list[Any]:
    return [mapper.to_domain_event(notification(row)) for row in rows]


def described(events: Iterable[Any]) -> list[dict[str, Any]]:
    """Each event: its class and every attribute it decoded to."""
    return [{"type": type(e).__qualname__, "fields": plain(vars(e))} for e in events]


def folded(events: Iterable[Any]) -> dict[str, list[dict[str, Any]]]:
    """Every aggregate as its own event handlers leave it after each of its events, with
    the class version whose shape that state has."""
    aggregates: dict[UUID, Any] = {}
    states: dict[str, list[dict[str, Any]]] = {}
    for e in events:
        aggregate = aggregates[e.originator_id] = e.mutate(aggregates.get(e.originator_id))
        state = {k: v for k, v in vars(aggregate).items() if k != "_pending_events"}
        cls = type(aggregate)
        states.setdefault(str(e.originator_id), []).append(
            {
                "class": cls.__qualname__,
                "class_version": getattr(cls, "class_version", 1),
                "state": plain(state),
            }
        )
    return states


def upcast(folded_state: Mapping[str, Any]) -> dict[str, Any]:
    """A folded state (an entry of ``folded``) as the aggregate's class today reads it: put
    through the class's own upcasters (``upcast_v1_v2``...), which the library runs on a
    snapshot of that older shape. From a log whose entries say no class version, as from
    a snapshot that says none: version 1."""
    cls = {a.__qualname__: a for a in AGGREGATES}[folded_state["class"]]
    state = dict(folded_state["state"])
    version = folded_state.get("class_version", 1)
    while version < getattr(cls, "class_version", 1):
        getattr(cls, f"upcast_v{version}_v{version + 1}")(state)
        version += 1
    return plain(state)


def views(snapshot: Mapping[str, list[tuple[Any, ...]]]) -> dict[str, list[Any]]:
    """The view tables' rows (``ReadModelView.snapshot()``) as JSON would hold them."""
    return {table: plain([list(row) for row in rows]) for table, rows in snapshot.items()}


def load(name: str) -> Any:
    return json.loads((HERE / name).read_text())


def dump(name: str, value: Any) -> None:
    (HERE / name).write_text(json.dumps(value, indent=1, sort_keys=True) + "\n")
