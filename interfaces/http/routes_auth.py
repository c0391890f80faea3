"""Password sign-up, sign-in and sign-out; the session lives in a host-only cookie."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from interfaces.http import present
from interfaces.http.deps import SESSION_COOKIE, App, Caller
from interfaces.http.schemas import Login, Register

router = APIRouter(prefix="/api/auth", tags=["auth"])


def _with_session(request: Request, response: Response, token: str) -> None:
    settings = request.app.state.sandbar.settings
    response.set_cookie(
        SESSION_COOKIE,
        token,
        max_age=settings.session_ttl,
        path="/",
        httponly=True,
        samesite="lax",
        secure=settings.cookie_secure or request.url.scheme == "https",
    )  # no Domain attribute: host-only, never sent to sandbox subdomains


@router.post("/register", status_code=201)
def register(body: Register, request: Request, sb: App) -> Response:
    client = request.client.host if request.client else "unknown"
    user, token = sb.accounts.register(body.username, body.password, body.email, client)
    response = present.JSON(present.user(user), status_code=201)
    _with_session(request, response, token)
    return response


@router.post("/login")
def login(body: Login, request: Request, sb: App) -> Response:
    client = request.client.host if request.client else "unknown"
    user, token = sb.accounts.login(body.username, body.password, client)
    response = present.JSON(present.user(user))
    _with_session(request, response, token)
    return response


@router.post("/logout", status_code=204)
def logout(request: Request, sb: App, _: Caller) -> Response:
    sb.accounts.logout(request.cookies[SESSION_COOKIE])
    response = Response(status_code=204)
    response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="lax")
    return response


@router.get("/me")
def me(sb: App, user_id: Caller) -> Response:
    return present.JSON(present.user(sb.accounts.me(user_id)))
