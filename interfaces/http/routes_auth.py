"""Sign-up, sign-in (password, or another provider) and sign-out; the session lives in a
host-only cookie."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from application.errors import Invalid
from interfaces.addresses import encoded_next, safe_next
from interfaces.bootstrap import Sandbar
from interfaces.http import present
from interfaces.http import responses as r
from interfaces.http.deps import App, Caller, session_cookie_name, session_token
from interfaces.http.schemas import Login, Register

router = APIRouter(prefix="/api/auth", tags=["auth"])


def _secure(request: Request) -> bool:
    settings = request.app.state.sandbar.settings
    return (
        settings.cookie_secure
        or settings.public_scheme == "https"  # (a __Host- cookie must be Secure)
        or request.url.scheme == "https"
    )


def _with_session(request: Request, response: Response, token: str) -> None:
    response.set_cookie(
        session_cookie_name(request),
        token,
        max_age=request.app.state.sandbar.settings.session_ttl,
        path="/",
        httponly=True,
        samesite="lax",
        secure=_secure(request),
    )  # no Domain attribute: host-only, never sent to sandbox subdomains


@router.post(
    "/register",
    status_code=201,
    response_model=r.User,
    responses=r.answers(
        r.GUARD, r.WRITE, r.BODY, {409: ["username_taken", "busy"], 429: ["rate_limited"]}
    ),
)
def register(body: Register, request: Request, sb: App) -> Response:
    client = request.client.host if request.client else "unknown"
    user, token = sb.accounts.register(body.username, body.password, body.email, client)
    response = present.JSON(present.user(user), status_code=201)
    _with_session(request, response, token)
    return response


@router.post(
    "/login",
    response_model=r.User,
    responses=r.answers(
        r.GUARD, r.WRITE, r.BODY, {401: ["bad_credentials"], 429: ["rate_limited"]}
    ),
)
def login(body: Login, request: Request, sb: App) -> Response:
    client = request.client.host if request.client else "unknown"
    user, token = sb.accounts.login(body.username, body.password, client)
    response = present.JSON(present.user(user))
    _with_session(request, response, token)
    return response


@router.post(
    "/logout",
    status_code=204,
    response_class=Response,
    responses=r.answers(r.GUARD, r.WRITE, r.SESSION),
)
def logout(request: Request, sb: App, _: Caller) -> Response:
    sb.accounts.logout(session_token(request) or "")
    response = Response(status_code=204)
    response.delete_cookie(
        session_cookie_name(request),
        path="/",
        httponly=True,
        samesite="lax",
        secure=_secure(request),
    )
    return response


@router.get("/me", response_model=r.User, responses=r.answers(r.GUARD, r.SESSION))
def me(sb: App, user_id: Caller) -> Response:
    return present.JSON(present.user(sb.accounts.me(user_id)))


# Signing in with another provider (docs/api.md: /api/auth/oidc/github, /api/auth/oidc/generic).


@router.get("/providers", response_model=list[r.Provider], responses=r.answers(r.GUARD))
def providers(request: Request, sb: App) -> Response:
    """The sign-in providers configured here, for a sign-in page's buttons."""
    return present.JSON(
        [{**p, "url": f"/api/auth/oidc/{p['name']}"} for p in sb.sign_in.providers()]
    )


def _callback_url(request: Request, sb: Sandbar, provider: str) -> str:
    origin = sb.addresses.api_origin(request.headers.get("host", ""))
    return f"{origin}/api/auth/oidc/{provider}/callback"


@router.get(
    "/oidc/{provider}",
    status_code=302,
    response_class=Response,
    responses={
        **r.redirect("to the provider's authorization page"),
        **r.answers(
            r.GUARD,
            {
                401: ["unauthenticated", "provider_unavailable"],
                404: ["no_provider"],
                422: ["invalid_field"],
            },
        ),
    },
)
def begin_sign_in(
    provider: str, request: Request, sb: App, next: str = "/", link: bool = False
) -> Response:
    """Off to the provider (state, nonce and PKCE). ``next``: a path to come back to;
    ``link=true``: link the provider's account to the signed-in user instead."""
    target = safe_next(next)
    if target is None:
        raise Invalid("next must be a path on this site, like /", field="next")
    link_user = None
    if link:
        link_user = sb.accounts.authenticate(session_token(request))
    url = sb.sign_in.begin(provider, _callback_url(request, sb, provider), target, link_user)
    return Response(status_code=302, headers={"location": url, "cache-control": "no-store"})


# The callback reads its parameters from the request itself (any value is the provider's
# to judge): declared here, so that no 422 for a value that cannot be wrong is.
_CALLBACK_PARAMETERS = [
    {"name": "provider", "in": "path", "required": True, "schema": {"type": "string"}},
    *(
        {"name": name, "in": "query", "required": False, "schema": {"type": "string"}}
        for name in ("code", "state", "error")
    ),
]


@router.get(
    "/oidc/{provider}/callback",
    status_code=302,
    response_class=Response,
    openapi_extra={"parameters": _CALLBACK_PARAMETERS},
    responses={
        **r.redirect("signed in: back to the page the sign-in began from"),
        **r.answers(
            r.GUARD,
            {
                400: ["invalid_state", "invalid_code"],
                401: ["provider_refused", "sign_in_failed"],
                404: ["no_provider", "not_found"],
                409: ["identity_taken", "username_taken", "busy"],
            },
        ),
    },
)
def finish_sign_in(request: Request, sb: App) -> Response:
    provider: str = request.path_params["provider"]
    params = {k: v for k, v in request.query_params.items() if k in ("code", "state", "error")}
    _, token, target = sb.sign_in.finish(provider, _callback_url(request, sb, provider), params)
    response = Response(
        status_code=302,
        headers={
            "location": encoded_next(target),
            "cache-control": "no-store",
            "referrer-policy": "no-referrer",
        },
    )
    _with_session(request, response, token)
    return response
