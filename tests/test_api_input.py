"""Bad input gets a clear 4xx in API.md's error shape, naming the problem; never a 5xx."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st


def error(r, status: int, code: str | None = None, field: str | None = None) -> dict:
    assert r.status_code == status, r.text
    body = r.json()["error"]
    assert set(body) <= {"code", "message", "field"}
    assert body["message"]
    if code:
        assert body["code"] == code
    if field:
        assert body["field"] == field
    return body


@pytest.fixture
def alice(new_user):
    return new_user("alice")


@pytest.fixture
def workspace(alice) -> str:
    return alice.client.post("/api/workspaces", json={"name": "w"}).json()["id"]


def post_raw(client, url: str, content: bytes, content_type: str = "application/json"):
    return client.post(url, content=content, headers={"content-type": content_type})


def test_malformed_bodies(alice):
    c = alice.client
    error(post_raw(c, "/api/workspaces", b'{"name":'), 400, "malformed_json")
    error(post_raw(c, "/api/workspaces", b"[1, 2]"), 400, "malformed_body")
    error(post_raw(c, "/api/workspaces", b'"name"'), 400, "malformed_body")
    error(c.post("/api/workspaces"), 400, "missing_body")
    error(post_raw(c, "/api/workspaces", b"name=x", "application/x-www-form-urlencoded"), 415)


@pytest.mark.parametrize(
    ("body", "field", "code"),
    [
        ({}, "name", "missing_field"),
        ({"name": 123}, "name", "wrong_type"),
        ({"name": None}, "name", "wrong_type"),
        ({"name": ["x"]}, "name", None),
        ({"name": "x", "colour": "red"}, "colour", "unknown_field"),
        ({"name": ""}, "name", "invalid_field"),
        ({"name": "   "}, "name", "invalid_field"),
        ({"name": "x" * 65}, "name", "invalid_field"),
        ({"name": "bad\u0000name"}, "name", "invalid_field"),
        ({"name": "two\nlines"}, "name", "invalid_field"),
    ],
)
def test_workspace_names(alice, body, field, code):
    error(alice.client.post("/api/workspaces", json=body), 422, code, field)


def test_names_are_trimmed_and_64_is_fine(alice):
    r = alice.client.post("/api/workspaces", json={"name": "  " + "x" * 64 + "  "})
    assert r.status_code == 201
    assert r.json()["name"] == "x" * 64


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"username": "ab", "password": "long enough"}, "username"),
        ({"username": "a" * 33, "password": "long enough"}, "username"),
        ({"username": "bad name", "password": "long enough"}, "username"),
        ({"username": "ünïcode", "password": "long enough"}, "username"),
        ({"username": "fine-name", "password": "short"}, "password"),
        ({"username": "fine-name", "password": "x" * 257}, "password"),
        ({"username": "fine-name", "password": "long enough", "email": "nope"}, "email"),
        ({"username": "fine-name", "password": 12345678}, "password"),
        ({"username": True, "password": "long enough"}, "username"),
    ],
)
def test_registration_fields(anonymous, body, field):
    error(anonymous.post("/api/auth/register", json=body), 422, field=field)


def test_member_and_sandbox_fields(alice, workspace):
    c = alice.client
    members = f"/api/workspaces/{workspace}/members"
    error(c.post(members, json={"username": "x-y-z", "role": "boss"}), 422, field="role")
    error(c.post(members, json={"username": "x-y-z", "role": True}), 422, field="role")
    sandboxes = f"/api/workspaces/{workspace}/sandboxes"
    error(c.post(sandboxes, json={"name": "s", "type": "vim"}), 422, field="type")
    error(c.post(sandboxes, json={"name": "", "type": "opencode"}), 422, field="name")


@pytest.mark.parametrize(
    ("method", "path", "field"),
    [
        ("GET", "/api/workspaces/not-a-uuid", "workspace_id"),
        ("DELETE", "/api/workspaces/123", "workspace_id"),
        ("GET", "/api/workspaces/xyz/members", "workspace_id"),
        ("GET", "/api/workspaces/xyz/sandboxes", "workspace_id"),
        ("GET", "/api/sandboxes/nope", "sandbox_id"),
        ("POST", "/api/sandboxes/nope/pause", "sandbox_id"),
        ("DELETE", "/api/sandboxes/nope", "sandbox_id"),
    ],
)
def test_ids_must_be_uuids(alice, method, path, field):
    error(alice.client.request(method, path), 422, field=field)


def test_member_id_must_be_a_uuid(alice, workspace):
    r = alice.client.put(f"/api/workspaces/{workspace}/members/me", json={"role": "guest"})
    error(r, 422, field="user_id")


def test_oversize_bodies(alice):
    big = json.dumps({"name": "x" * (1024 * 1024)}).encode()
    error(post_raw(alice.client, "/api/workspaces", big), 413, "body_too_large")

    def chunks():
        for _ in range(20):
            yield b" " * 100_000

    r = alice.client.post(
        "/api/workspaces", content=chunks(), headers={"content-type": "application/json"}
    )
    error(r, 413, "body_too_large")


def test_unknown_routes_and_methods(alice):
    error(alice.client.get("/api/nothing-here"), 404)
    error(alice.client.patch("/api/workspaces"), 405)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=80),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=12,
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(value=json_values)
def test_any_json_gets_an_answer_not_a_crash(alice, value):
    for path in ("/api/workspaces", "/api/auth/register"):
        r = alice.client.post(path, json=value)
        assert r.status_code < 500, r.text
        if r.status_code >= 400:
            assert set(r.json()["error"]) >= {"code", "message"}
