"""Rows of the workspace log (projections/workspace_log.py) as the API's ``LogEntry``,
and a workspace as it was at a moment as ``WorkspaceAt``."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from interfaces.http import present

Origin = tuple[str, str, str]


def _time(value: Any) -> Any:
    return datetime.fromisoformat(value) if isinstance(value, str) else value


def render(row: dict[str, Any], origin: Origin) -> dict[str, Any]:
    """A log row as the API's ``LogEntry``: what happened, who did it and when, and the
    thing it changed in its own API shape (null once it is gone)."""
    kind, item = row["kind"], row["item"]
    return {
        "position": row["position"],
        "time": present.rfc3339(row["time"]),
        "event": row["event"],
        "actor": row["actor"],
        "actor_name": row.get("actor_name"),
        "kind": kind,
        "id": str(row["aggregate_id"] if kind != "member" else row["subject"]),
        "item": None if item is None else present_item(kind, item, origin),
    }


def present_item(kind: str, item: dict[str, Any], origin: Origin) -> Any:
    """A view row as stored in the log (JSON) in its API shape."""
    if kind == "sandbox":
        return present.sandbox({**item, **_times(item, "created_at", "updated_at")}, origin)
    if kind == "member":
        if not item.get("active", True):
            return None
        return present.member({**item, **_times(item, "added_at")})
    return {
        "id": str(item["id"]),
        "name": item["name"],
        "created_at": present.rfc3339(_time(item["created_at"])),
    }


def _times(item: dict[str, Any], *keys: str) -> dict[str, Any]:
    return {k: _time(item[k]) for k in keys}


def workspace_at(snapshot: Any, origin: Origin) -> dict[str, Any]:
    """An ``application.workspace_log.AsAt`` as JSON."""
    workspace = snapshot.workspace
    return {
        "at": present.rfc3339(snapshot.at),
        "position": snapshot.position,
        "workspace": None if workspace is None else present_item("workspace", workspace, origin),
        "members": [present_item("member", m, origin) for m in snapshot.members],
        "sandboxes": [present_item("sandbox", s, origin) for s in snapshot.sandboxes],
    }
