"""The served /openapi.json is the contract, held to two things:

- docs/api.md says the same: every route, each request field and parameter, each status
  and its error codes, each response shape and its fields. The page's format is fixed (see
  "How this page is laid out" in it) so that this test can read it.
- the server does what it says: schemathesis sends generated requests, valid and not,
  to every operation of a real ``sandbar serve``, signed in, with real ids in the paths,
  and checks each answer against the document. No 5xx, no answer the document does not
  allow."""

from __future__ import annotations

import copy
import re
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.cookies import SimpleCookie
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import APIOperation, GenerationMode, Response
from schemathesis.core.result import Err, Ok
from schemathesis.errors import InvalidSchema
from schemathesis.specs.openapi.checks import positive_data_acceptance

from tests.conftest import FAST_HASHING, PASSWORD, ROOT, examples, running

DOC = ROOT / "docs" / "api.md"
SESSION_COOKIE = "sandbar_session"
EXAMPLES = examples(25)  # per operation and mode: the run stays well under a minute


# docs/api.md, read.


@dataclass
class Route:
    params: set[tuple[str, str]] = field(default_factory=set)  # (name, where)
    answers: dict[str, str] = field(default_factory=dict)  # status -> shape or codes


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def _table(lines: list[str], start: int) -> list[list[str]]:
    """The rows of the table whose header is at ``start`` (header and rule skipped)."""
    rows = []
    i = start + 2
    while i < len(lines) and lines[i].startswith("|"):
        rows.append(_cells(lines[i]))
        i += 1
    return rows


def _codes(cell: str) -> str:
    return ", ".join(re.findall(r"`([a-z_]+)`", cell))


def read_doc(text: str) -> tuple[dict[str, Route], dict[str, set[str]], dict[str, list[str]]]:
    """(routes by "METHOD /path", shapes' fields by name, answers every route adds by
    prefix). Routes: a ``### METHOD /path`` heading, then a table whose first column
    is ``Status`` (status, shape or error codes, when) and, if it takes any, a table whose
    first column is ``Parameter`` (name, in: body or query, ...). Shapes: a ``### Shape``
    heading in "Shapes", then a table whose first column is ``Field``."""
    lines = text.splitlines()
    routes: dict[str, Route] = {}
    shapes: dict[str, set[str]] = {}
    common: dict[str, list[str]] = {}
    heading = ""
    for i, line in enumerate(lines):
        if line.startswith("### "):
            heading = line[4:].strip()
            if re.fullmatch(r"(GET|POST|PUT|DELETE) /\S*", heading):
                routes[heading] = Route()
            continue
        if not line.startswith("| ") or (i > 0 and lines[i - 1].startswith("|")):
            continue
        first = _cells(line)[0]
        rows = _table(lines, i)
        if heading in routes and first == "Status":
            routes[heading].answers = {r[0]: r[1] for r in rows}
        elif heading in routes and first == "Parameter":
            routes[heading].params = {(r[0].strip("`"), r[1]) for r in rows}
        elif first == "Field":
            shapes[heading] = {r[0].strip("`") for r in rows}
        elif first == "Applies to":
            for r in rows:
                common.setdefault(r[0].strip("`"), []).append(f"{r[1]} {_codes(r[2])}")
    return routes, shapes, common


def _with_common(key: str, route: Route, common: dict[str, list[str]]) -> dict[str, str]:
    """A route's answers as the document lists them: its own, with the common ones merged."""
    method, path = key.split(" ", 1)
    answers = {s: (_codes(v) or v.strip("`")) for s, v in route.answers.items()}
    for applies, extra in common.items():
        scope = applies.split()
        if path.startswith(scope[-1]) and (len(scope) == 1 or method != "GET"):
            for item in extra:
                status, codes = item.split(" ", 1)
                mine = [c for c in answers.get(status, "").split(", ") if c]
                answers[status] = ", ".join([*codes.split(", "), *mine])
    return answers


# /openapi.json, read.


def _shape_name(schema: dict[str, Any]) -> str:
    if "$ref" in schema:
        return schema["$ref"].rsplit("/", 1)[-1]
    if schema.get("type") == "array":
        return f"[{_shape_name(schema['items'])}]"
    return "?"


def served_routes(doc: dict[str, Any]) -> dict[str, Route]:
    routes = {}
    for path, operations in doc["paths"].items():
        for method, op in operations.items():
            route = Route()
            for p in op.get("parameters", []):
                if p["in"] != "path":
                    route.params.add((p["name"], p["in"]))
            body = op.get("requestBody", {}).get("content", {}).get("application/json")
            if body:
                shape = _shape_name(body["schema"])
                props = doc["components"]["schemas"][shape]["properties"]
                route.params |= {(name, "body") for name in props}
            for status, answer in op["responses"].items():
                schema = answer.get("content", {}).get("application/json", {}).get("schema")
                if status.startswith(("4", "5")):
                    route.answers[status] = answer["description"]
                else:
                    route.answers[status] = _shape_name(schema) if schema else "-"
            routes[f"{method.upper()} {path}"] = route
    return routes


def _sorted_codes(answers: dict[str, str]) -> dict[str, Any]:
    """Error codes as a sorted list, shapes as they are."""
    return {s: sorted(v.split(", ")) if s >= "4" else v for s, v in answers.items()}


def differences(text: str, served: dict[str, Any]) -> list[str]:
    """Where docs/api.md (``text``) and the served document disagree."""
    routes, shapes, common = read_doc(text)
    served_ = served_routes(served)
    found = [f"only in the doc: {k}" for k in sorted(set(routes) - set(served_))]
    found += [f"only served: {k}" for k in sorted(set(served_) - set(routes))]
    for key in sorted(set(routes) & set(served_)):
        if routes[key].params != served_[key].params:
            found.append(f"{key}: parameters {routes[key].params} != {served_[key].params}")
        documented = _sorted_codes(_with_common(key, routes[key], common))
        answers = _sorted_codes(served_[key].answers)
        if documented != answers:
            found.append(f"{key}: answers {documented} != {answers}")
    schemas = served["components"]["schemas"]
    bodies = {
        _shape_name(body["schema"])
        for ops in served["paths"].values()
        for op in ops.values()
        for body in op.get("requestBody", {}).get("content", {}).values()
    }
    sent = {n: set(s["properties"]) for n, s in schemas.items() if "properties" in s}
    sent = {n: fields for n, fields in sent.items() if n not in bodies}
    for name in sorted(set(shapes) | set(sent)):
        if shapes.get(name) != sent.get(name):
            found.append(f"shape {name}: {shapes.get(name)} != {sent.get(name)}")
    values = {
        m[1]: re.findall(r"`([a-z]+)`", m[2]) for m in re.finditer(r"^- `(\w+)`:(.*)$", text, re.M)
    }
    enums = {n: s["enum"] for n, s in schemas.items() if "enum" in s}
    if values != enums:
        found.append(f"values {values} != {enums}")
    return found


@pytest.fixture(scope="module")
def api_server(
    make_database: Callable[[], str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """A server of its own: the run locks 127.0.0.1 out of signing in (failed logins) and
    leaves hundreds of odd requests in the log."""
    env = {
        **FAST_HASHING,
        "SANDBAR_WORKER": "false",
        "SANDBAR_DATABASE_URL": make_database(),
        "SANDBAR_DATA_DIR": str(tmp_path_factory.mktemp("openapi-data")),
        "SANDBAR_SECRET_KEY": "test-secret-key-" + uuid.uuid4().hex,
    }
    with running(env, tmp_path_factory.mktemp("openapi") / "server.log") as proc:
        yield proc.url


@pytest.fixture(scope="module")
def served(api_server: str) -> dict[str, Any]:
    return httpx.get(f"{api_server}/openapi.json").json()


def test_the_doc_and_the_served_document_say_the_same(served: dict[str, Any]) -> None:
    """Routes, their parameters and body fields, statuses and error codes, the shapes sent
    and their fields, the sets of values."""
    assert differences(DOC.read_text(), served) == []


@pytest.mark.parametrize(
    ("change", "found"),
    [
        (lambda t: t + "\n### GET /api/nowhere\n", "only in the doc: GET /api/nowhere"),
        (lambda t: t.replace("### GET /api/auth/me", "### GET /api/auth/myself"), "only served"),
        (lambda t: t.replace("| 200 | `User` |", "| 418 | `teapot` |\n| 200 | `User` |"), "User"),
        (lambda t: t.replace("| `code` | query |", "| `token` | query |"), "parameters"),
        (lambda t: t.replace("`busy` | already deleted", "`gone` | already deleted"), "busy"),
        (lambda t: t.replace("| `display_name` |", "| `displayname` |"), "shape User"),
        (lambda t: t.replace("`pausing`, `paused`", "`paused`"), "values"),
    ],
)
def test_a_difference_is_found(
    served: dict[str, Any], change: Callable[[str], str], found: str
) -> None:
    """The comparison is not vacuous: each kind of difference fails it."""
    text = DOC.read_text()
    changed = change(text)
    assert changed != text
    assert any(found in d for d in differences(changed, served)), differences(changed, served)


def test_a_difference_on_the_served_side_is_found(served: dict[str, Any]) -> None:
    """And the reverse: a status, a code or a field the server adds and the page lacks."""
    changed = copy.deepcopy(served)
    me = changed["paths"]["/api/auth/me"]["get"]["responses"]
    me["418"] = {"description": "teapot"}
    me["401"]["description"] += ", expired"
    changed["components"]["schemas"]["User"]["properties"]["avatar"] = {"type": "string"}
    found = differences(DOC.read_text(), changed)
    assert len(found) == 2 and "teapot" in found[0] and "expired" in found[0], found
    assert "avatar" in found[1], found


# A schemathesis run.


@dataclass
class World:
    """The server, its document, and what the run's paths point at: real ids, a session.
    Every answer is checked against the document and kept in ``answers``."""

    url: str
    schema: schemathesis.BaseSchema
    session: str = ""
    ids: dict[str, str] = field(default_factory=dict)
    answers: set[tuple[str, int]] = field(default_factory=set)

    def send(self, case: schemathesis.Case, signed_in: bool = True) -> Response:
        """Send ``case`` (signed in: with the session, and a well-formed id in its path
        made a real one) and check the answer against the document."""
        label = case.operation.label
        for name, value in (case.path_parameters or {}).items():
            if signed_in and _is_uuid(value):  # (an ill-formed one must get a 422)
                case.path_parameters[name] = self.ids.get(f"{label} {name}", self.ids[name])
        cookies = {}
        if signed_in:
            cookies[SESSION_COOKIE] = self.session
            if label == "POST /api/auth/logout":  # (it ends the session it is sent with)
                cookies[SESSION_COOKIE] = _session(self.scripted("POST", "/api/auth/register"))
        response = case.call(base_url=self.url, cookies=cookies, allow_redirects=False)
        self.answers.add((label, response.status_code))
        case.validate_response(response, excluded_checks=[positive_data_acceptance])
        return response

    def scripted(
        self, method: str, path: str, body: Any = None, status: int = 0, **params: str
    ) -> Response:
        """One request written out (a new user if no body is given for a sign-up),
        checked like the generated ones."""
        if path == "/api/auth/register" and body is None:
            body = {"username": f"st-{uuid.uuid4().hex[:12]}", "password": PASSWORD}
        operation = self.schema[path][method]
        case = (
            operation.Case(path_parameters=params or None, body=body)
            if body is not None
            else operation.Case(path_parameters=params or None)
        )
        response = self.send(case, signed_in=bool(self.session))
        assert response.status_code == (status or response.status_code), response.text
        return response


@pytest.fixture(scope="module")
def world(api_server: str) -> World:
    """A signed-in owner of a workspace with a sandbox and a developer; a workspace and a
    sandbox apart, for the deletions to hit while the rest keep something to work on."""
    world = World(api_server, schemathesis.openapi.from_url(f"{api_server}/openapi.json"))
    owner = {"username": "st-owner", "password": PASSWORD}
    world.scripted("POST", "/api/auth/register", owner, 201)
    member = world.scripted("POST", "/api/auth/register", {**owner, "username": "st-dev"}, 201)
    world.session = _session(world.scripted("POST", "/api/auth/login", owner, 200))

    def create(path: str, body: dict[str, str], **ids: str) -> str:
        return world.scripted("POST", path, body, 201, **ids).json()["id"]

    workspace = create("/api/workspaces", {"name": "fuzzed"})
    world.ids = {"workspace_id": workspace}
    box = {"name": "box", "type": "opencode"}
    sandboxes = "/api/workspaces/{workspace_id}/sandboxes"
    world.ids |= {
        "sandbox_id": create(sandboxes, box, workspace_id=workspace),
        "member_id": member.json()["id"],
        "DELETE /api/workspaces/{workspace_id} workspace_id": create(
            "/api/workspaces", {"name": "doomed"}
        ),
        "DELETE /api/sandboxes/{sandbox_id} sandbox_id": create(
            sandboxes, box, workspace_id=workspace
        ),
    }
    developer = {"username": "st-dev", "role": "developer"}
    world.scripted(
        "POST", "/api/workspaces/{workspace_id}/members", developer, 201, workspace_id=workspace
    )
    code = world.scripted(
        "POST", "/api/workspaces/{workspace_id}/agent-code", None, 201, workspace_id=workspace
    ).json()["code"]
    agent = {"code": code, "name": "laptop", "type": "openclaw"}
    world.scripted("POST", "/api/agent/register", agent, 201)
    return world


def test_the_server_keeps_to_its_document(world: World) -> None:
    """Every operation, with data that fits the document and data that does not, signed in
    and not. (Driven with hypothesis directly: schemathesis's pytest plugin does not run
    under pytest 9.)"""
    failures: list[str] = []
    operations = [_operation(result) for result in world.schema.get_all_operations()]
    for operation in operations:
        for mode, signed_in in (
            (GenerationMode.POSITIVE, True),
            (GenerationMode.NEGATIVE, True),
            (GenerationMode.POSITIVE, False),
        ):

            @given(operation.as_strategy(generation_mode=mode))
            @settings(
                max_examples=EXAMPLES if signed_in else 2,
                deadline=None,
                suppress_health_check=list(HealthCheck),
                derandomize=True,
                database=None,
            )
            def check(case: schemathesis.Case) -> None:
                world.send(case, signed_in)  # noqa: B023 - called at once, in this iteration

            try:
                check()
            except Unsatisfiable:  # nothing to get wrong: no parameters, no body
                assert mode is GenerationMode.NEGATIVE, operation.label
            except (Exception, ExceptionGroup) as e:
                failures.append(f"{operation.label} ({mode}, signed in: {signed_in}):\n{e}")
    assert not failures, "\n\n".join(failures)
    # Not vacuous: every operation did its work at least once (but those no request can
    # succeed at here), and each one that needs a session refused a request without one.
    labels = {operation.label for operation in operations}
    succeeded = {label for label, status in world.answers if status < 400}
    assert labels - succeeded == UNREACHABLE, sorted(world.answers)
    refused = {label for label, status in world.answers if status == 401}
    needs_session = {
        o.label
        for o in operations
        if "unauthenticated" in o.definition.raw["responses"].get("401", {}).get("description", "")
    }
    needs_session.discard("GET /api/auth/oidc/{provider}")  # (only with link=true)
    assert needs_session <= refused, sorted(needs_session - refused)


# Sandboxes stay `creating` here (no worker): none can be paused or resumed. No sign-in
# provider is configured here (test_sign_in.py runs them against stand-ins).
UNREACHABLE = {
    "POST /api/sandboxes/{sandbox_id}/pause",
    "POST /api/sandboxes/{sandbox_id}/resume",
    "GET /api/auth/oidc/{provider}",
    "GET /api/auth/oidc/{provider}/callback",
}


def _operation(result: Ok[APIOperation] | Err[InvalidSchema]) -> APIOperation:
    assert isinstance(result, Ok), result.err()  # the document is valid OpenAPI
    return result.ok()


def _session(response: Response) -> str:
    cookie = SimpleCookie()
    for header in response.headers.get("set-cookie", []):
        cookie.load(header)
    return cookie[SESSION_COOKIE].value


def _is_uuid(value: Any) -> bool:
    try:
        uuid.UUID(str(value))
    except ValueError:
        return False
    return True


def test_the_doc_points_nowhere_outside_the_repo() -> None:
    text = DOC.read_text()
    assert "../" not in text and "shared/" not in text
    for target in re.findall(r"\]\(([^)#]+)", text):
        assert not target.startswith(("http:", "https:")), target
        assert (DOC.parent / target).exists(), target
