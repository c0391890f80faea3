"""The API's error answers, checked in one place: every refusal has a status and the JSON
shape docs/api.md gives ({"error": {"code", "message"[, "field"]}}), and carries no trace
of the code that made it."""

from __future__ import annotations

import re
from typing import Any

import httpx

CODE = re.compile(r"[a-z][a-z0-9_]*")
TRACE_MARKS = ("Traceback", 'File "', "Exception", "psycopg", "pydantic", ".py")


def assert_error(
    r: httpx.Response,
    status: int | set[int],
    code: str | None = None,
    field: str | None = None,
) -> dict[str, Any]:
    """``r`` is an error answer with ``status`` (or one of them) in the API's error shape,
    with ``code`` and ``field`` when given; returns its error object."""
    statuses = {status} if isinstance(status, int) else status
    where = f"{r.request.method} {r.request.url.path}"
    assert r.status_code in statuses, f"{where}: {r.status_code} {r.text[:500]}"
    assert r.headers.get("content-type", "").startswith("application/json"), (where, r.headers)
    body = r.json()
    assert isinstance(body, dict) and set(body) == {"error"}, (where, body)
    error = body["error"]
    assert {"code", "message"} <= set(error) <= {"code", "message", "field"}, (where, error)
    assert isinstance(error["code"], str) and CODE.fullmatch(error["code"]), (where, error)
    assert isinstance(error["message"], str) and error["message"].strip(), (where, error)
    for mark in TRACE_MARKS:
        assert mark not in r.text, (where, r.text)
    if code is not None:
        assert error["code"] == code, (where, error)
    if field is not None:
        assert error.get("field") == field, (where, error)
    return error
