"""The Anthropic proxy forwards only what sandboxes need (issue 15): the Messages API and
the model list. Every workspace shares one real key, so anything else (files, batches,
the admin API) is answered 404 in Anthropic's error shape and never sent upstream, on
both of the proxy's paths: a connection the front keeps, and one that asked the REST API
first. An operator may allow more (``SANDBAR_ANTHROPIC_EXTRA_PATHS``)."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path
from uuid import UUID

import pytest

from interfaces.bootstrap import Sandbar
from tests.anthropic_standin import REAL_KEY, AnthropicStandIn
from tests.conftest import ServerProcess, free_port, record, register, run_sandbar, running
from tests.upstream import serving

FORBIDDEN = [
    ("POST", "/v1/files"),
    ("GET", "/v1/files"),
    ("POST", "/v1/messages/batches"),
    ("GET", "/v1/messages/batches/msgbatch_01/results"),
    ("GET", "/v1/organizations/api_keys"),
    ("GET", "/v1/messages"),  # the right path, the wrong method
    ("DELETE", "/v1/models/claude"),
    ("POST", "/v1/messages/../files"),
    ("POST", "/v1/%6Dessages"),  # an escape is no way around it
    ("POST", "/v1//messages"),
    ("POST", "/v1/messages/"),
    ("GET", "/v1/models/../files"),
    ("GET", "/v1/models/a/b"),
]
ALLOWED = [
    ("POST", "/v1/messages"),
    ("POST", "/v1/messages?beta=true"),
    ("POST", "/v1/messages/count_tokens"),
    ("GET", "/v1/models"),
    ("GET", "/v1/models?limit=5"),
    ("GET", "/v1/models/claude-sonnet-4-5"),
]


@pytest.fixture(scope="module")
def standin() -> Iterator[tuple[AnthropicStandIn, int]]:
    app = AnthropicStandIn()
    with serving(app) as port:
        yield app, port


def proxy_env(server_env: dict[str, str], port: int, **more: str) -> dict[str, str]:
    return {
        **server_env,
        "SANDBAR_ANTHROPIC_API_KEY": REAL_KEY,
        "SANDBAR_ANTHROPIC_BASE_URL": f"http://127.0.0.1:{port}",
        **more,
    }


@pytest.fixture(scope="module")
def api_server(
    server_env: dict[str, str],
    standin: tuple[AnthropicStandIn, int],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ServerProcess]:
    log = tmp_path_factory.mktemp("anthropic-hostile") / "server.log"
    with running(proxy_env(server_env, standin[1]), log) as proc:
        yield proc


def proxy_token(server: ServerProcess, sandbar: Sandbar) -> str:
    owner = register(server.url, "owner")
    wid = owner.client.post("/api/workspaces", json={"name": "llm"}).json()["id"]
    r = owner.client.post(
        f"/api/workspaces/{wid}/sandboxes", json={"name": "agent", "type": "opencode"}
    )
    sid = UUID(r.json()["id"])
    record(sandbar, sid, lambda s: s.record_started("127.0.0.1:9"))
    owner.client.close()
    return sandbar.secrets.proxy_token(sid)


def request(method: str, path: str, token: str, host: str = "127.0.0.1") -> bytes:
    body = b'{"model": "m", "max_tokens": 8, "messages": []}' if method == "POST" else b""
    head = (
        f"{method} /proxy/anthropic{path} HTTP/1.1\r\nHost: {host}\r\nx-api-key: {token}\r\n"
        f"content-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


def exchange(port: int, *requests: bytes) -> list[tuple[int, bytes]]:
    """Send ``requests`` one after the other on one connection; (status, body) of each."""
    answers = []
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        reader = sock.makefile("rb")
        for data in requests:
            sock.sendall(data)
            status = int(reader.readline().split()[1])
            length = 0
            while (line := reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            answers.append((status, reader.read(length)))
    return answers


def is_not_found_error(status: int, body: bytes) -> bool:
    error = json.loads(body)
    return (
        status == 404 and error["type"] == "error" and error["error"]["type"] == "not_found_error"
    )


def test_only_what_sandboxes_need_is_forwarded(
    api_server: ServerProcess, sandbar: Sandbar, standin: tuple[AnthropicStandIn, int]
) -> None:
    app, _ = standin
    token = proxy_token(api_server, sandbar)
    for method, path in FORBIDDEN:
        before = app.heads
        # On a connection of its own: relayed by the front (interfaces/proxy/front.py).
        ((status, body),) = exchange(api_server.port, request(method, path, token))
        assert is_not_found_error(status, body), (method, path, status, body)
        # After a request of the REST API on the same connection (served over ASGI when
        # the connection went to uvicorn).
        health = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
        (ok, _), (status, body) = exchange(api_server.port, health, request(method, path, token))
        assert ok == 200
        assert is_not_found_error(status, body), (method, path, status, body)
        assert app.heads == before, f"{method} {path} reached the API"
    # An absolute-form target is no way around it either.
    before = app.heads
    absolute = request("POST", "/v1/files", token).replace(
        b"POST /proxy/anthropic/", b"POST http://127.0.0.1/proxy/anthropic/", 1
    )
    ((status, body),) = exchange(api_server.port, absolute)
    assert is_not_found_error(status, body), (status, body)
    assert app.heads == before
    # What sandboxes need still goes through (the stand-in itself knows only messages).
    for method, path in ALLOWED:
        before = app.heads
        ((status, _),) = exchange(api_server.port, request(method, path, token))
        assert app.heads == before + 1, (method, path, status)
        assert app.requests[-1]["headers"]["x-api-key"] == REAL_KEY


def test_an_operator_may_allow_more(
    server_env: dict[str, str],
    sandbar: Sandbar,
    standin: tuple[AnthropicStandIn, int],
    tmp_path: Path,
) -> None:
    app, port = standin
    extra = "POST /v1/messages/batches, GET /v1/messages/batches/*/results"
    env = proxy_env(server_env, port, SANDBAR_ANTHROPIC_EXTRA_PATHS=extra)
    with running(env, tmp_path / "server.log") as server:
        token = proxy_token(server, sandbar)
        for method, path in [
            ("POST", "/v1/messages/batches"),
            ("GET", "/v1/messages/batches/msgbatch_01/results"),
        ]:
            before = app.heads
            exchange(server.port, request(method, path, token))
            assert app.heads == before + 1, (method, path)
        before = app.heads
        ((status, body),) = exchange(server.port, request("POST", "/v1/files", token))
        assert is_not_found_error(status, body) and app.heads == before


def test_a_malformed_extra_path_stops_the_server_with_a_clear_message(
    server_env: dict[str, str],
) -> None:
    env = {**server_env, "SANDBAR_ANTHROPIC_EXTRA_PATHS": "FETCH v1/files"}
    done = run_sandbar("serve", "--port", str(free_port()), env=env, timeout=60)
    assert done.returncode != 0
    assert "SANDBAR_ANTHROPIC_EXTRA_PATHS" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
