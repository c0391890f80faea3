"""Password accounts and sessions over HTTP: the session cookie's attributes, duplicate
names, sign-in failures that look alike and slow down, sign-out that revokes, cross-origin
writes refused, and no password, hash or session token in the event log or the database.

The login throttle lives in the one shared server process and counts failures per username
and per client address. So that the failures here count against no other test's client
(127.0.0.1), every test that fails a sign-in does so from a loopback address of its own:
Linux routes all of 127.0.0.0/8 to the loopback interface."""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Iterator
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from psycopg import sql

from interfaces.bootstrap import Sandbar
from tests.conftest import PASSWORD, ServerProcess
from tests.errors import assert_error
from tests.waiting import wait_until

COOKIE = "sandbar_session"
USER_KEYS = {"id", "username", "email", "display_name", "created_at", "providers"}


# --- helpers --------------------------------------------------------------------------


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def own_address() -> str:
    """A loopback address no other test uses."""
    return f"127.{random.randint(1, 254)}.{random.randint(0, 255)}.{random.randint(1, 254)}"


def client(server: str, address: str | None = None, **kwargs: Any) -> httpx.Client:
    """A client of its own, from ``address`` (a fresh loopback address by default)."""
    transport = httpx.HTTPTransport(local_address=address or own_address())
    return httpx.Client(base_url=server, transport=transport, timeout=30, **kwargs)


def parse_set_cookie(header: str) -> tuple[str, str, dict[str, str]]:
    """(name, value, {attribute in lower case: value}) of one Set-Cookie header."""
    first, *rest = (p.strip() for p in header.split(";"))
    name, _, value = first.partition("=")
    attrs = {}
    for part in rest:
        key, _, val = part.partition("=")
        attrs[key.strip().lower()] = val.strip()
    return name.strip(), value.strip().strip('"'), attrs


def session_cookie(r: httpx.Response) -> tuple[str, dict[str, str]]:
    """The one sandbar_session Set-Cookie of ``r``: (value, attributes)."""
    headers = [h for h in r.headers.get_list("set-cookie") if h.startswith(f"{COOKIE}=")]
    assert len(headers) == 1, r.headers.get_list("set-cookie")
    _, value, attrs = parse_set_cookie(headers[0])
    return value, attrs


def sign_up(c: httpx.Client, username: str, password: str = PASSWORD, **extra: Any):
    return c.post("/api/auth/register", json={"username": username, "password": password, **extra})


def sign_in(c: httpx.Client, username: str, password: str = PASSWORD) -> httpx.Response:
    return c.post("/api/auth/login", json={"username": username, "password": password})


def as_token(server: str, token: str) -> httpx.Client:
    """A client that sends ``token`` as its session cookie, as a replaying attacker would."""
    return httpx.Client(base_url=server, timeout=30, headers={"cookie": f"{COOKIE}={token}"})


# --- the session cookie ---------------------------------------------------------------


def test_register_sets_a_host_only_httponly_lax_cookie(server):
    with client(server) as c:
        name = unique("cookie")
        r = sign_up(c, name, email="cookie@example.com")
    assert r.status_code == 201, r.text
    token, attrs = session_cookie(r)
    assert len(token) >= 32  # a random token, not something guessable
    assert "httponly" in attrs
    assert attrs.get("samesite", "").lower() == "lax"
    assert attrs.get("path") == "/"
    assert "domain" not in attrs, "host-only: never sent to sandbox subdomains"
    assert "secure" not in attrs, "plain http here; Secure would make the browser drop it"
    assert int(attrs["max-age"]) > 0
    # The answer is the user, and nothing secret.
    body = r.json()
    assert set(body) == USER_KEYS
    assert body["username"] == name
    assert body["email"] == "cookie@example.com"
    uuid.UUID(body["id"])
    assert token not in r.text
    assert "argon2" not in r.text and PASSWORD not in r.text


def test_the_cookie_signs_the_client_in(server):
    with client(server) as c:
        name = unique("me")
        assert sign_up(c, name).status_code == 201
        r = c.get("/api/auth/me")
    assert r.status_code == 200, r.text
    assert set(r.json()) == USER_KEYS
    assert r.json()["username"] == name
    assert r.json()["display_name"] == name
    assert r.json()["created_at"].endswith("Z")


def test_a_session_expires(server_env, tmp_path: Path):
    """A second server on the same database whose sessions last 2 seconds: the cookie says
    so (Max-Age), and the server refuses the token once the time has passed."""
    proc = ServerProcess({**server_env, "SANDBAR_SESSION_TTL": "2"}, tmp_path / "ttl.log").start()
    try:
        with client(proc.url) as c:
            r = sign_up(c, unique("ttl"))
            assert r.status_code == 201, r.text
            token, attrs = session_cookie(r)
            assert attrs["max-age"] == "2"
            assert c.get("/api/auth/me").status_code == 200
        with as_token(proc.url, token) as late:  # refused once the 2 s have passed
            r = wait_until(
                lambda: late.get("/api/auth/me"),
                until=lambda r: r.status_code != 200,
                interval=0.1,
                what="the session refused once expired",
            )
            assert_error(r, 401)
    finally:
        proc.stop()
    assert "Traceback" not in (tmp_path / "ttl.log").read_text()


# --- duplicate usernames --------------------------------------------------------------


@pytest.mark.parametrize("again", ["lower", "upper", "padded"])
def test_duplicate_usernames_are_409_case_insensitively(server, again):
    stem = uuid.uuid4().hex[:10]
    with client(server) as c:
        r = sign_up(c, f"Bob-{stem}")
        assert r.status_code == 201, r.text
        assert r.json()["username"] == f"bob-{stem}"
    second = {"lower": f"bob-{stem}", "upper": f"BOB-{stem.upper()}", "padded": f" bob-{stem} "}
    other_password = "another password entirely"
    with client(server) as c:
        r = sign_up(c, second[again], other_password)
        assert_error(r, 409, "username_taken")
        assert not r.headers.get_list("set-cookie"), "a refused sign-up opens no session"
        assert COOKIE not in c.cookies
        # The first account is untouched: its password still works, the other does not.
        assert_error(sign_in(c, f"bob-{stem}", other_password), 401)
        assert sign_in(c, f"bob-{stem}").status_code == 200


# --- signing in -----------------------------------------------------------------------


def test_login_answers_the_user_with_a_new_session(server):
    name = unique("login")
    with client(server) as first:
        r = sign_up(first, name)
        assert r.status_code == 201
        registered, _ = session_cookie(r)
    with client(server) as second:
        r = sign_in(second, name.upper())  # usernames are case-insensitive
        assert r.status_code == 200, r.text
        assert set(r.json()) == USER_KEYS
        assert r.json()["username"] == name
        token, attrs = session_cookie(r)
        assert token != registered
        assert "httponly" in attrs and "domain" not in attrs and "secure" not in attrs
        assert attrs.get("samesite", "").lower() == "lax" and attrs.get("path") == "/"
        assert second.get("/api/auth/me").json()["username"] == name
    # Both sessions are live: signing in elsewhere does not sign the first one out.
    for t in (registered, token):
        with as_token(server, t) as c:
            assert c.get("/api/auth/me").status_code == 200


def test_login_failures_look_the_same_for_unknown_users_and_wrong_passwords(server):
    name = unique("alike")
    with client(server) as c:
        assert sign_up(c, name).status_code == 201
    with client(server) as c:
        wrong = sign_in(c, name, "not the password")
        unknown = sign_in(c, unique("ghost"), "not the password")
        unknown_right_password = sign_in(c, unique("ghost"), PASSWORD)
        assert COOKIE not in c.cookies
    error = assert_error(wrong, 401)
    assert wrong.status_code == unknown.status_code == unknown_right_password.status_code
    assert wrong.content == unknown.content == unknown_right_password.content
    assert "password" in error["message"] or "credentials" in error["message"]

    def visible(r: httpx.Response) -> dict[str, str]:
        return {k: v for k, v in r.headers.items() if k not in {"date"}}

    assert visible(wrong) == visible(unknown) == visible(unknown_right_password)
    assert not wrong.headers.get_list("set-cookie")


def test_five_failures_for_a_username_from_one_address_then_429_with_retry_after(server):
    name = unique("victim")
    victim = client(server)
    assert sign_up(victim, name).status_code == 201
    attacker = own_address()
    with client(server, attacker) as c:
        for _ in range(5):  # SANDBAR_LOGIN_MAX_FAILURES defaults to 5
            assert_error(sign_in(c, name, "guess-guess"), 401)
        # Even the right password is refused now: no telling whether a guess was right.
        for password in ("guess-guess", PASSWORD):
            limited = sign_in(c, name, password)
            error = assert_error(limited, 429, "rate_limited")
            assert 1 <= int(limited.headers["retry-after"]) <= 300
            assert error["message"]
            assert COOKIE not in c.cookies
    # The limit is on the username from that address: an attacker elsewhere cannot lock
    # the owner out (issue 15), who signs in from their own address as ever ...
    with client(server) as elsewhere:
        assert sign_in(elsewhere, name.upper()).status_code == 200
    # ... while other users are unaffected, even from the attacker's address.
    other = unique("bystander")
    with client(server) as c:
        assert sign_up(c, other).status_code == 201
    with client(server, attacker) as c:
        assert sign_in(c, other).status_code == 200
    # A session opened before the lock-out keeps working.
    assert victim.get("/api/auth/me").status_code == 200
    victim.close()


def test_a_username_guessed_from_many_addresses_is_limited_in_the_end(server):
    """Guesses spread over many addresses (a botnet) meet a per-username ceiling, twenty
    times the per-address limit: then every address waits, the owner's too."""
    name = unique("target")
    with client(server) as c:
        assert sign_up(c, name).status_code == 201
    for _ in range(25):  # 25 addresses, 4 guesses each: under each one's limit of 5
        with client(server) as c:
            for _ in range(4):
                assert_error(sign_in(c, name, "guess-guess"), 401)
    with client(server) as elsewhere:
        r = sign_in(elsewhere, name, PASSWORD)
        assert_error(r, 429, "rate_limited")
        assert 1 <= int(r.headers["retry-after"]) <= 300


def test_unknown_usernames_are_limited_the_same_way(server):
    """No way to tell a real username from its lock-out either."""
    ghost = unique("ghost")
    with client(server) as c:
        for _ in range(5):
            assert_error(sign_in(c, ghost, "guess-guess"), 401)
        r = sign_in(c, ghost, "guess-guess")
        assert_error(r, 429, "rate_limited")
        assert int(r.headers["retry-after"]) >= 1


def test_a_success_clears_the_username_failures(server):
    name = unique("forgetful")
    with client(server) as c:
        assert sign_up(c, name).status_code == 201
        for _ in range(4):
            assert_error(sign_in(c, name, "typo-typo"), 401)
        assert sign_in(c, name).status_code == 200
        for _ in range(4):
            assert_error(sign_in(c, name, "typo-typo"), 401)
        assert sign_in(c, name).status_code == 200


def test_a_client_address_gets_a_larger_allowance_then_is_limited(server):
    """Many people may share an address: five failures on different usernames do not lock
    the address out, but an address that keeps failing is limited in the end."""
    real = unique("real")
    with client(server) as c:
        assert sign_up(c, real).status_code == 201
    address = own_address()
    with client(server, address) as c:
        for _ in range(5):
            assert_error(sign_in(c, unique("spray"), "guess-guess"), 401)
        assert sign_in(c, real).status_code == 200
        failures = 5
        while failures < 200:
            r = sign_in(c, unique("spray"), "guess-guess")
            if r.status_code == 429:
                break
            assert_error(r, 401)
            failures += 1
        assert_error(r, 429, "rate_limited")
        assert int(r.headers["retry-after"]) >= 1
        # Every sign-in from the address is refused now, the right password too.
        assert_error(sign_in(c, real), 429, "rate_limited")
    # Other addresses are not.
    with client(server) as c:
        assert sign_in(c, real).status_code == 200


# --- signing out ----------------------------------------------------------------------


def test_logout_clears_the_cookie_and_revokes_the_token(server):
    name = unique("bye")
    with client(server) as c:
        r = sign_up(c, name)
        assert r.status_code == 201
        token, _ = session_cookie(r)
        out = c.post("/api/auth/logout")
        assert out.status_code == 204, out.text
        assert out.content == b""
        cleared, attrs = session_cookie(out)
        assert cleared == ""
        assert attrs.get("max-age") == "0" or (
            "expires" in attrs and parsedate_to_datetime(attrs["expires"]).timestamp() < time.time()
        )
        assert attrs.get("path") == "/" and "domain" not in attrs
        assert COOKIE not in c.cookies
        assert_error(c.get("/api/auth/me"), 401, "unauthenticated")
    # The token itself is revoked, not merely forgotten by the client: replayed, it fails.
    with as_token(server, token) as replay:
        assert_error(replay.get("/api/auth/me"), 401, "unauthenticated")
        assert_error(replay.get("/api/workspaces"), 401)
        assert_error(replay.post("/api/workspaces", json={"name": "after logout"}), 401)
        assert_error(replay.post("/api/auth/logout"), 401)
    # The password still works: a new session.
    with client(server) as c:
        assert sign_in(c, name).status_code == 200
        assert c.get("/api/auth/me").status_code == 200


def test_logout_revokes_only_that_session(server):
    name = unique("two")
    with client(server) as laptop, client(server) as phone:
        assert sign_up(laptop, name).status_code == 201
        assert sign_in(phone, name).status_code == 200
        assert phone.post("/api/auth/logout").status_code == 204
        assert laptop.get("/api/auth/me").status_code == 200
        assert_error(phone.get("/api/auth/me"), 401)


def test_logout_without_a_session_is_401(anonymous):
    assert_error(anonymous.post("/api/auth/logout"), 401)


# --- who is calling -------------------------------------------------------------------


@pytest.mark.parametrize(
    "cookie",
    [
        None,
        "",
        "garbage",
        "a" * 4000,
        "' OR 1=1 --",
        "%00",
        "null",
        "x" * 43,  # the length of a real token
    ],
    ids=["none", "empty", "garbage", "long", "sql", "nul", "null", "token-shaped"],
)
def test_me_without_a_valid_session_is_401(server, cookie):
    headers = {} if cookie is None else {"cookie": f"{COOKIE}={cookie}"}
    with httpx.Client(base_url=server, timeout=30, headers=headers) as c:
        assert_error(c.get("/api/auth/me"), 401, "unauthenticated")
        assert_error(c.get("/api/workspaces"), 401)


def test_a_tampered_token_is_401(server):
    with client(server) as c:
        r = sign_up(c, unique("tamper"))
        token, _ = session_cookie(r)
    flipped = token[:-1] + ("A" if token[-1] != "A" else "B")
    for bad in (flipped, token[:-1], token + "x", token.upper(), f" {token}x"):
        with as_token(server, bad) as c:
            assert_error(c.get("/api/auth/me"), 401)
    with as_token(server, token) as c:
        assert c.get("/api/auth/me").status_code == 200


# --- cross-origin writes --------------------------------------------------------------


def workspace_names(c: httpx.Client) -> list[str]:
    r = c.get("/api/workspaces")
    assert r.status_code == 200
    return [w["name"] for w in r.json()]


def foreign_origins(server: str) -> list[str]:
    port = server.rsplit(":", 1)[1]
    return [
        f"http://oc-{uuid.uuid4()}.localhost:{port}",
        f"http://claw-{uuid.uuid4()}.localhost:{port}",
        f"http://localhost:{port}",  # the same machine under another name is another origin
        "http://127.0.0.1:1",  # another port
        "http://evil.example",
        "null",  # a sandboxed iframe or a data: URL
    ]


def test_cross_origin_writes_are_refused(new_user, server):
    alice = new_user("alice")
    c = alice.client
    wid = c.post("/api/workspaces", json={"name": "kept"}).json()["id"]
    for origin in foreign_origins(server):
        name = unique("csrf")
        h = {"origin": origin}
        assert_error(c.post("/api/workspaces", json={"name": name}, headers=h), 403, "cross_origin")
        assert_error(c.delete(f"/api/workspaces/{wid}", headers=h), 403, "cross_origin")
        r = c.post(
            f"/api/workspaces/{wid}/sandboxes", json={"name": "s", "type": "opencode"}, headers=h
        )
        assert_error(r, 403, "cross_origin")
        r = c.put(f"/api/workspaces/{wid}/members/{alice.id}", json={"role": "guest"}, headers=h)
        assert_error(r, 403, "cross_origin")
        assert_error(c.post("/api/auth/logout", headers=h), 403, "cross_origin")
        assert name not in workspace_names(c)
    # Nothing changed: the workspace is there, alice still owns it, still signed in.
    r = c.get(f"/api/workspaces/{wid}")
    assert r.status_code == 200 and r.json()["role"] == "owner"
    assert r.json()["sandbox_count"] == 0
    assert c.get("/api/auth/me").status_code == 200


def test_cross_origin_sign_in_and_sign_up_are_refused(server):
    """Login CSRF: a sandbox page may not sign the browser in as someone else."""
    name = unique("csrf-login")
    port = server.rsplit(":", 1)[1]
    evil = {"origin": f"http://oc-{uuid.uuid4()}.localhost:{port}"}
    with client(server) as c:
        r = c.post(
            "/api/auth/register", json={"username": name, "password": PASSWORD}, headers=evil
        )
        assert_error(r, 403, "cross_origin")
        assert not r.headers.get_list("set-cookie")
        assert sign_up(c, name).status_code == 201  # the name was not taken by the refusal
    with client(server) as c:
        r = c.post("/api/auth/login", json={"username": name, "password": PASSWORD}, headers=evil)
        assert_error(r, 403, "cross_origin")
        assert not r.headers.get_list("set-cookie")


def test_same_origin_and_originless_writes_work(new_user, server):
    c = new_user("alice").client
    host = server.removeprefix("http://")
    r = c.post("/api/workspaces", json={"name": "same"}, headers={"origin": server})
    assert r.status_code == 201, r.text
    r = c.post("/api/workspaces", json={"name": "same/"}, headers={"origin": f"http://{host}"})
    assert r.status_code == 201, r.text
    assert c.post("/api/workspaces", json={"name": "no origin"}).status_code == 201


def test_cross_origin_reads_get_no_cors_grant(new_user, server):
    """Reads are not refused, but nothing lets another origin's script read the answer."""
    c = new_user("alice").client
    for origin in foreign_origins(server):
        r = c.get("/api/auth/me", headers={"origin": origin})
        assert r.status_code == 200
        assert "access-control-allow-origin" not in r.headers
        assert "access-control-allow-credentials" not in r.headers
        pre = c.options(
            "/api/workspaces",
            headers={"origin": origin, "access-control-request-method": "POST"},
        )
        assert pre.status_code < 500
        assert "access-control-allow-origin" not in pre.headers


# --- no secret at rest ----------------------------------------------------------------


@pytest.fixture
def secrets_of_a_user(server) -> Iterator[dict[str, Any]]:
    """A user with a password of their own, two sessions (one signed out) and a failed
    sign-in with another password: every secret that passed through the server."""
    name = unique("secret")
    password = f"pw-{uuid.uuid4().hex}"
    wrong = f"wrong-{uuid.uuid4().hex}"
    with client(server) as c:
        r = sign_up(c, name, password, email=f"{name}@example.com")
        assert r.status_code == 201, r.text
        user_id = r.json()["id"]
        first, _ = session_cookie(r)
        assert c.post("/api/workspaces", json={"name": "secrets"}).status_code == 201
        assert_error(sign_in(c, name, wrong), 401)
        r = sign_in(c, name, password)
        assert r.status_code == 200
        second, _ = session_cookie(r)
        assert c.post("/api/auth/logout").status_code == 204
    yield {
        "user_id": user_id,
        "password": password,
        "wrong": wrong,
        "tokens": [first, second],
        "live": first,
        "revoked": second,
    }


def test_no_secret_in_the_event_log(secrets_of_a_user, sandbar: Sandbar):
    s = secrets_of_a_user
    notifications = sandbar.log.recorder.select_notifications(start=1, limit=10_000_000)
    assert notifications
    mine = [n for n in notifications if s["user_id"].encode() in n.state]
    assert mine, "the user's own events are in the log"
    forbidden = [s["password"], s["wrong"], *s["tokens"], "argon2", "$argon2"]
    for n in notifications:
        for secret in forbidden:
            assert secret.encode() not in n.state, (n.topic, secret)
        # Decoded as well, in case the stored form hides them (compression, escapes).
        event = sandbar.log.mapper.to_domain_event(n)
        text = repr(vars(event))
        for secret in forbidden:
            assert secret not in text, (n.topic, secret)


def test_no_plaintext_token_in_the_sessions_table(secrets_of_a_user, server_env):
    s = secrets_of_a_user
    with psycopg.connect(server_env["SANDBAR_DATABASE_URL"]) as conn:
        rows = conn.execute(
            "SELECT digest, revoked_at, s::text FROM sandbar_sessions s WHERE user_id = %s",
            (s["user_id"],),
        ).fetchall()
    assert len(rows) == 2, "one row per session"
    for digest, _, text in rows:
        for token in s["tokens"]:
            assert token not in text
            assert token.encode() not in bytes(digest)
    assert sorted(r[1] is None for r in rows) == [False, True], "the signed-out one is revoked"


def test_no_secret_anywhere_in_the_database(secrets_of_a_user, server_env):
    """Every table, every row: no token, no password; the argon2 hash only in its own table."""
    s = secrets_of_a_user
    with psycopg.connect(server_env["SANDBAR_DATABASE_URL"]) as conn:
        tables = [
            r[0]
            for r in conn.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()"
            )
        ]
        assert "sandbar_sessions" in tables and "sandbar_passwords" in tables
        for table in tables:
            query = sql.SQL("SELECT t::text FROM {} t").format(sql.Identifier(table))
            for (text,) in conn.execute(query):
                for secret in [s["password"], s["wrong"], *s["tokens"]]:
                    assert secret not in text, (table, secret)
                if table != "sandbar_passwords":
                    assert "$argon2" not in text, table
        (hashed,) = conn.execute(
            "SELECT hash FROM sandbar_passwords WHERE user_id = %s", (s["user_id"],)
        ).fetchone()
    assert hashed.startswith("$argon2id$"), "argon2id"
    assert s["password"] not in hashed
