"""Rows of the read model as the JSON shapes of docs/api.md (ids as text, RFC 3339 UTC times)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson
from starlette.responses import JSONResponse

from domain.sandboxes import HOST_PREFIXES, SandboxType

Row = dict[str, Any]


class JSON(JSONResponse):
    """A JSON response rendered by orjson. (A JSONResponse, so FastAPI declares the
    routes' response models in /openapi.json, not ``{"type": "string"}``.)"""

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def rfc3339(value: datetime) -> str:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def user(row: Row) -> Row:
    return {
        "id": str(row["id"]),
        "username": row["username"],
        "email": row["email"],
        "display_name": row["display_name"],
        "created_at": rfc3339(row["created_at"]),
        "providers": [
            {"provider": p["provider"], "linked_at": rfc3339(p["linked_at"])}
            for p in row["providers"]
        ],
    }


def workspace(row: Row) -> Row:
    return {
        "id": str(row["id"]),
        "name": row["name"],
        "role": row["role"],
        "created_at": rfc3339(row["created_at"]),
        "member_count": row["member_count"],
        "sandbox_count": row["sandbox_count"],
    }


def member(row: Row) -> Row:
    return {
        "user_id": str(row["user_id"]),
        "username": row["username"],
        "role": row["role"],
        "added_at": rfc3339(row["added_at"]),
    }


def sandbox(row: Row, origin: tuple[str, str, str]) -> Row:
    """``origin`` is (scheme, base domain, ":port" or "") of the sandbox addresses."""
    scheme, base_domain, port = origin
    prefix = HOST_PREFIXES[SandboxType(row["type"])]
    out = {
        "id": str(row["id"]),
        "workspace_id": str(row["workspace_id"]),
        "name": row["name"],
        "type": row["type"],
        "kind": row["kind"],
        "status": row["status"],
        "url": f"{scheme}://{prefix}-{row['id']}.{base_domain}{port}/",
        "created_by": row["created_by"],
        "created_at": rfc3339(row["created_at"]),
        "updated_at": rfc3339(row["updated_at"]),
    }
    if row.get("error"):
        out["error"] = row["error"]
    return out


def limits(row: Row) -> Row:
    return {
        "daily_requests": row["daily_requests"],
        "daily_tokens": row["daily_tokens"],
        "own": {"daily_requests": row["own_requests"], "daily_tokens": row["own_tokens"]},
    }


def usage(report: Row) -> Row:
    days = [
        {
            "day": r["day"].isoformat(),
            "sandbox_id": str(r["sandbox_id"]),
            "requests": r["requests"],
            "input_tokens": r["input_tokens"],
            "output_tokens": r["output_tokens"],
            "cache_creation_input_tokens": r["cache_creation_input_tokens"],
            "cache_read_input_tokens": r["cache_read_input_tokens"],
        }
        for r in report["rows"]
    ]
    return {"limits": limits(report["limits"]), "days": days}
