"""Accounts and sessions: cookies, logout, login failures that reveal nothing and slow
down, cross-origin writes, and no secret in the log or the sessions table."""

from __future__ import annotations

import uuid

import httpx
import psycopg

from interfaces.bootstrap import Sandbar
from tests.conftest import PASSWORD


def test_session_cookie_is_host_only_and_httponly(server):
    with httpx.Client(base_url=server) as c:
        name = f"cookie-{uuid.uuid4().hex[:8]}"
        r = c.post("/api/auth/register", json={"username": name, "password": PASSWORD})
        assert r.status_code == 201
        cookie = r.headers["set-cookie"]
        parts = {p.strip().split("=")[0].lower() for p in cookie.split(";")}
        assert cookie.startswith("sandbar_session=")
        assert {"httponly", "path", "samesite", "max-age"} <= parts
        assert "domain" not in parts
        assert "secure" not in parts  # plain http here
        assert "samesite=lax" in cookie.lower()


def test_register_login_logout(server, anonymous):
    name = f"Mixed-{uuid.uuid4().hex[:8]}"
    r = anonymous.post("/api/auth/register", json={"username": name, "password": PASSWORD})
    assert r.status_code == 201
    assert r.json()["username"] == name.lower()
    again = anonymous.post(
        "/api/auth/register", json={"username": name.upper(), "password": PASSWORD}
    )
    assert again.status_code == 409

    with httpx.Client(base_url=server) as c:
        r = c.post("/api/auth/login", json={"username": name.upper(), "password": PASSWORD})
        assert r.status_code == 200
        token = c.cookies["sandbar_session"]
        assert c.get("/api/auth/me").json()["username"] == name.lower()
        assert c.post("/api/auth/logout").status_code == 204
        assert c.get("/api/auth/me").status_code == 401
    # The old token is revoked, not just forgotten by the client.
    with httpx.Client(base_url=server, cookies={"sandbar_session": token}) as replay:
        assert replay.get("/api/auth/me").status_code == 401
    with httpx.Client(base_url=server, cookies={"sandbar_session": "garbage"}) as junk:
        assert junk.get("/api/auth/me").status_code == 401


def test_login_failures_look_alike_and_are_limited(new_user, anonymous):
    user = new_user("victim")
    wrong = anonymous.post("/api/auth/login", json={"username": user.username, "password": "x" * 9})
    unknown = anonymous.post(
        "/api/auth/login", json={"username": f"ghost-{uuid.uuid4().hex[:6]}", "password": "x" * 9}
    )
    assert wrong.status_code == unknown.status_code == 401
    assert wrong.json() == unknown.json()
    for _ in range(4):
        anonymous.post("/api/auth/login", json={"username": user.username, "password": "x" * 9})
    limited = anonymous.post(
        "/api/auth/login", json={"username": user.username, "password": PASSWORD}
    )
    assert limited.status_code == 429
    assert int(limited.headers["retry-after"]) > 0
    assert limited.json()["error"]["code"] == "rate_limited"


def test_cross_origin_writes_are_refused(new_user, server):
    alice = new_user("alice")
    port = server.rsplit(":", 1)[1]
    evil = {"origin": f"http://oc-{uuid.uuid4()}.localhost:{port}"}
    r = alice.client.post("/api/workspaces", json={"name": "x"}, headers=evil)
    assert r.status_code == 403
    assert r.json()["error"]["code"] == "cross_origin"
    same = {"origin": server}
    assert alice.client.post("/api/workspaces", json={"name": "x"}, headers=same).status_code == 201


def test_no_secret_in_the_log_or_the_sessions_table(new_user, sandbar: Sandbar, server_env):
    alice = new_user("alice")
    token = alice.client.cookies["sandbar_session"]
    log = b"".join(
        n.state for n in sandbar.log.recorder.select_notifications(start=1, limit=10_000_000)
    )
    for secret in (PASSWORD.encode(), b"argon2", token.encode(), b"$argon"):
        assert secret not in log
    with psycopg.connect(server_env["SANDBAR_DATABASE_URL"]) as conn:
        digests = [bytes(r[0]) for r in conn.execute("SELECT digest FROM sandbar_sessions")]
        hashes = [r[0] for r in conn.execute("SELECT hash FROM sandbar_passwords")]
    assert token.encode() not in digests
    assert all(token.encode() not in d for d in digests)
    assert all(h.startswith("$argon2id$") for h in hashes)
