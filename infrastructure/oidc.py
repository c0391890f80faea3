"""Sign-in providers: any OpenID Connect provider, and GitHub's OAuth.

Both use authlib's OAuth2 client for the authorization code flow with PKCE (S256). The
OIDC provider is found by discovery from its issuer; its ID token is checked with joserfc
(authlib's JOSE successor): signature against the provider's JWKS, issuer, audience,
expiry and nonce. GitHub has no ID token: the user's id, login and primary verified email
come from its API with the access token."""

from __future__ import annotations

import threading
import time
from typing import Any

import httpx
from authlib.common.errors import AuthlibBaseError
from authlib.integrations.httpx_client import OAuth2Client
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

from infrastructure.settings import Settings
from infrastructure.sign_in_providers import Authorization, Claims, ProviderError

TIMEOUT = 10.0
LEEWAY = 60  # seconds of clock skew allowed on exp/iat
SIGNING_ALGORITHMS = ["RS256", "RS384", "RS512", "PS256", "ES256", "ES384", "EdDSA"]


class OIDCProvider:
    name = "generic"

    def __init__(self, settings: Settings) -> None:
        self._issuer = (settings.oidc_issuer or "").rstrip("/")
        self._client_id = settings.oidc_client_id or ""
        self._secret = settings.oidc_client_secret or ""
        self._scope = settings.oidc_scopes
        self.label = settings.oidc_label
        self._metadata: dict[str, Any] | None = None
        self._keys: tuple[float, KeySet] | None = None
        self._lock = threading.RLock()

    def _client(self, redirect_uri: str) -> OAuth2Client:
        return OAuth2Client(
            self._client_id,
            self._secret,
            scope=self._scope,
            redirect_uri=redirect_uri,
            code_challenge_method="S256",
            timeout=TIMEOUT,
        )

    def metadata(self) -> dict[str, Any]:
        with self._lock:
            if self._metadata is None:
                url = f"{self._issuer}/.well-known/openid-configuration"
                try:
                    found = httpx.get(url, timeout=TIMEOUT).raise_for_status().json()
                except (httpx.HTTPError, ValueError) as e:
                    raise ProviderError(f"the provider's discovery document failed ({e})") from None
                if found.get("issuer", "").rstrip("/") != self._issuer:
                    raise ProviderError("the provider's discovery document names another issuer")
                self._metadata = found
            return self._metadata

    def authorize(self, redirect_uri: str, state: str, verifier: str, nonce: str) -> Authorization:
        endpoint = self.metadata()["authorization_endpoint"]
        url, _ = self._client(redirect_uri).create_authorization_url(
            endpoint, state=state, code_verifier=verifier, nonce=nonce
        )
        return Authorization(url, nonce)

    def finish(self, redirect_uri: str, code: str, verifier: str, nonce: str | None) -> Claims:
        metadata = self.metadata()
        try:
            token = self._client(redirect_uri).fetch_token(
                metadata["token_endpoint"], code=code, code_verifier=verifier
            )
        except (AuthlibBaseError, httpx.HTTPError, ValueError) as e:
            raise ProviderError(f"the provider refused the code ({_reason(e)})") from None
        id_token = token.get("id_token")
        if not isinstance(id_token, str):
            raise ProviderError("the provider sent no ID token")
        claims = self._verify(id_token, nonce)
        return Claims(
            subject=str(claims["sub"]),
            username_hint=claims.get("preferred_username") or claims.get("nickname"),
            email=claims.get("email") if isinstance(claims.get("email"), str) else None,
            email_verified=claims.get("email_verified") is True,
            name=claims.get("name") if isinstance(claims.get("name"), str) else None,
        )

    def _verify(self, id_token: str, nonce: str | None) -> dict[str, Any]:
        try:
            decoded = self._decode(id_token, refresh=False)
        except JoseError:
            decoded = self._decode(id_token, refresh=True)  # the provider may have new keys
        # With no nonce to expect, the token's must still be there (any value).
        expected_nonce: jwt.ClaimsOption = {"essential": True}
        if nonce is not None:
            expected_nonce["value"] = nonce
        registry = jwt.JWTClaimsRegistry(
            leeway=LEEWAY,
            iss={"essential": True, "value": self._issuer},
            aud={"essential": True, "value": self._client_id},
            sub={"essential": True},
            exp={"essential": True},
            nonce=expected_nonce,
        )
        try:
            registry.validate(decoded.claims)
        except JoseError as e:
            raise ProviderError(f"the ID token is not valid ({e.error}: {e.description})") from None
        return dict(decoded.claims)

    def _decode(self, id_token: str, refresh: bool) -> Any:
        try:
            return jwt.decode(id_token, self._key_set(refresh), algorithms=SIGNING_ALGORITHMS)
        except JoseError as e:
            if refresh:
                raise ProviderError(f"the ID token's signature is not valid ({e.error})") from None
            raise
        except ValueError as e:
            raise ProviderError(f"the ID token is malformed ({e})") from None

    def _key_set(self, refresh: bool) -> KeySet:
        with self._lock:
            if self._keys is None or (refresh and time.monotonic() - self._keys[0] > 10):
                url = self.metadata()["jwks_uri"]
                try:
                    jwks = httpx.get(url, timeout=TIMEOUT).raise_for_status().json()
                    self._keys = (time.monotonic(), KeySet.import_key_set(jwks))
                except (httpx.HTTPError, ValueError, JoseError) as e:
                    raise ProviderError(f"the provider's keys could not be read ({e})") from None
            return self._keys[1]


class GitHubProvider:
    name = "github"
    label = "GitHub"

    def __init__(self, settings: Settings) -> None:
        self._client_id = settings.github_client_id or ""
        self._secret = settings.github_client_secret or ""
        self._authorize_url = settings.github_authorize_url
        self._token_url = settings.github_token_url
        self._api = settings.github_api_url.rstrip("/")

    def _client(self, redirect_uri: str) -> OAuth2Client:
        return OAuth2Client(
            self._client_id,
            self._secret,
            scope="read:user user:email",
            redirect_uri=redirect_uri,
            code_challenge_method="S256",
            timeout=TIMEOUT,
        )

    def authorize(self, redirect_uri: str, state: str, verifier: str, nonce: str) -> Authorization:
        url, _ = self._client(redirect_uri).create_authorization_url(
            self._authorize_url, state=state, code_verifier=verifier
        )
        return Authorization(url, None)

    def finish(self, redirect_uri: str, code: str, verifier: str, nonce: str | None) -> Claims:
        client = self._client(redirect_uri)
        try:
            token = client.fetch_token(
                self._token_url,
                code=code,
                code_verifier=verifier,
                headers={"accept": "application/json"},
            )
        except (AuthlibBaseError, httpx.HTTPError, ValueError) as e:
            raise ProviderError(f"GitHub refused the code ({_reason(e)})") from None
        if "access_token" not in token:
            raise ProviderError("GitHub sent no access token")
        headers = {"accept": "application/vnd.github+json", "x-github-api-version": "2022-11-28"}
        try:
            user = client.get(f"{self._api}/user", headers=headers).raise_for_status().json()
            emails = client.get(f"{self._api}/user/emails", headers=headers)
            listed = emails.json() if emails.status_code == 200 else []
        except (httpx.HTTPError, ValueError) as e:
            raise ProviderError(f"GitHub's API failed ({e})") from None
        if not isinstance(user, dict) or not isinstance(user.get("id"), int):
            raise ProviderError("GitHub's API sent no user id")
        primary = next(
            (
                e["email"]
                for e in listed
                if isinstance(e, dict) and e.get("primary") and e.get("verified")
            ),
            None,
        )
        return Claims(
            subject=str(user["id"]),
            username_hint=user.get("login"),
            email=primary,
            email_verified=primary is not None,
            name=user.get("name") if isinstance(user.get("name"), str) else None,
        )


def _reason(e: Exception) -> str:
    text = getattr(e, "description", None) or getattr(e, "error", None) or str(e)
    return str(text).splitlines()[0][:200] if text else type(e).__name__
