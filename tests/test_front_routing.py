"""Every request of a connection is routed by its own Host, whatever came before it on
the connection: what a reverse proxy that pools its connections to Sandbar (nginx with
upstream keep-alive, HAProxy, a cloud load balancer) sends. One client connection
carries API requests, a cloud sandbox's, a local sandbox's (through its agent's tunnel)
and an SSE stream in any order, pipelined or one by one, then a WebSocket upgrade; each
is answered by the right side, in order, with its own body."""

from __future__ import annotations

import json
import socket
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.sync.client import connect as ws_connect

from interfaces.bootstrap import Sandbar
from tests.conftest import ServerProcess, User, record, register, running
from tests.front_client import Answer, Reader, request
from tests.test_tunnel import AgentProcess, Local, own_local
from tests.upstream import TestAgent


@dataclass
class World:
    server: ServerProcess
    owner: User
    cookie: str
    cloud_host: str
    cloud_token: str
    local: Local


@pytest.fixture(scope="module")
def world(
    server_env: dict[str, str],
    sandbar: Sandbar,
    agent_app: tuple[TestAgent, int],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[World]:
    folder = tmp_path_factory.mktemp("routing")
    with running(server_env, folder / "server.log") as server:
        local = own_local(server, agent_app[1], folder)
        agent = AgentProcess(local.config, local.id)
        try:
            local.wait_status("running")
            owner = register(server.url, "router")
            wid = owner.client.post("/api/workspaces", json={"name": "routes"}).json()["id"]
            r = owner.client.post(
                f"/api/workspaces/{wid}/sandboxes", json={"name": "cloud", "type": "opencode"}
            )
            sid = uuid.UUID(r.json()["id"])
            record(sandbar, sid, lambda s: s.record_started(f"127.0.0.1:{agent_app[1]}"))
            token = owner.client.post(f"/api/sandboxes/{sid}/access-tokens").json()["token"]
            cookie = "; ".join(f"{k}={v}" for k, v in owner.client.cookies.items())
            yield World(server, owner, cookie, f"oc-{sid}.localhost", token, local)
        finally:
            agent.stop()


@dataclass
class Step:
    """A request, and what its answer must show."""

    data: bytes
    check: Callable[[Answer], None]
    method: str = "GET"


def _echo(host: str, n: int) -> Callable[[Answer], None]:
    def check(answer: Answer) -> None:
        assert answer.status == 200, answer
        seen = json.loads(answer.body)
        assert seen["query"] == f"n={n}", seen  # this request's answer, in its turn
        assert ["x-forwarded-host", host] in seen["headers"], seen  # from the right side

    return check


def _steps(world: World) -> dict[str, Callable[[int], Step]]:
    bearer = {"Authorization": f"Bearer {world.cloud_token}"}
    local_bearer = {"Authorization": f"Bearer {world.local.token}"}
    local_host = world.local.host.split(":")[0]

    def me(n: int) -> Step:
        def check(answer: Answer) -> None:
            assert answer.status == 200, answer
            assert json.loads(answer.body)["username"] == world.owner.username

        return Step(request("GET", "localhost", "/api/auth/me", {"Cookie": world.cookie}), check)

    def create(n: int) -> Step:
        name = f"w{n}-{uuid.uuid4().hex[:6]}"
        body = json.dumps({"name": name}).encode()
        headers = {"Cookie": world.cookie, "Content-Type": "application/json"}

        def check(answer: Answer) -> None:
            assert answer.status == 201, answer
            assert json.loads(answer.body)["name"] == name

        return Step(request("POST", "localhost", "/api/workspaces", headers, body), check, "POST")

    def health(n: int) -> Step:
        def check(answer: Answer) -> None:
            assert answer.status == 200 and json.loads(answer.body) == {"status": "ok"}

        return Step(request("GET", "localhost", "/healthz"), check)

    def cloud(n: int) -> Step:
        data = request("GET", world.cloud_host, f"/echo?n={n}", bearer)
        return Step(data, _echo(world.cloud_host, n))

    def cloud_upload(n: int) -> Step:
        body = b"u" * (1000 + n)
        data = request("POST", world.cloud_host, f"/echo?n={n}", bearer, body)
        echo = _echo(world.cloud_host, n)

        def check(answer: Answer) -> None:
            echo(answer)
            assert json.loads(answer.body)["body_size"] == len(body)

        return Step(data, check, "POST")

    def local(n: int) -> Step:
        data = request("GET", local_host, f"/echo?n={n}", local_bearer)
        return Step(data, _echo(local_host, n))

    def sse(n: int) -> Step:
        def check(answer: Answer) -> None:
            assert answer.status == 200, answer
            assert answer.header("content-type") == "text/event-stream"
            assert answer.body.count(b"data: event") == 3

        return Step(request("GET", world.cloud_host, "/sse?n=3", bearer), check)

    def sandbox_refusal(n: int) -> Step:
        def check(answer: Answer) -> None:  # the gate's, not the API's 404
            assert answer.status == 404, answer
            assert b"There is no sandbox at this address." in answer.body

        return Step(request("GET", f"oc-{uuid.uuid4()}.localhost", "/"), check)

    return {
        "me": me,
        "create": create,
        "health": health,
        "cloud": cloud,
        "cloud_upload": cloud_upload,
        "local": local,
        "sse": sse,
        "sandbox_refusal": sandbox_refusal,
    }


KINDS = ["me", "create", "health", "cloud", "cloud_upload", "local", "sse", "sandbox_refusal"]


def _run(world: World, kinds: list[str], pipelined: bool, upgrade: str | None) -> None:
    make = _steps(world)
    steps = [make[kind](n) for n, kind in enumerate(kinds)]
    sock = socket.create_connection(("127.0.0.1", world.server.port), timeout=30)
    try:
        reader = Reader(sock)
        if pipelined:
            sock.sendall(b"".join(step.data for step in steps))
            for step in steps:
                step.check(reader.answer(step.method))
        else:
            for step in steps:
                sock.sendall(step.data)
                step.check(reader.answer(step.method))
        assert not reader.buffer  # nothing more than the answers asked for
        if upgrade is None:
            return
        # The same connection, now a WebSocket to a sandbox (its agent's own echo).
        host, token = (
            (world.cloud_host, world.cloud_token)
            if upgrade == "cloud"
            else (world.local.host.split(":")[0], world.local.token)
        )
        with ws_connect(
            f"ws://{host}:{world.server.port}/ws",
            sock=sock,
            additional_headers={"authorization": f"Bearer {token}"},
            open_timeout=15,
        ) as ws:
            first = json.loads(ws.recv(timeout=15))
            assert first["headers"]["x-forwarded-host"] == f"{host}:{world.server.port}"
            ws.send("hello")
            assert ws.recv(timeout=15) == "hello"
    finally:
        sock.close()


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    kinds=st.lists(st.sampled_from(KINDS), min_size=1, max_size=7),
    pipelined=st.booleans(),
    upgrade=st.sampled_from([None, "cloud", "local"]),
)
def test_each_request_of_a_connection_goes_where_its_host_says(
    world: World, kinds: list[str], pipelined: bool, upgrade: str | None
) -> None:
    _run(world, kinds, pipelined, upgrade)


@pytest.mark.parametrize("order", [["me", "cloud", "local"], ["local", "me", "cloud", "me"]])
def test_api_and_sandbox_requests_alternate_on_one_connection(
    world: World, order: list[str]
) -> None:
    """The case a pooled front makes every second: named, so a failure reads plainly."""
    _run(world, order * 3, pipelined=False, upgrade=None)
    _run(world, order * 3, pipelined=True, upgrade="local")


def test_a_tunnel_dial_after_other_requests_reaches_the_tunnel(world: World) -> None:
    """An agent's dial on a connection that carried API requests is the tunnel's: a
    wrong token is refused by the tunnel (not answered by the REST API)."""
    with socket.create_connection(("127.0.0.1", world.server.port), timeout=30) as sock:
        reader = Reader(sock)
        sock.sendall(request("GET", "localhost", "/healthz"))
        assert reader.answer().status == 200
        sock.sendall(
            request(
                "GET",
                "localhost",
                f"/api/tunnel/{uuid.uuid4()}",  # (not a sandbox: refused by the tunnel)
                {
                    "Authorization": "Bearer sbt_wrong",
                    "Upgrade": "websocket",
                    "Connection": "Upgrade",
                    "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
                    "Sec-WebSocket-Version": "13",
                },
            )
        )
        answer = reader.answer()
        assert answer.status == 403, answer
        assert b"unknown sandbox or token" in answer.body  # the tunnel's words


@pytest.mark.parametrize(
    ("head", "status"),
    [
        # RFC 9112, 3.2: HTTP/1.1 needs exactly one Host.
        (b"GET /healthz HTTP/1.1\r\n\r\n", 400),
        (b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nHost: localhost\r\n\r\n", 400),
        (b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nHost: oc-x.localhost\r\n\r\n", 400),
        # An absolute-form target's authority wins over Host.
        (b"GET http://localhost/healthz HTTP/1.1\r\nHost: oc-1.localhost\r\n\r\n", 200),
        (b"GET ftp://localhost/healthz HTTP/1.1\r\nHost: localhost\r\n\r\n", 400),
        (b"GET http://user@localhost/healthz HTTP/1.1\r\nHost: localhost\r\n\r\n", 400),
    ],
)
def test_the_host_rules_of_http_1_1(world: World, head: bytes, status: int) -> None:
    with socket.create_connection(("127.0.0.1", world.server.port), timeout=30) as sock:
        sock.sendall(head)
        assert Reader(sock).answer().status == status


def test_an_absolute_form_target_reaches_the_agent_in_origin_form(world: World) -> None:
    host = world.cloud_host
    with socket.create_connection(("127.0.0.1", world.server.port), timeout=30) as sock:
        sock.sendall(
            request(
                "GET",
                "localhost",  # (the target's authority wins)
                f"http://{host}/echo?n=7",
                {"Authorization": f"Bearer {world.cloud_token}"},
            )
        )
        answer = Reader(sock).answer()
    _echo(host, 7)(answer)
    seen = json.loads(answer.body)
    assert seen["path"] == "/echo"
    assert [h for h in seen["headers"] if h[0] == "host"] == [["host", host]]
