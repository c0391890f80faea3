"""Loopback stand-ins for sign-in providers no test may reach, speaking their real wire
formats: GitHub's OAuth endpoints and user API, and a scripted OpenID Connect provider
that can be told to issue a bad ID token (expired, for another audience, badly signed, with
the wrong nonce or issuer), for the cases a well-behaved provider never shows."""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import time
from typing import Any
from urllib.parse import parse_qs, urlencode

from joserfc import jwt
from joserfc.jwk import RSAKey


async def _read(receive: Any) -> bytes:
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            return body


async def _answer(send: Any, status: int, payload: Any = None, location: str | None = None) -> None:
    headers = [(b"content-type", b"application/json")]
    if location:
        headers.append((b"location", location.encode()))
    body = json.dumps(payload).encode() if payload is not None else b""
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _s256(verifier: str) -> str:
    digest = hashlib.sha256(verifier.encode()).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


class GitHubStandIn:
    """/login/oauth/authorize approves at once (as ``user``), /login/oauth/access_token
    checks client, code (single use) and PKCE verifier, /user and /user/emails answer
    for the token."""

    __test__ = False
    CLIENT_ID = "gh-client"
    SECRET = "gh-secret"

    def __init__(self) -> None:
        self.user: dict[str, Any] = {"id": 4242, "login": "Octo_Cat", "name": "Octo Cat"}
        self.emails: list[dict[str, Any]] = [
            {"email": "octo@example.com", "primary": True, "verified": True},
            {"email": "old@example.com", "primary": False, "verified": True},
        ]
        self.codes: dict[str, dict[str, str]] = {}
        self.tokens: set[str] = set()

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        query = {k: v[0] for k, v in parse_qs(scope["query_string"].decode()).items()}
        body = await _read(receive)
        path = scope["path"]
        auth = dict(scope["headers"]).get(b"authorization", b"").decode()
        if path == "/login/oauth/authorize":
            code = secrets.token_hex(10)
            self.codes[code] = {
                "challenge": query.get("code_challenge", ""),
                "method": query.get("code_challenge_method", ""),
                "redirect_uri": query.get("redirect_uri", ""),
            }
            target = f"{query['redirect_uri']}?{urlencode({'code': code, 'state': query['state']})}"
            await _answer(send, 302, location=target)
        elif path == "/login/oauth/access_token":
            form = {k: v[0] for k, v in parse_qs(body.decode()).items()}
            client_id, secret = form.get("client_id"), form.get("client_secret")
            if auth.startswith("Basic "):
                client_id, _, secret = base64.b64decode(auth[6:]).decode().partition(":")
            issued = self.codes.pop(form.get("code", ""), None)
            if (client_id, secret) != (self.CLIENT_ID, self.SECRET):
                await _answer(send, 200, {"error": "incorrect_client_credentials"})
            elif issued is None:
                await _answer(
                    send,
                    200,
                    {
                        "error": "bad_verification_code",
                        "error_description": "The code passed is incorrect or expired.",
                    },
                )
            elif (
                issued["method"] != "S256"
                or _s256(form.get("code_verifier", "")) != issued["challenge"]
            ):
                await _answer(send, 200, {"error": "invalid_grant", "error_description": "PKCE"})
            else:
                token = "gho_" + secrets.token_hex(16)
                self.tokens.add(token)
                await _answer(
                    send, 200, {"access_token": token, "token_type": "bearer", "scope": "user"}
                )
        elif path in ("/user", "/user/emails"):
            if auth.split(" ", 1)[-1] not in self.tokens:
                await _answer(send, 401, {"message": "Bad credentials"})
            else:
                await _answer(send, 200, self.user if path == "/user" else self.emails)
        else:
            await _answer(send, 404, {"message": "Not Found"})


class ScriptedOIDC:
    """An OpenID Connect provider that approves at once and issues the ID token it is
    told to: ``flaw`` in (None, "expired", "audience", "signature", "nonce", "issuer")."""

    __test__ = False
    CLIENT_ID = "sandbar-test"
    SECRET = "oidc-secret"

    def __init__(self) -> None:
        self.issuer = ""  # set once the port is known
        self.key = RSAKey.generate_key(2048, parameters={"kid": "k1", "use": "sig"})
        self.stranger = RSAKey.generate_key(2048, parameters={"kid": "k1", "use": "sig"})
        self.flaw: str | None = None
        self.subject = "scripted-subject"
        self.claims: dict[str, Any] = {"email": "sso@example.com", "email_verified": True}
        self.codes: dict[str, dict[str, str]] = {}

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        query = {k: v[0] for k, v in parse_qs(scope["query_string"].decode()).items()}
        body = await _read(receive)
        path = scope["path"]
        if path == "/.well-known/openid-configuration":
            await _answer(
                send,
                200,
                {
                    "issuer": self.issuer,
                    "authorization_endpoint": f"{self.issuer}/authorize",
                    "token_endpoint": f"{self.issuer}/token",
                    "jwks_uri": f"{self.issuer}/jwks",
                    "response_types_supported": ["code"],
                    "subject_types_supported": ["public"],
                    "id_token_signing_alg_values_supported": ["RS256"],
                    "code_challenge_methods_supported": ["S256"],
                },
            )
        elif path == "/jwks":
            await _answer(send, 200, {"keys": [self.key.as_dict(private=False)]})
        elif path == "/authorize":
            code = secrets.token_hex(10)
            self.codes[code] = {
                "nonce": query.get("nonce", ""),
                "challenge": query.get("code_challenge", ""),
            }
            target = f"{query['redirect_uri']}?{urlencode({'code': code, 'state': query['state']})}"
            await _answer(send, 302, location=target)
        elif path == "/token":
            form = {k: v[0] for k, v in parse_qs(body.decode()).items()}
            issued = self.codes.pop(form.get("code", ""), None)
            if issued is None or _s256(form.get("code_verifier", "")) != issued["challenge"]:
                await _answer(send, 400, {"error": "invalid_grant"})
                return
            await _answer(
                send,
                200,
                {
                    "access_token": secrets.token_hex(16),
                    "token_type": "Bearer",
                    "expires_in": 3600,
                    "id_token": self._id_token(issued["nonce"]),
                },
            )
        else:
            await _answer(send, 404, {"error": "not_found"})

    def _id_token(self, nonce: str) -> str:
        now = int(time.time())
        claims = {
            "iss": self.issuer,
            "sub": self.subject,
            "aud": self.CLIENT_ID,
            "iat": now,
            "exp": now + 300,
            "nonce": nonce,
            **self.claims,
        }
        if self.flaw == "expired":
            claims["iat"], claims["exp"] = now - 7200, now - 3600
        elif self.flaw == "audience":
            claims["aud"] = "someone-else"
        elif self.flaw == "nonce":
            claims["nonce"] = "not-the-nonce"
        elif self.flaw == "issuer":
            claims["iss"] = "http://evil.example"
        key = self.stranger if self.flaw == "signature" else self.key
        return jwt.encode({"alg": "RS256", "kid": "k1"}, claims, key)
