"""Signing in with OpenID Connect (a real provider on loopback: ``oidc-provider-mock``;
and a scripted one for bad ID tokens) and with GitHub (a loopback stand-in speaking its
OAuth and API formats), through a real ``sandbar serve``, following the redirects by hand
as a browser would."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import oidc_provider_mock
import pytest

from interfaces.bootstrap import Sandbar
from tests.conftest import PASSWORD, ServerProcess, register, running
from tests.errors import assert_error
from tests.oauth_standins import GitHubStandIn, ScriptedOIDC
from tests.upstream import serving

ALICE = oidc_provider_mock.User(
    sub="alice-sub",
    claims={
        "email": "alice@example.com",
        "email_verified": True,
        "preferred_username": "alice.smith",
        "name": "Alice Smith",
    },
)


@pytest.fixture(scope="module")
def provider() -> Iterator[str]:
    with oidc_provider_mock.run_server_in_thread(require_nonce=True, user_claims=[ALICE]) as s:
        yield f"http://localhost:{s.server_port}"


@pytest.fixture(scope="module")
def github() -> Iterator[tuple[GitHubStandIn, int]]:
    app = GitHubStandIn()
    with serving(app) as port:
        yield app, port


@pytest.fixture(scope="module")
def scripted() -> Iterator[ScriptedOIDC]:
    app = ScriptedOIDC()
    with serving(app) as port:
        app.issuer = f"http://127.0.0.1:{port}"
        yield app


def _server(env: dict[str, str], log: Path) -> Iterator[ServerProcess]:
    with running(env, log) as proc:
        yield proc
    text = log.read_text()
    assert "secret" not in text.lower(), text


@pytest.fixture(scope="module")
def server(
    server_env: dict[str, str],
    provider: str,
    github: tuple[GitHubStandIn, int],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ServerProcess]:
    gh = f"http://127.0.0.1:{github[1]}"
    env = {
        **server_env,
        "SANDBAR_OIDC_ISSUER": provider,
        "SANDBAR_OIDC_CLIENT_ID": "sandbar",
        "SANDBAR_OIDC_CLIENT_SECRET": "oidc-client-secret",
        "SANDBAR_OIDC_LABEL": "Mock SSO",
        "SANDBAR_GITHUB_CLIENT_ID": GitHubStandIn.CLIENT_ID,
        "SANDBAR_GITHUB_CLIENT_SECRET": GitHubStandIn.SECRET,
        "SANDBAR_GITHUB_AUTHORIZE_URL": f"{gh}/login/oauth/authorize",
        "SANDBAR_GITHUB_TOKEN_URL": f"{gh}/login/oauth/access_token",
        "SANDBAR_GITHUB_API_URL": gh,
    }
    yield from _server(env, tmp_path_factory.mktemp("sign-in") / "server.log")


@pytest.fixture(scope="module")
def scripted_server(
    server_env: dict[str, str], scripted: ScriptedOIDC, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    env = {
        **server_env,
        "SANDBAR_OIDC_ISSUER": scripted.issuer,
        "SANDBAR_OIDC_CLIENT_ID": ScriptedOIDC.CLIENT_ID,
        "SANDBAR_OIDC_CLIENT_SECRET": ScriptedOIDC.SECRET,
        "SANDBAR_OIDC_LINK_VERIFIED_EMAIL": "true",
    }
    yield from _server(env, tmp_path_factory.mktemp("scripted") / "server.log")


def browser(server: ServerProcess) -> httpx.Client:
    """A client on the API host (the base domain: where the callback sets the cookie)."""
    return httpx.Client(base_url=f"http://localhost:{server.port}", timeout=30)


def to_provider(client: httpx.Client, name: str, **params: str) -> str:
    r = client.get(f"/api/auth/oidc/{name}", params=params)
    assert r.status_code == 302, r.text
    return r.headers["location"]


def approve(authorize_url: str, sub: str) -> str:
    """oidc-provider-mock's consent form, submitted as ``sub``: the callback URL."""
    assert httpx.get(authorize_url).status_code == 200
    r = httpx.post(authorize_url, data={"sub": sub})
    assert r.status_code == 302, r.text
    return r.headers["location"]


def follow(client: httpx.Client, url: str) -> httpx.Response:
    """A URL on our server (absolute, as a provider redirects to it)."""
    parts = urlsplit(url)
    return client.get(f"{parts.path}?{parts.query}")


def sign_in(server: ServerProcess, sub: str, client: httpx.Client | None = None, **params: str):
    client = client or browser(server)
    callback = approve(to_provider(client, "generic", **params), sub)
    return client, follow(client, callback)


def test_providers_are_listed_and_unknown_ones_are_404(
    server: ServerProcess, scripted_server: ServerProcess
) -> None:
    listed = httpx.get(f"{server.url}/api/auth/providers").json()
    assert {(p["name"], p["label"], p["url"]) for p in listed} == {
        ("generic", "Mock SSO", "/api/auth/oidc/generic"),
        ("github", "GitHub", "/api/auth/oidc/github"),
    }
    assert [p["name"] for p in httpx.get(f"{scripted_server.url}/api/auth/providers").json()] == [
        "generic"
    ]
    assert httpx.get(f"{scripted_server.url}/api/auth/oidc/github").status_code == 404
    assert httpx.get(f"{server.url}/api/auth/oidc/gitlab/callback").status_code == 404


def test_the_authorization_request(server: ServerProcess, provider: str) -> None:
    url = to_provider(browser(server), "generic", next="/workspaces")
    assert url.startswith(f"{provider}/oauth2/authorize?")
    query = parse_qs(urlsplit(url).query)
    assert query["response_type"] == ["code"] and query["client_id"] == ["sandbar"]
    assert query["code_challenge_method"] == ["S256"] and len(query["code_challenge"][0]) == 43
    assert len(query["state"][0]) >= 32 and len(query["nonce"][0]) >= 20
    assert query["redirect_uri"] == [
        f"http://localhost:{server.port}/api/auth/oidc/generic/callback"
    ]
    assert "openid" in query["scope"][0].split()
    r = browser(server).get("/api/auth/oidc/generic", params={"next": "https://evil.example/"})
    assert_error(r, 422, field="next")


def test_a_new_subject_becomes_a_user_and_comes_back_as_the_same(
    server: ServerProcess,
) -> None:
    client, r = sign_in(server, "alice-sub", next="/after?x=1")
    assert r.status_code == 302 and r.headers["location"] == "/after?x=1"
    cookie = r.headers["set-cookie"].lower()
    assert cookie.startswith("sandbar_session=") and "httponly" in cookie and "domain" not in cookie
    me = client.get("/api/auth/me").json()
    assert me["username"].startswith("alice-smith")
    assert me["email"] == "alice@example.com" and me["display_name"] == "Alice Smith"
    again, r = sign_in(server, "alice-sub")
    assert r.status_code == 302
    assert again.get("/api/auth/me").json()["id"] == me["id"]
    # Another subject wanting the same name gets a name of its own.
    other, r = sign_in(server, "bob-sub")
    assert r.status_code == 302
    assert other.get("/api/auth/me").json()["id"] != me["id"]


def test_any_next_comes_back_percent_encoded(server: ServerProcess) -> None:
    """A ``next`` that is not plain ASCII comes back percent-encoded (issue 15: such a
    target was a 500 after the sign-in's state was spent)."""
    client, r = sign_in(server, "carol-sub", next="/\u2028x?q=caf\u00e9")
    assert r.status_code == 302, r.text
    assert r.headers["location"] == "/%E2%80%A8x?q=caf%C3%A9"
    assert client.get("/api/auth/me").status_code == 200


def test_bad_callbacks_make_no_session(server: ServerProcess, sandbar: Sandbar) -> None:
    client = browser(server)
    callback = approve(to_provider(client, "generic"), "carol-sub")
    # A forged state.
    parts = urlsplit(callback)
    code = parse_qs(parts.query)["code"][0]
    r = client.get(parts.path, params={"code": code, "state": "forged"})
    assert_error(r, 400, field="state")
    assert "set-cookie" not in r.headers
    # The genuine one works once; replayed, it is refused.
    assert follow(client, callback).status_code == 302
    replay = follow(browser(server), callback)
    assert replay.status_code == 400 and "set-cookie" not in replay.headers
    # A used code with a fresh state: the provider refuses it.
    fresh_state = parse_qs(urlsplit(to_provider(client, "generic")).query)["state"][0]
    r = client.get(parts.path, params={"code": code, "state": fresh_state})
    assert_error(r, 401, "sign_in_failed")
    assert "set-cookie" not in r.headers
    # The provider says no (the user denied it).
    fresh_state = parse_qs(urlsplit(to_provider(client, "generic")).query)["state"][0]
    r = client.get(parts.path, params={"error": "access_denied", "state": fresh_state})
    assert_error(r, 401, "provider_refused")
    assert "set-cookie" not in r.headers


def test_linking_needs_the_signed_in_user_to_ask(server: ServerProcess) -> None:
    password_user = register(f"http://localhost:{server.port}", "dora")
    email_twin = register(f"http://localhost:{server.port}", "erin")
    # Signing in as a new subject does not link to anyone silently...
    stranger, r = sign_in(server, "dora-sub")
    assert stranger.get("/api/auth/me").json()["id"] != password_user.id
    # ...but the signed-in user asking for it does.
    callback = approve(to_provider(password_user.client, "generic", link="true"), "dora-2-sub")
    r = follow(password_user.client, callback)
    assert r.status_code == 302
    fresh, r = sign_in(server, "dora-2-sub")
    assert fresh.get("/api/auth/me").json()["id"] == password_user.id
    # An identity linked to one user cannot be linked to another.
    callback = approve(to_provider(email_twin.client, "generic", link="true"), "dora-2-sub")
    r = follow(email_twin.client, callback)
    assert_error(r, 409, "identity_taken")
    # Linking without being signed in is refused before anything happens.
    assert browser(server).get("/api/auth/oidc/generic?link=true").status_code == 401


def test_github(server: ServerProcess, github: tuple[GitHubStandIn, int]) -> None:
    app, port = github
    client = browser(server)
    url = to_provider(client, "github", next="/home")
    query = parse_qs(urlsplit(url).query)
    assert url.startswith(f"http://127.0.0.1:{port}/login/oauth/authorize?")
    assert query["client_id"] == [GitHubStandIn.CLIENT_ID]
    assert query["code_challenge_method"] == ["S256"]
    callback = httpx.get(url).headers["location"]  # the stand-in approves at once
    r = follow(client, callback)
    assert r.status_code == 302 and r.headers["location"] == "/home", r.text
    me = client.get("/api/auth/me").json()
    assert me["username"] == "octo_cat" and me["email"] == "octo@example.com"
    # The same GitHub id again: the same user, even if the login changed.
    app.user = {**app.user, "login": "renamed"}
    again = browser(server)
    follow(again, httpx.get(to_provider(again, "github")).headers["location"])
    assert again.get("/api/auth/me").json()["id"] == me["id"]
    # A code GitHub does not know.
    state = parse_qs(urlsplit(to_provider(client, "github")).query)["state"][0]
    r = client.get("/api/auth/oidc/github/callback", params={"code": "nope", "state": state})
    assert "incorrect or expired" in assert_error(r, 401)["message"]


@pytest.mark.parametrize("flaw", ["expired", "audience", "signature", "nonce", "issuer"])
def test_bad_id_tokens_are_refused(
    scripted_server: ServerProcess, scripted: ScriptedOIDC, sandbar: Sandbar, flaw: str
) -> None:
    scripted.flaw = flaw
    scripted.subject = f"flawed-{flaw}"
    scripted.claims = {"email": f"{flaw}@flawed.example", "email_verified": True}
    try:
        client = browser(scripted_server)
        callback = httpx.get(to_provider(client, "generic")).headers["location"]
        r = follow(client, callback)
    finally:
        scripted.flaw = None
    assert_error(r, 401, "sign_in_failed")
    assert "set-cookie" not in r.headers
    assert client.get("/api/auth/me").status_code == 401
    assert sandbar.reads.users_by_email(f"{flaw}@flawed.example") == []  # nothing recorded


def test_a_good_scripted_token_signs_in(
    scripted_server: ServerProcess, scripted: ScriptedOIDC
) -> None:
    scripted.subject = "well-formed"
    scripted.claims = {"email": "good@example.com", "email_verified": True, "name": "Good"}
    client = browser(scripted_server)
    r = follow(client, httpx.get(to_provider(client, "generic")).headers["location"])
    assert r.status_code == 302, r.text
    assert client.get("/api/auth/me").json()["email"] == "good@example.com"


def test_password_sign_in_still_works_for_linked_users(server: ServerProcess) -> None:
    user = register(f"http://localhost:{server.port}", "frank")
    callback = approve(to_provider(user.client, "generic", link="true"), "frank-sub")
    assert follow(user.client, callback).status_code == 302
    r = httpx.post(
        f"{server.url}/api/auth/login", json={"username": user.username, "password": PASSWORD}
    )
    assert r.status_code == 200 and r.json()["id"] == user.id


def test_a_verified_email_links_only_where_allowed(
    scripted_server: ServerProcess, scripted: ScriptedOIDC
) -> None:
    """This server allows it (SANDBAR_OIDC_LINK_VERIFIED_EMAIL): a provider that vouches
    for an account's email signs in to that account; an unverified one does not."""
    owner = httpx.Client(base_url=scripted_server.url)
    r = owner.post(
        "/api/auth/register",
        json={"username": "gina-pw", "password": PASSWORD, "email": "gina@example.com"},
    )
    assert r.status_code == 201
    gina = r.json()["id"]
    scripted.subject = "gina-unverified"
    scripted.claims = {"email": "gina@example.com", "email_verified": False}
    client = browser(scripted_server)
    follow(client, httpx.get(to_provider(client, "generic")).headers["location"])
    assert client.get("/api/auth/me").json()["id"] != gina
    scripted.subject = "gina-verified"
    scripted.claims = {"email": "gina@example.com", "email_verified": True}
    client = browser(scripted_server)
    follow(client, httpx.get(to_provider(client, "generic")).headers["location"])
    assert client.get("/api/auth/me").json()["id"] == gina


def test_signing_in_in_a_real_browser(server: ServerProcess, chromium_path: str) -> None:
    """Headless Chromium clicks through the provider's form and lands signed in."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser_ = p.chromium.launch(
            executable_path=chromium_path, args=["--no-sandbox"], chromium_sandbox=False
        )
        try:
            page = browser_.new_page()
            page.goto(f"http://localhost:{server.port}/api/auth/oidc/generic?next=/api/auth/me")
            page.fill("input[name=sub]", "browser-sub")
            page.click("button:has-text('Authorize')")
            page.wait_for_url(f"http://localhost:{server.port}/api/auth/me")
            me = page.locator("body").inner_text()
            assert '"username":"browser-sub"' in me.replace(" ", ""), me
            cookies = {c["name"]: c for c in page.context.cookies()}
            assert cookies["sandbar_session"]["httpOnly"]
            assert cookies["sandbar_session"]["domain"] == "localhost"
        finally:
            browser_.close()


def test_the_linked_providers_are_listed_and_nothing_of_theirs_leaks(
    server: ServerProcess, github: tuple[GitHubStandIn, int]
) -> None:
    """``/api/auth/me`` lists each provider account linked to the user, oldest first, as
    the provider's name and when: not the account's id there, nor any token."""
    app, _ = github
    was = app.user
    user = register(f"http://localhost:{server.port}", "hana")
    me = user.client.get("/api/auth/me").json()
    assert me["providers"] == []
    # Linked: the generic provider first, then GitHub (as another GitHub user).
    callback = approve(to_provider(user.client, "generic", link="true"), "hana-sub")
    assert follow(user.client, callback).status_code == 302
    app.user = {**app.user, "id": 777001, "login": "hana-gh"}
    callback = httpx.get(to_provider(user.client, "github", link="true")).headers["location"]
    assert follow(user.client, callback).status_code == 302
    r = user.client.get("/api/auth/me")
    me = r.json()
    assert [p["provider"] for p in me["providers"]] == ["generic", "github"]
    for linked in me["providers"]:
        assert set(linked) == {"provider", "linked_at"}
        assert _time(linked["linked_at"]) > _time(me["created_at"])
    assert "hana-sub" not in r.text and "777001" not in r.text
    assert not any(token in r.text for token in app.tokens)
    # Signing in again says the same, by password as by the provider.
    again = httpx.post(
        f"{server.url}/api/auth/login", json={"username": user.username, "password": PASSWORD}
    )
    assert again.status_code == 200 and again.json()["providers"] == me["providers"]
    by_github = browser(server)
    follow(by_github, httpx.get(to_provider(by_github, "github")).headers["location"])
    assert by_github.get("/api/auth/me").json() == me
    app.user = was
    # A user made by a provider has that one linked from the start.
    client, _ = sign_in(server, "iris-sub")
    made = client.get("/api/auth/me").json()
    assert [p["provider"] for p in made["providers"]] == ["generic"]
    assert _time(made["providers"][0]["linked_at"]) >= _time(made["created_at"])


def _time(rfc3339: str) -> datetime:
    assert rfc3339.endswith("Z"), rfc3339
    return datetime.fromisoformat(rfc3339)


def test_linking_a_provider_from_the_console_account_page(
    server: ServerProcess, chromium_path: str
) -> None:
    """In a real browser: the console's account page offers each provider not linked yet;
    the provider's form approves; back on the account page, it is listed as linked and
    offered no more."""
    from playwright.sync_api import expect, sync_playwright

    origin = f"http://localhost:{server.port}"
    user = register(origin, "julia")
    with sync_playwright() as p:
        browser_ = p.chromium.launch(
            executable_path=chromium_path, args=["--no-sandbox"], chromium_sandbox=False
        )
        try:
            page = browser_.new_page(base_url=origin)
            page.goto("/#/signin")
            page.get_by_label("Username").fill(user.username)
            page.get_by_label("Password").fill(PASSWORD)
            page.get_by_role("button", name="Sign in", exact=True).click()
            page.get_by_role("heading", name="Workspaces").wait_for()
            page.goto("/#/account")
            expect(page.get_by_text("No provider's account is linked to this one.")).to_be_visible()
            expect(page.get_by_role("link", name="Link GitHub")).to_be_visible()
            page.get_by_role("link", name="Link Mock SSO").click()
            page.fill("input[name=sub]", "julia-sub")
            page.click("button:has-text('Authorize')")
            page.wait_for_url(f"{origin}/#/account")
            linked = page.get_by_role("list", name="Linked providers")
            expect(linked.locator("li[data-provider='generic']")).to_contain_text("Mock SSO")
            expect(page.get_by_role("link", name="Link Mock SSO")).to_have_count(0)
            expect(page.get_by_role("link", name="Link GitHub")).to_be_visible()
        finally:
            browser_.close()
    me = user.client.get("/api/auth/me").json()
    assert [p["provider"] for p in me["providers"]] == ["generic"]
