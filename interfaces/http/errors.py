"""Every error answer has docs/api.md's shape: {"error": {"code", "message"[, "field"]}}.
Bad input is a 4xx naming the problem; anything unexpected is a bare 500, never a trace."""

from __future__ import annotations

import logging
import re
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.responses import Response

from application.errors import (
    AppError,
    Conflict,
    Forbidden,
    Invalid,
    NotFound,
    RateLimited,
    Unauthorized,
)

log = logging.getLogger("sandbar.http")

STATUS: dict[type[AppError], int] = {
    Unauthorized: 401,
    Forbidden: 403,
    NotFound: 404,
    Conflict: 409,
    Invalid: 422,
    RateLimited: 429,
}

_HTTP_CODES = {
    400: "bad_request",
    401: "unauthenticated",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "body_too_large",
    415: "unsupported_media_type",
    422: "invalid_field",
}


def error_response(
    status: int,
    code: str,
    message: str,
    field: str | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    body: dict[str, Any] = {"code": code, "message": message}
    if field is not None:
        body["field"] = field
    return Response(
        orjson.dumps({"error": body}),
        status_code=status,
        media_type="application/json",
        headers=headers,
    )


def not_ready(message: str) -> Response:
    """503 while the views are rebuilt (interfaces/readiness.py), with when to retry."""
    from interfaces.readiness import RETRY_AFTER

    return error_response(503, "not_ready", message, headers={"Retry-After": str(RETRY_AFTER)})


async def _app_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, AppError)
    status = next((STATUS[c] for c in type(exc).__mro__ if c in STATUS), 400)
    headers = {"Retry-After": str(exc.retry_after)} if isinstance(exc, RateLimited) else None
    return error_response(status, exc.code, exc.message, exc.field, headers)


def _describe(error: dict[str, Any]) -> tuple[int, str, str, str | None]:
    """(status, code, message, field) for one of pydantic's validation errors."""
    loc = [str(p) for p in error.get("loc", ())][1:]  # drop the leading "body"
    kind = error.get("type", "")
    field = ".".join(loc) if loc else None
    if kind == "json_invalid":
        return 400, "malformed_json", "the request body is not valid JSON", None
    if field is None:
        if kind == "missing":
            return 400, "missing_body", "a JSON object body is required", None
        return 400, "malformed_body", "the request body must be a JSON object", None
    if kind == "missing":
        return 422, "missing_field", f"{field} is required", field
    if kind == "extra_forbidden":
        return 422, "unknown_field", f"{field} is not a field of this request", field
    expected = {
        "string_type": "a string",
        "int_type": "an integer",
        "bool_type": "true or false",
    }.get(kind)
    if expected:
        return 422, "wrong_type", f"{field} must be {expected}", field
    return 422, "invalid_field", f"{field}: {error.get('msg', 'invalid')}", field


async def _validation_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    # The most basic problem first: unparsable JSON, then a body that is not an object.
    status, code, message, field = min((_describe(e) for e in errors), key=lambda d: d[0])
    return error_response(status, code, message, field)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = _HTTP_CODES.get(exc.status_code, "error")
    message = exc.detail if isinstance(exc.detail, str) else code.replace("_", " ")
    headers = dict(exc.headers or {})
    if exc.status_code == 405:
        allowed = _allowed_methods(request)
        headers["Allow"] = ", ".join(allowed)
        message = f"{request.method} is not allowed here; use {', '.join(allowed)}"
    return error_response(exc.status_code, code, message, headers=headers)


def _allowed_methods(request: Request) -> list[str]:
    """Every method the API offers for this path, from its OpenAPI document (public,
    and it lists every route, whichever router holds it)."""
    path = request.url.path
    methods: set[str] = set()
    for template, operations in request.app.openapi()["paths"].items():
        pattern = re.sub(r"\\{[^/]+?\\}", "[^/]+", re.escape(template))
        if re.fullmatch(pattern, path):
            methods.update(m.upper() for m in operations)
    return sorted(methods)


async def _unexpected(request: Request, exc: Exception) -> Response:
    log.exception("unexpected error on %s %s", request.method, request.url.path)
    return error_response(500, "internal_error", "something went wrong on our side")


def install(app: FastAPI) -> None:
    app.add_exception_handler(AppError, _app_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)
