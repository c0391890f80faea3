"""Bad input, route by route: every body and id the API takes gets a clear 4xx in docs/api.md's
error shape ({"error": {"code", "message"[, "field"]}}) naming the problem, never a 5xx and
never a stack trace."""

from __future__ import annotations

import json
import socket
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from projections.view import EVENTS_TABLE
from tests.conftest import PASSWORD, ServerProcess, User, register
from tests.errors import assert_error

MIB = 1024 * 1024


# --- helpers --------------------------------------------------------------------------


def no_crash(r: httpx.Response) -> None:
    """Any answer but a 5xx; an error answer has the error shape."""
    where = f"{r.request.method} {r.request.url.path}"
    assert r.status_code < 500, f"{where}: {r.status_code} {r.text[:500]}"
    if r.status_code >= 400:
        assert_error(r, r.status_code)


def raw(
    client: httpx.Client,
    method: str,
    path: str,
    content: bytes | Iterator[bytes] | None,
    content_type: str | None = "application/json",
) -> httpx.Response:
    headers = {"content-type": content_type} if content_type else {}
    return client.request(method, path, content=content, headers=headers)


def ascii_json(value: Any) -> bytes:
    """JSON with every non-ASCII character escaped, so lone surrogates can be sent."""
    return json.dumps(value, ensure_ascii=True).encode()


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


# --- the routes -----------------------------------------------------------------------


@dataclass(frozen=True)
class Route:
    name: str
    method: str
    path: str  # with {wid} and {mid} placeholders
    body: dict[str, Any]  # a valid body; "{username}" stands for the other user's name
    required: tuple[str, ...]
    optional: tuple[str, ...] = ()
    signed_in: bool = True


ROUTES = [
    Route(
        "register",
        "POST",
        "/api/auth/register",
        {"username": "{username}", "password": PASSWORD, "email": "a@example.com"},
        ("username", "password"),
        ("email",),
        signed_in=False,
    ),
    Route(
        "login",
        "POST",
        "/api/auth/login",
        {"username": "{username}", "password": PASSWORD},
        ("username", "password"),
        signed_in=False,
    ),
    Route("create_workspace", "POST", "/api/workspaces", {"name": "w"}, ("name",)),
    Route(
        "add_member",
        "POST",
        "/api/workspaces/{wid}/members",
        {"username": "{username}", "role": "guest"},
        ("username", "role"),
    ),
    Route(
        "change_role", "PUT", "/api/workspaces/{wid}/members/{mid}", {"role": "guest"}, ("role",)
    ),
    Route(
        "create_sandbox",
        "POST",
        "/api/workspaces/{wid}/sandboxes",
        {"name": "s", "type": "opencode"},
        ("name", "type"),
    ),
]
ROUTE_IDS = [r.name for r in ROUTES]


@dataclass
class World:
    owner: User
    other: User  # a guest of the workspace
    workspace: str
    sandbox: str
    anonymous: httpx.Client

    def client(self, route: Route) -> httpx.Client:
        return self.owner.client if route.signed_in else self.anonymous

    def path(self, route: Route) -> str:
        return route.path.format(wid=self.workspace, mid=self.other.id)

    def body(self, route: Route, **changes: Any) -> dict[str, Any]:
        body = {k: (self.other.username if v == "{username}" else v) for k, v in route.body.items()}
        if route.name == "register":
            body["username"] = unique("reg")
        body.update(changes)
        return body


@pytest.fixture(scope="module")
def world(server: str) -> Iterator[World]:
    owner = register(server, "owner")
    other = register(server, "other")
    c = owner.client
    r = c.post("/api/workspaces", json={"name": "bad input"})
    assert r.status_code == 201, r.text
    wid = r.json()["id"]
    r = c.post(f"/api/workspaces/{wid}/members", json={"username": other.username, "role": "guest"})
    assert r.status_code == 201, r.text
    r = c.post(f"/api/workspaces/{wid}/sandboxes", json={"name": "sb", "type": "opencode"})
    assert r.status_code == 201, r.text
    anonymous = httpx.Client(base_url=server, timeout=30)
    # A new connection per request: a failure on one request (the server closes the
    # connection after a 500) does not spill into the next test.
    for client in (owner.client, other.client, anonymous):
        client.headers["connection"] = "close"
    yield World(owner, other, wid, r.json()["id"], anonymous)
    for client in (owner.client, other.client, anonymous):
        client.close()


def test_valid_bodies_are_accepted(world):
    """The baseline: the valid body of each route is accepted (so the failures below are
    about the one thing each one changes). The member is one already: 409."""
    for route in ROUTES:
        r = world.client(route).request(route.method, world.path(route), json=world.body(route))
        expected = {409} if route.name == "add_member" else {200, 201}
        assert r.status_code in expected, (route.name, r.text)


# --- bodies that are not a JSON object ------------------------------------------------

MALFORMED = [
    b'{"name":',
    b"{",
    b"{'name': 'x'}",
    b'{"name": "x",}',
    b'{"name": "x"} trailing',
    b'{"name": "\\x"}',
    b'{"name": "unterminated}',
    b"\xff\xfe\xfa",
    b"[" * 50_000 + b"]" * 50_000,  # nesting deep enough to break a recursive parser
    b'{"a":' * 50_000 + b"1" + b"}" * 50_000,
]


@pytest.mark.parametrize("route", ROUTES, ids=ROUTE_IDS)
@pytest.mark.parametrize("content", MALFORMED, ids=range(len(MALFORMED)))
def test_malformed_json_is_400(world, route, content):
    r = raw(world.client(route), route.method, world.path(route), content)
    assert_error(r, 400)


@pytest.mark.parametrize("route", ROUTES, ids=ROUTE_IDS)
def test_malformed_json_code(world, route):
    r = raw(world.client(route), route.method, world.path(route), b'{"name":')
    assert_error(r, 400, "malformed_json")


NOT_OBJECTS = [b"[]", b'[{"name": "x"}]', b'"name"', b"1", b"1.5", b"true", b"false", b"null"]


@pytest.mark.parametrize("route", ROUTES, ids=ROUTE_IDS)
@pytest.mark.parametrize("content", NOT_OBJECTS, ids=[c.decode() for c in NOT_OBJECTS])
def test_json_that_is_not_an_object_is_400(world, route, content):
    r = raw(world.client(route), route.method, world.path(route), content)
    assert_error(r, 400)


@pytest.mark.parametrize("route", ROUTES, ids=ROUTE_IDS)
@pytest.mark.parametrize("content", [None, b""], ids=["none", "empty"])
def test_missing_body_is_400(world, route, content):
    r = raw(world.client(route), route.method, world.path(route), content)
    assert_error(r, 400, "missing_body")


# --- fields ---------------------------------------------------------------------------

WRONG_TYPES = [123, 1.5, True, False, None, [], ["x"], {}, {"x": "y"}]


def wrong_type_cases() -> list[tuple[Route, str, Any]]:
    cases = []
    for route in ROUTES:
        for field in route.required + route.optional:
            for value in WRONG_TYPES:
                if value is None and field in route.optional:
                    continue  # email: null means no email
                cases.append((route, field, value))
    return cases


@pytest.mark.parametrize(
    ("route", "field", "value"),
    wrong_type_cases(),
    ids=[f"{r.name}-{f}-{json.dumps(v)}" for r, f, v in wrong_type_cases()],
)
def test_wrong_types_are_422_naming_the_field(world, route, field, value):
    body = world.body(route, **{field: value})
    r = world.client(route).request(route.method, world.path(route), json=body)
    assert_error(r, 422, field=field)


@pytest.mark.parametrize(
    ("route", "field"),
    [(r, f) for r in ROUTES for f in r.required],
    ids=[f"{r.name}-{f}" for r in ROUTES for f in r.required],
)
def test_missing_fields_are_422_naming_the_field(world, route, field):
    body = world.body(route)
    del body[field]
    r = world.client(route).request(route.method, world.path(route), json=body)
    assert_error(r, 422, "missing_field", field)


@pytest.mark.parametrize("route", ROUTES, ids=ROUTE_IDS)
@pytest.mark.parametrize("extra", ["colour", "id", "role_", "Name", "__proto__", ""])
def test_unknown_fields_are_422_naming_the_field(world, route, extra):
    if extra in route.body:
        pytest.skip("a known field of this route")
    body = world.body(route, **{extra: "x"})
    r = world.client(route).request(route.method, world.path(route), json=body)
    error = assert_error(r, 422, "unknown_field")
    if extra:
        assert error["field"] == extra


def test_only_the_wrong_fields_are_named(world):
    """Several problems at once: still one clear error, naming one of the bad fields."""
    r = world.owner.client.post("/api/workspaces", json={"name": 5, "colour": "red"})
    error = assert_error(r, 422)
    assert error["field"] in {"name", "colour"}


# --- names ----------------------------------------------------------------------------

BAD_NAMES = [
    "",
    " ",
    "   \t  ",
    "\n",
    "x" * 65,
    " " + "x" * 65 + " ",
    "\u0000",
    "bad\u0000name",
    "two\nlines",
    "tab\tinside",
    "bell\u0007",
    "del\u007f",
    "esc\u001b[31m",
    "zero\u200bwidth",
    "bidi\u202eoverride",
    "line\u2028separator",
    "\ud800",  # a lone surrogate
    "surrogate\udfffend",
]
NAME_ROUTES = [r for r in ROUTES if "name" in r.body]


@pytest.mark.parametrize("route", NAME_ROUTES, ids=[r.name for r in NAME_ROUTES])
@pytest.mark.parametrize("name", BAD_NAMES, ids=[ascii(n)[:30] for n in BAD_NAMES])
def test_names_out_of_range_are_422(world, route, name):
    content = ascii_json(world.body(route, name=name))
    r = raw(world.client(route), route.method, world.path(route), content)
    assert_error(r, 422, field="name")


GOOD_NAMES = [
    ("  x  ", "x"),
    ("\tx\n", "x"),
    ("x" * 64, "x" * 64),
    ("  " + "y" * 64 + "  ", "y" * 64),
    ("a", "a"),
    ("inner  spaces kept", "inner  spaces kept"),
    ("ünïcödé ✓ 名前", "ünïcödé ✓ 名前"),
    ("emoji 🏖", "emoji 🏖"),
]


@pytest.mark.parametrize("route", NAME_ROUTES, ids=[r.name for r in NAME_ROUTES])
@pytest.mark.parametrize(("sent", "kept"), GOOD_NAMES, ids=[ascii(s)[:30] for s, _ in GOOD_NAMES])
def test_names_are_trimmed_and_kept(world, route, sent, kept):
    c = world.client(route)
    r = c.request(route.method, world.path(route), json=world.body(route, name=sent))
    assert r.status_code == 201, r.text
    assert r.json()["name"] == kept
    # ... and the stored name is the trimmed one.
    kind = "sandboxes" if "sandboxes" in route.path else "workspaces"
    again = c.get(f"/api/{kind}/{r.json()['id']}")
    assert again.status_code == 200, again.text
    assert again.json()["name"] == kept


# --- usernames, passwords, emails -----------------------------------------------------

BAD_USERNAMES = [
    "",
    "   ",
    "ab",
    " ab ",
    "a" * 33,
    "bad name",
    "dotted.name",
    "at@name",
    "slash/name",
    "plus+name",
    "ünïcode",
    "名前名前",
    "\uff46\uff55\uff4c\uff4cwidth",  # full-width letters, which NFKC would fold to ASCII
    "nul\u0000name",
    "new\nline",
    "surrogate\ud800",
    "emoji🏖",
]


@pytest.mark.parametrize("username", BAD_USERNAMES, ids=[ascii(u)[:30] for u in BAD_USERNAMES])
def test_register_bad_usernames_are_422(world, username):
    r = raw(
        world.anonymous,
        "POST",
        "/api/auth/register",
        ascii_json({"username": username, "password": PASSWORD}),
    )
    assert_error(r, 422, field="username")


def test_usernames_are_lower_cased_and_trimmed(world):
    name = unique("MiXeD")
    r = world.anonymous.post(
        "/api/auth/register", json={"username": f"  {name.upper()}  ", "password": PASSWORD}
    )
    assert r.status_code == 201, r.text
    assert r.json()["username"] == name.lower()


@pytest.mark.parametrize("length", [3, 32])
def test_username_length_bounds_are_accepted(world, length):
    name = ("u_" + uuid.uuid4().hex)[:length]
    r = world.anonymous.post("/api/auth/register", json={"username": name, "password": PASSWORD})
    assert r.status_code == 201, r.text
    assert r.json()["username"] == name


@pytest.mark.parametrize(
    "password", ["", "x" * 7, " " * 7, "x" * 257, "é" * 257], ids=["0", "7", "7sp", "257", "257u"]
)
def test_register_bad_passwords_are_422(world, password):
    r = world.anonymous.post(
        "/api/auth/register", json={"username": unique("pw"), "password": password}
    )
    assert_error(r, 422, field="password")


@pytest.mark.parametrize("password", ["x" * 8, "x" * 256, "        ", "日本語のパスワード"])
def test_password_length_bounds_are_accepted(world, password):
    r = world.anonymous.post(
        "/api/auth/register", json={"username": unique("pw"), "password": password}
    )
    assert r.status_code == 201, r.text


BAD_EMAILS = [
    "",
    "   ",
    "nope",
    "a@b",
    "@example.com",
    "a@",
    "a@@example.com",
    "a b@example.com",
    "a@exa mple.com",
    "x" * 250 + "@example.com",
    "new\nline@example.com",
    "tab\t@example.com",
]


@pytest.mark.parametrize("email", BAD_EMAILS, ids=[ascii(e)[:30] for e in BAD_EMAILS])
def test_register_bad_emails_are_422(world, email):
    body = ascii_json({"username": unique("mail"), "password": PASSWORD, "email": email})
    r = raw(world.anonymous, "POST", "/api/auth/register", body)
    assert_error(r, 422, field="email")


def test_email_is_optional_and_trimmed(world):
    r = world.anonymous.post(
        "/api/auth/register",
        json={"username": unique("mail"), "password": PASSWORD, "email": None},
    )
    assert r.status_code == 201, r.text
    assert r.json()["email"] is None
    r = world.anonymous.post(
        "/api/auth/register",
        json={"username": unique("mail"), "password": PASSWORD, "email": " a@example.com "},
    )
    assert r.status_code == 201, r.text
    assert r.json()["email"] == "a@example.com"


def test_add_member_username_is_case_insensitive(world, server):
    newcomer = register(server, "case")
    try:
        r = world.owner.client.post(
            f"/api/workspaces/{world.workspace}/members",
            json={"username": f" {newcomer.username.upper()} ", "role": "guest"},
        )
        assert r.status_code == 201, r.text
        assert r.json()["username"] == newcomer.username
    finally:
        newcomer.client.close()


# --- roles and sandbox types ----------------------------------------------------------

BAD_ROLES = [
    "",
    " ",
    "boss",
    "admin",
    "root",
    "owners",
    "guest ",
    "Owner",
    "OWNER",
    "__class__",
    "name",
    "value",
    "1",
    "\u0000",
]
ROLE_ROUTES = [r for r in ROUTES if "role" in r.body]


@pytest.mark.parametrize("route", ROLE_ROUTES, ids=[r.name for r in ROLE_ROUTES])
@pytest.mark.parametrize("role", BAD_ROLES, ids=[ascii(x) for x in BAD_ROLES])
def test_unknown_roles_are_422(world, route, role):
    r = raw(
        world.owner.client,
        route.method,
        world.path(route),
        ascii_json(world.body(route, role=role)),
    )
    error = assert_error(r, 422, field="role")
    assert "owner" in error["message"]  # the message says what is allowed


BAD_TYPES = ["", "vim", "OpenCode", "OPENCODE", "opencode ", "local", "cloud", "\u0000"]


@pytest.mark.parametrize("kind", BAD_TYPES, ids=[ascii(x) for x in BAD_TYPES])
def test_unknown_sandbox_types_are_422(world, kind):
    r = raw(
        world.owner.client,
        "POST",
        f"/api/workspaces/{world.workspace}/sandboxes",
        ascii_json({"name": "s", "type": kind}),
    )
    error = assert_error(r, 422, field="type")
    assert "opencode" in error["message"]


def test_nothing_was_created_by_bad_input(world):
    """None of the refused sandboxes exists."""
    r = world.owner.client.get(f"/api/workspaces/{world.workspace}/sandboxes")
    assert r.status_code == 200
    assert {s["type"] for s in r.json()} <= {"opencode", "openclaw"}


# --- ids in paths ---------------------------------------------------------------------

BAD_IDS = [
    "not-a-uuid",
    "123",
    "0",
    "me",
    "00000000-0000-0000-0000-00000000000g",
    "00000000-0000-0000-0000-0000000000000",
    "x" * 300,
    "%00",
    "null",
    "%E2%9C%93",
]

ID_ROUTES: list[tuple[str, str, str, dict[str, Any] | None]] = [
    # (method, path with {bad} in place of the id, field, body)
    ("GET", "/api/workspaces/{bad}", "workspace_id", None),
    ("DELETE", "/api/workspaces/{bad}", "workspace_id", None),
    ("GET", "/api/workspaces/{bad}/members", "workspace_id", None),
    (
        "POST",
        "/api/workspaces/{bad}/members",
        "workspace_id",
        {"username": "x-y-z", "role": "guest"},
    ),
    ("PUT", "/api/workspaces/{bad}/members/{mid}", "workspace_id", {"role": "guest"}),
    ("DELETE", "/api/workspaces/{bad}/members/{mid}", "workspace_id", None),
    ("PUT", "/api/workspaces/{wid}/members/{bad}", "user_id", {"role": "guest"}),
    ("DELETE", "/api/workspaces/{wid}/members/{bad}", "user_id", None),
    ("GET", "/api/workspaces/{bad}/sandboxes", "workspace_id", None),
    ("POST", "/api/workspaces/{bad}/sandboxes", "workspace_id", {"name": "s", "type": "opencode"}),
    ("GET", "/api/sandboxes/{bad}", "sandbox_id", None),
    ("DELETE", "/api/sandboxes/{bad}", "sandbox_id", None),
    ("POST", "/api/sandboxes/{bad}/pause", "sandbox_id", None),
    ("POST", "/api/sandboxes/{bad}/resume", "sandbox_id", None),
]


@pytest.mark.parametrize(
    ("method", "path", "field", "body"),
    ID_ROUTES,
    ids=[f"{m} {p}" for m, p, _, _ in ID_ROUTES],
)
@pytest.mark.parametrize("bad", BAD_IDS, ids=range(len(BAD_IDS)))
def test_non_uuid_ids_are_422_naming_the_field(world, method, path, field, body, bad):
    url = path.format(bad=bad, wid=world.workspace, mid=world.other.id)
    r = world.owner.client.request(method, url, json=body)
    assert_error(r, 422, field=field)


@pytest.mark.parametrize(
    ("method", "path", "field", "body"),
    ID_ROUTES,
    ids=[f"{m} {p}" for m, p, _, _ in ID_ROUTES],
)
def test_unknown_uuids_are_404(world, method, path, field, body):
    url = path.format(bad=uuid.uuid4(), wid=world.workspace, mid=world.other.id)
    r = world.owner.client.request(method, url, json=body)
    assert_error(r, 404)


def test_ids_are_checked_after_sign_in(world, server):
    """No session: 401 whatever the id looks like."""
    with httpx.Client(base_url=server, timeout=30) as nobody:
        for method, path, _, body in ID_ROUTES:
            url = path.format(bad="nope", wid=world.workspace, mid=world.other.id)
            assert_error(nobody.request(method, url, json=body), 401)


# --- size, media type, routes, methods ------------------------------------------------

SIZE_ROUTES = [r for r in ROUTES if r.name in {"register", "login", "create_workspace"}]


@pytest.mark.parametrize("route", SIZE_ROUTES, ids=[r.name for r in SIZE_ROUTES])
def test_body_over_a_mebibyte_with_content_length_is_413(world, route):
    big = ascii_json(world.body(route, name="x" * MIB))
    r = raw(world.client(route), route.method, world.path(route), big)
    assert r.request.headers["content-length"] == str(len(big))
    assert_error(r, 413, "body_too_large")


@pytest.mark.parametrize("route", SIZE_ROUTES, ids=[r.name for r in SIZE_ROUTES])
def test_body_over_a_mebibyte_chunked_is_413(world, route):
    def chunks() -> Iterator[bytes]:
        yield b'{"name": "'
        for _ in range(12):
            yield b"x" * 100_000
        yield b'"}'

    r = raw(world.client(route), route.method, world.path(route), chunks())
    assert "content-length" not in r.request.headers
    assert r.request.headers["transfer-encoding"] == "chunked"
    assert_error(r, 413, "body_too_large")


def http_exchange(server: str, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send raw bytes to the server; (status, headers, body) of its answer."""
    host, port = server.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=15) as sock:
        sock.sendall(request)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = dict(
            (k.strip().lower(), v.strip()) for k, v in (x.split(":", 1) for x in lines[1:])
        )
        length = int(headers.get("content-length", "0"))
        while len(body) < length:
            chunk = sock.recv(65536)
            if not chunk:
                break
            body += chunk
    return int(lines[0].split()[1]), headers, body


def test_a_declared_length_over_the_cap_is_refused_up_front(world, server):
    """Content-Length over the cap: 413 at once, without waiting for (or reading) a body."""
    host = server.removeprefix("http://")
    token = world.owner.client.cookies["sandbar_session"]
    status, headers, body = http_exchange(
        server,
        (
            f"POST /api/workspaces HTTP/1.1\r\nHost: {host}\r\n"
            f"Cookie: sandbar_session={token}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {MIB + 1}\r\n\r\n"
        ).encode()
        + b'{"name": "x"}',
    )
    assert status == 413, body
    assert headers["content-type"].startswith("application/json")
    assert json.loads(body)["error"]["code"] == "body_too_large"


def test_the_cap_is_exactly_a_mebibyte(world):
    """A body of exactly 1 MiB is read (and its over-long name refused); one byte more is not."""
    c = world.owner.client
    prefix, suffix = b'{"name": "', b'"}'
    exact = prefix + b"x" * (MIB - len(prefix) - len(suffix)) + suffix
    assert len(exact) == MIB
    assert_error(raw(c, "POST", "/api/workspaces", exact), 422, field="name")
    over = prefix + b"x" * (MIB + 1 - len(prefix) - len(suffix)) + suffix
    assert_error(raw(c, "POST", "/api/workspaces", over), 413, "body_too_large")
    # Whitespace counts too: 1 MiB of padding around a small valid object.
    padded = b'{"name": "ok"}' + b" " * MIB
    assert_error(raw(c, "POST", "/api/workspaces", padded), 413, "body_too_large")


def test_the_server_still_answers_after_oversize_bodies(world):
    for _ in range(3):
        big = b" " * (2 * MIB)
        assert_error(raw(world.owner.client, "POST", "/api/workspaces", big), 413)
    assert world.owner.client.get("/api/workspaces").status_code == 200


WRONG_MEDIA = [
    ("text/plain", b'{"name": "x"}'),
    ("application/x-www-form-urlencoded", b"name=x"),
    (
        "multipart/form-data; boundary=xyz",
        b'--xyz\r\nContent-Disposition: form-data; name="name"\r\n\r\nx\r\n--xyz--\r\n',
    ),
    ("application/xml", b"<name>x</name>"),
    ("text/json", b'{"name": "x"}'),
    ("application/jsonp", b'{"name": "x"}'),
    (None, b'{"name": "x"}'),
]


@pytest.mark.parametrize("route", ROUTES, ids=ROUTE_IDS)
@pytest.mark.parametrize(("media", "content"), WRONG_MEDIA, ids=[str(m) for m, _ in WRONG_MEDIA])
def test_wrong_content_type_is_415(world, route, media, content):
    r = raw(world.client(route), route.method, world.path(route), content, media)
    assert_error(r, 415, "unsupported_media_type")


@pytest.mark.parametrize(
    "media",
    ["application/json; charset=utf-8", "Application/JSON", "application/json ;charset=UTF-8"],
)
def test_json_content_type_variants_are_accepted(world, media):
    r = raw(world.owner.client, "POST", "/api/workspaces", b'{"name": "media"}', media)
    assert r.status_code == 201, r.text


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/api/nothing-here"),
        ("POST", "/api/nothing-here"),
        ("DELETE", "/api/nothing-here"),
        ("GET", "/api/workspaces/{wid}/nothing"),
        ("GET", "/api/auth"),
        ("GET", "/api/auth/me/extra"),
        ("GET", "/api/v2/workspaces"),
        ("GET", "/nothing-here"),
        ("GET", "/api/%00"),
    ],
)
def test_unknown_routes_are_404_json(world, method, path):
    url = path.format(wid=world.workspace)
    r = world.owner.client.request(method, url, json={"name": "x"} if method == "POST" else None)
    assert_error(r, 404)


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("PATCH", "/api/workspaces"),
        ("PUT", "/api/workspaces"),
        ("DELETE", "/api/workspaces"),
        ("GET", "/api/auth/login"),
        ("GET", "/api/auth/register"),
        ("PUT", "/api/auth/login"),
        ("GET", "/api/auth/logout"),
        ("POST", "/api/auth/me"),
        ("DELETE", "/api/auth/me"),
        ("PATCH", "/api/workspaces/{wid}"),
        ("POST", "/api/workspaces/{wid}"),
        ("PATCH", "/api/workspaces/{wid}/members/{mid}"),
        ("GET", "/api/workspaces/{wid}/members/{mid}"),
        ("PUT", "/api/sandboxes/{sid}"),
        ("GET", "/api/sandboxes/{sid}/pause"),
        ("DELETE", "/api/sandboxes/{sid}/resume"),
    ],
)
def test_wrong_methods_are_405_json(world, method, path):
    url = path.format(wid=world.workspace, mid=world.other.id, sid=world.sandbox)
    r = world.owner.client.request(method, url)
    assert_error(r, 405)
    assert r.headers.get("allow"), "a 405 says which methods are allowed"
    assert method not in r.headers["allow"]


@pytest.mark.parametrize(
    ("path", "methods"),
    [
        ("/api/workspaces", {"GET", "POST"}),
        ("/api/workspaces/{wid}", {"GET", "DELETE"}),
        ("/api/workspaces/{wid}/members/{mid}", {"PUT", "DELETE"}),
        ("/api/sandboxes/{sid}", {"GET", "DELETE"}),
    ],
)
def test_405_allow_lists_every_method_of_the_path(world, path, methods):
    url = path.format(wid=world.workspace, mid=world.other.id, sid=world.sandbox)
    r = world.owner.client.request("PATCH", url)
    assert_error(r, 405)
    allowed = {m.strip() for m in r.headers.get("allow", "").split(",")} - {"HEAD", ""}
    assert allowed == methods, r.headers.get("allow")


def test_errors_carry_no_trace_even_for_odd_requests(world):
    """A handful of odd requests at once: each a 4xx with the error shape."""
    c = world.owner.client
    odd = [
        c.post(
            "/api/workspaces", content=b"\x00" * 100, headers={"content-type": "application/json"}
        ),
        c.post(
            "/api/workspaces",
            content=b'{"name": 1e999}',
            headers={"content-type": "application/json"},
        ),
        c.post(
            "/api/workspaces",
            content=b'{"name": NaN}',
            headers={"content-type": "application/json"},
        ),
        c.post(
            "/api/workspaces",
            content=b'{"name": ' + b"9" * 5000 + b"}",
            headers={"content-type": "application/json"},
        ),
        c.post(
            "/api/workspaces",
            content=b'{"name": "a", "name": 5}',
            headers={"content-type": "application/json"},
        ),
        c.post("/api/workspaces?name=x", json={"name": "ok"}),
    ]
    for r in odd[:-1]:
        assert_error(r, {400, 422})
    assert odd[-1].status_code == 201  # an unknown query parameter is ignored


# --- values the database or the password hasher cannot take ---------------------------
#
# NUL characters (PostgreSQL text cannot hold them) and lone surrogates (not encodable as
# UTF-8) must be refused before they reach the database or the hasher. These run against a
# server and database of their own: should one slip through and a request half-succeed,
# the events it leaves must not be in the shared database, where other tests' view
# rebuilds would choke on them.


@dataclass
class Isolated:
    url: str
    database_url: str
    log: Path
    owner: User
    workspace: str


@pytest.fixture(scope="module")
def isolated(
    make_database: Callable[[], str],
    server_env: dict[str, str],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Isolated]:
    database_url = make_database()
    folder = tmp_path_factory.mktemp("isolated")
    env = {**server_env, "SANDBAR_DATABASE_URL": database_url, "SANDBAR_DATA_DIR": str(folder)}
    proc = ServerProcess(env, folder / "server.log").start()
    owner = register(proc.url, "owner")
    owner.client.headers["connection"] = "close"
    r = owner.client.post("/api/workspaces", json={"name": "isolated"})
    assert r.status_code == 201, r.text
    try:
        yield Isolated(proc.url, database_url, folder / "server.log", owner, r.json()["id"])
    finally:
        owner.client.close()
        proc.stop()


def fresh(base_url: str) -> httpx.Client:
    return httpx.Client(base_url=base_url, timeout=30, headers={"connection": "close"})


def events_mentioning(database_url: str, text: str) -> int:
    """How many stored events mention ``text`` (a plain ASCII string)."""
    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            f"SELECT count(*) FROM {EVENTS_TABLE} WHERE position(%s::bytea in state) > 0",
            (text.encode(),),
        ).fetchone()
    return row[0]


@pytest.mark.parametrize(
    "password",
    ["\ud800" * 8, "password\udfff", "pass\u0000word"],
    ids=["surrogates", "trailing-surrogate", "nul"],
)
def test_odd_passwords_get_an_answer_not_a_crash(isolated, password):
    """A password that cannot be encoded as UTF-8 is invalid (422); a NUL is either
    accepted or refused, but never a 5xx."""
    body = ascii_json({"username": unique("odd"), "password": password})
    with fresh(isolated.url) as c:
        r = raw(c, "POST", "/api/auth/register", body)
    if "\u0000" in password:
        no_crash(r)
    else:
        assert_error(r, 422, field="password")


ODD_EMAILS = [
    "nul\u0000@example.com",
    "a@example.com\u0000",
    "surrogate\ud800@example.com",
    "bell\u0007@example.com",
    "esc\u001b@example.com",
]


@pytest.mark.parametrize("email", ODD_EMAILS, ids=[ascii(e)[:30] for e in ODD_EMAILS])
def test_register_emails_with_control_characters_are_422(isolated, email):
    body = ascii_json({"username": unique("mail"), "password": PASSWORD, "email": email})
    with fresh(isolated.url) as c:
        r = raw(c, "POST", "/api/auth/register", body)
    assert_error(r, 422, field="email")


@pytest.mark.parametrize("email", ODD_EMAILS[:3], ids=["nul", "trailing-nul", "surrogate"])
def test_a_refused_registration_leaves_no_trace(isolated, email):
    """Whatever the answer to a bad registration, it is all or nothing: no event names the
    user, and the username is still free."""
    name = unique("atomic")
    body = ascii_json({"username": name, "password": PASSWORD, "email": email})
    with fresh(isolated.url) as c:
        r = raw(c, "POST", "/api/auth/register", body)
    assert r.status_code != 201 or r.json()["username"] == name
    if r.status_code == 201:
        return  # accepted: nothing to leave behind
    left = events_mentioning(isolated.database_url, name)
    with fresh(isolated.url) as c:
        again = c.post("/api/auth/register", json={"username": name, "password": PASSWORD})
    assert (left, again.status_code) == (0, 201), (
        f"after a {r.status_code}: {left} event(s) name the user; registering again: "
        f"{again.status_code} {again.text}"
    )


LOGIN_ODDITIES = ["nul\u0000name", "surrogate\ud800", "x" * 10_000, ""]


@pytest.mark.parametrize("field", ["username", "password"])
@pytest.mark.parametrize("value", LOGIN_ODDITIES, ids=["nul", "surrogate", "10k", "empty"])
def test_login_with_odd_values_never_crashes(isolated, field, value):
    """Odd usernames and passwords at sign-in are refused (401 or 422), never a 5xx. Each
    from a loopback address of its own, so the failures do not add up to a lock-out."""
    body = {"username": unique("ghost"), "password": PASSWORD, field: value}
    address = f"127.{uuid.uuid4().int % 250 + 1}.{uuid.uuid4().int % 250}.2"
    transport = httpx.HTTPTransport(local_address=address)
    with httpx.Client(base_url=isolated.url, transport=transport, timeout=30) as c:
        r = raw(c, "POST", "/api/auth/login", ascii_json(body))
    assert_error(r, {401, 422})


BAD_MEMBER_USERNAMES = ["nul\u0000name", "surrogate\ud800", "x" * 10_000, "", "bad name"]


@pytest.mark.parametrize(
    "username", BAD_MEMBER_USERNAMES, ids=["nul", "surrogate", "10k", "empty", "space"]
)
def test_add_member_odd_usernames_never_crash(isolated, username):
    """No such user can exist: a 404 or a 422 naming the username, never a 5xx."""
    body = ascii_json({"username": username, "role": "guest"})
    r = raw(isolated.owner.client, "POST", f"/api/workspaces/{isolated.workspace}/members", body)
    error = assert_error(r, {404, 422})
    if r.status_code == 422:
        assert error["field"] == "username"


# --- arbitrary JSON -------------------------------------------------------------------

# Text that may hold anything JSON can carry, lone surrogates and control characters too.
any_text = st.text(st.characters(exclude_categories=()), max_size=40)
scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | any_text
)
json_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(any_text | st.sampled_from(["name", "username"]), inner, max_size=4)
    ),
    max_leaves=15,
)
# Objects shaped almost like the real bodies: the known fields with arbitrary values.
KNOWN = ["name", "username", "password", "email", "role", "type"]
near_bodies = st.dictionaries(
    st.sampled_from(KNOWN), json_values | any_text | st.just(PASSWORD), min_size=1, max_size=4
)
# Registrations that get past the username check, so the other fields are reached.
near_registrations = st.fixed_dictionaries(
    {"username": st.from_regex(r"[a-z0-9_-]{3,32}", fullmatch=True)},
    optional={"password": json_values | any_text, "email": json_values | any_text},
)


@settings(max_examples=60, deadline=None)
@given(value=json_values | near_bodies | near_registrations)
def test_arbitrary_json_gets_an_answer_not_a_crash(isolated, value):
    content = ascii_json(value)
    if len(content) > MIB:
        return
    for path in ("/api/workspaces", "/api/auth/register"):
        r = raw(isolated.owner.client, "POST", path, content)
        no_crash(r)
        if r.status_code < 400:
            assert r.status_code == 201, r.text
            assert isinstance(r.json(), dict)
