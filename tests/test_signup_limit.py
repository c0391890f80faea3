"""Sign-ups cost an argon2id hash each, so one client address gets a limited number."""

from __future__ import annotations

import uuid

import httpx

from tests.conftest import FAST_HASHING, PASSWORD, ServerProcess
from tests.errors import assert_error


def test_signups_per_address_are_limited(make_database, tmp_path):
    env = {
        **FAST_HASHING,
        "SANDBAR_REGISTRATIONS_PER_WINDOW": "3",
        "SANDBAR_WORKER": "false",
        "SANDBAR_DATABASE_URL": make_database(),
        "SANDBAR_DATA_DIR": str(tmp_path / "data"),
        "SANDBAR_SECRET_KEY": uuid.uuid4().hex,
    }
    server = ServerProcess(env, tmp_path / "server.log").start()
    try:
        with httpx.Client(base_url=server.url) as c:

            def sign_up() -> httpx.Response:
                name = f"limit-{uuid.uuid4().hex[:8]}"
                return c.post("/api/auth/register", json={"username": name, "password": PASSWORD})

            assert [sign_up().status_code for _ in range(3)] == [201, 201, 201]
            refused = sign_up()
            assert_error(refused, 429, "rate_limited")
            assert int(refused.headers["retry-after"]) > 0
        # Another address is not affected.
        other = httpx.HTTPTransport(local_address="127.0.0.7")
        with httpx.Client(base_url=server.url, transport=other) as c:
            name = f"limit-{uuid.uuid4().hex[:8]}"
            r = c.post("/api/auth/register", json={"username": name, "password": PASSWORD})
            assert r.status_code == 201
    finally:
        server.stop()
    assert "Traceback" not in (tmp_path / "server.log").read_text()
