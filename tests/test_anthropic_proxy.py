"""The Anthropic API proxy, end to end: a real ``sandbar serve`` in front of a loopback
stand-in for the API, called by the official ``anthropic`` SDK as a sandbox would."""

from __future__ import annotations

import asyncio
import concurrent.futures
import http.client
import itertools
import json
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from uuid import UUID

import httpx
import psycopg
import pytest
from hypothesis import given
from hypothesis import strategies as st

from domain.sandboxes import Sandbox
from infrastructure.agents import DerivedSecrets
from infrastructure.settings import Settings
from infrastructure.usage import COUNTS
from interfaces.bootstrap import Sandbar, build
from interfaces.proxy.anthropic import UsageTap
from tests.anthropic_standin import REAL_KEY, AnthropicStandIn
from tests.conftest import (
    ServerProcess,
    User,
    record,
    register,
    run_sandbar,
    running,
    settled,
)
from tests.upstream import serving
from tests.waiting import wait_until

# The official SDK is imported by the tests that call it: its import cost each xdist
# worker over a second of CPU, in collection.
if TYPE_CHECKING:
    import anthropic

MAX_BODY = 64 * 1024


@pytest.fixture(scope="module")
def standin() -> Iterator[tuple[AnthropicStandIn, int]]:
    app = AnthropicStandIn()
    with serving(app) as port:
        yield app, port


@pytest.fixture(scope="module")
def api_server(
    server_env: dict[str, str],
    standin: tuple[AnthropicStandIn, int],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ServerProcess]:
    log = tmp_path_factory.mktemp("anthropic") / "server.log"
    env = {
        **server_env,
        "SANDBAR_ANTHROPIC_API_KEY": REAL_KEY,
        "SANDBAR_ANTHROPIC_BASE_URL": f"http://127.0.0.1:{standin[1]}",
        "SANDBAR_ANTHROPIC_MAX_BODY": str(MAX_BODY),
        "SANDBAR_ANTHROPIC_TIMEOUT": "3",
    }
    with running(env, log) as proc:
        yield proc
    assert REAL_KEY not in log.read_text()


@dataclass
class Box:
    id: UUID
    workspace_id: str
    owner: User
    token: str
    url: str

    def sdk(self, **kwargs: object) -> anthropic.Anthropic:
        import anthropic

        return anthropic.Anthropic(api_key=self.token, base_url=self.url, max_retries=0, **kwargs)


@pytest.fixture
def make_box(api_server: ServerProcess, sandbar: Sandbar) -> Callable[[], Box]:
    def make() -> Box:
        owner = register(api_server.url, "owner")
        wid = owner.client.post("/api/workspaces", json={"name": "llm"}).json()["id"]
        r = owner.client.post(
            f"/api/workspaces/{wid}/sandboxes", json={"name": "agent", "type": "opencode"}
        )
        sid = UUID(r.json()["id"])
        record(sandbar, sid, lambda s: s.record_started("127.0.0.1:9"))
        token = sandbar.secrets.proxy_token(sid)
        return Box(sid, wid, owner, token, f"{api_server.url}/proxy/anthropic")

    return make


HELLO = [{"role": "user", "content": "hello there"}]


def ask(base: str, box: Box) -> int:
    """One Messages API call through the proxy at ``base``; its status."""
    return httpx.post(
        f"{base}/proxy/anthropic/v1/messages",
        json={"model": "m", "max_tokens": 8, "messages": HELLO},
        headers={"x-api-key": box.token},
        timeout=30,
    ).status_code


def test_the_sdk_plain_and_streaming(
    make_box: Callable[[], Box], standin: tuple[AnthropicStandIn, int]
) -> None:
    box = make_box()
    app, _ = standin
    client = box.sdk()
    message = client.messages.create(model="claude-standin", max_tokens=64, messages=HELLO)
    assert message.content[0].text == "echo: hello there"  # type: ignore[union-attr]
    assert message.usage.input_tokens == 2 and message.usage.output_tokens == 3
    seen = app.requests[-1]
    assert seen["headers"]["x-api-key"] == REAL_KEY
    assert box.token not in json.dumps(seen["headers"])
    assert seen["headers"]["anthropic-version"]  # the SDK's own (see below)
    assert seen["headers"]["host"] == f"127.0.0.1:{standin[1]}"

    with client.messages.stream(
        model="claude-standin", max_tokens=64, messages=[{"role": "user", "content": "a b c"}]
    ) as stream:
        text = stream.get_final_text()
        final = stream.get_final_message()
    assert text == "echo: a b c"
    assert final.usage.output_tokens == 4


def test_tokens_are_checked(
    make_box: Callable[[], Box], api_server: ServerProcess, sandbar: Sandbar
) -> None:
    import anthropic

    box = make_box()
    with pytest.raises(anthropic.AuthenticationError) as e:
        anthropic.Anthropic(
            api_key="sk-ant-wrong", base_url=box.url, max_retries=0
        ).messages.create(model="m", max_tokens=8, messages=HELLO)
    assert e.value.body["error"]["type"] == "authentication_error"  # type: ignore[index]
    forged = box.token[:-4] + "AAAA"
    for headers in ({}, {"x-api-key": forged}, {"authorization": "Bearer " + forged}):
        r = httpx.post(f"{box.url}/v1/messages", json={}, headers=headers)
        assert r.status_code == 401
        assert r.json() == {
            "type": "error",
            "error": {"type": "authentication_error", "message": r.json()["error"]["message"]},
        }
    # Bearer works as well as x-api-key.
    r = httpx.post(
        f"{box.url}/v1/messages",
        json={"model": "m", "max_tokens": 8, "messages": HELLO},
        headers={"authorization": f"Bearer {box.token}"},
    )
    assert r.status_code == 200, r.text
    # Paused: refused; running again: fine; deleted: refused at once.
    call = lambda: httpx.post(  # noqa: E731
        f"{box.url}/v1/messages",
        json={"model": "m", "max_tokens": 8, "messages": HELLO},
        headers={"x-api-key": box.token},
    )
    assert box.owner.client.post(f"/api/sandboxes/{box.id}/pause").status_code == 202
    r = call()  # pausing, said by this server's own API: the very next request
    assert r.status_code == 403 and r.json()["error"]["type"] == "permission_error"
    record(sandbar, box.id, Sandbox.record_paused)
    assert settled(call, 403).status_code == 403
    assert box.owner.client.post(f"/api/sandboxes/{box.id}/resume").status_code == 202
    record(sandbar, box.id, lambda s: s.record_started("127.0.0.1:9"))
    assert settled(call, 200).status_code == 200
    assert box.owner.client.delete(f"/api/sandboxes/{box.id}").status_code == 202
    assert call().status_code == 401


def test_a_token_with_bytes_beyond_ascii_is_refused_in_anthropics_shape(
    make_box: Callable[[], Box], api_server: ServerProcess
) -> None:
    """A token with a byte beyond ASCII: 401 in Anthropic's shape, on a connection the
    proxy answers and on one that asked the REST API first (uvicorn's)."""
    box = make_box()
    for first in ("proxy", "api"):
        conn = http.client.HTTPConnection("127.0.0.1", api_server.port, timeout=10)
        if first == "api":
            conn.request("GET", "/healthz")
            assert conn.getresponse().read() == b'{"status":"ok"}'
        conn.putrequest("POST", "/proxy/anthropic/v1/messages", skip_accept_encoding=True)
        conn.putheader(b"x-api-key", box.token.encode() + b"\xe9")
        conn.putheader("content-length", "2")
        conn.endheaders(b"{}")
        r = conn.getresponse()
        body = json.loads(r.read())
        assert (r.status, body["error"]["type"]) == (401, "authentication_error"), (first, body)
        conn.close()


def test_headers_bodies_and_errors_pass_through(
    make_box: Callable[[], Box], standin: tuple[AnthropicStandIn, int]
) -> None:
    box = make_box()
    app, _ = standin
    url = f"{box.url}/v1/messages"
    payload = {"model": "m", "max_tokens": 8, "messages": HELLO}
    r = httpx.post(
        url,
        json=payload,
        headers={"x-api-key": box.token, "anthropic-beta": "tools-2024-04-04", "cookie": "a=b"},
    )
    assert r.status_code == 200
    seen = app.requests[-1]["headers"]
    assert seen["anthropic-version"] == "2023-06-01"  # set when the client sent none
    assert seen["anthropic-beta"] == "tools-2024-04-04"
    assert "cookie" not in seen and "authorization" not in seen
    r = httpx.post(
        url, json=payload, headers={"x-api-key": box.token, "anthropic-version": "2099-01-01"}
    )
    assert app.requests[-1]["headers"]["anthropic-version"] == "2099-01-01"  # the client's
    # The API's own errors pass through as they are.
    r = httpx.post(
        url,
        json={**payload, "messages": [{"role": "user", "content": "please fail"}]},
        headers={"x-api-key": box.token},
    )
    assert r.status_code == 529 and r.json()["error"]["type"] == "overloaded_error"
    r = httpx.post(f"{box.url}/v1/nothing", json={}, headers={"x-api-key": box.token})
    assert r.status_code == 404 and r.json()["error"]["type"] == "not_found_error"
    # Bodies over the cap: refused, whether their length is announced or not.
    big = {**payload, "pad": "x" * MAX_BODY}
    r = httpx.post(url, json=big, headers={"x-api-key": box.token})
    assert r.status_code == 413 and r.json()["error"]["type"] == "request_too_large"
    before = len(app.requests)
    r = httpx.post(
        url,
        content=iter(
            [json.dumps(big).encode()[i : i + 8192] for i in range(0, MAX_BODY + 8192, 8192)]
        ),
        headers={"x-api-key": box.token, "content-type": "application/json"},
    )
    assert r.status_code == 413
    assert all(len(req["body"]) <= MAX_BODY for req in app.requests[before:])


def test_streamed_events_pass_as_they_come(
    make_box: Callable[[], Box], standin: tuple[AnthropicStandIn, int]
) -> None:
    box = make_box()
    app, _ = standin
    app.hold.set()
    try:
        seen: list[str] = []
        with httpx.stream(
            "POST",
            f"{box.url}/v1/messages",
            json={"model": "m", "max_tokens": 8, "stream": True, "messages": HELLO},
            headers={"x-api-key": box.token},
            timeout=30,
        ) as r:
            assert r.headers["content-type"].startswith("text/event-stream")
            for line in r.iter_lines():
                if line.startswith("event: "):
                    seen.append(line[7:])
                    # The stand-in sends the next event only once this one is here.
                    app.release.release()
        assert seen[0] == "message_start" and seen[-1] == "message_stop"
    finally:
        app.hold.clear()


def test_a_slow_api_times_out_cleanly(make_box: Callable[[], Box]) -> None:
    box = make_box()
    r = httpx.post(  # the stand-in waits 6 s, then answers 200; the proxy's timeout here is 3 s
        f"{box.url}/v1/messages",
        json={
            "model": "m",
            "max_tokens": 8,
            "messages": [{"role": "user", "content": "take your time"}],
        },
        headers={"x-api-key": box.token},
        timeout=30,
    )
    assert r.status_code == 504 and r.json()["error"]["type"] == "api_error"  # (before the 200)


def test_an_answer_that_stops_coming_is_cut_cleanly(make_box: Callable[[], Box]) -> None:
    """The API goes silent mid-answer (5 s between events; the proxy's timeout here is
    3 s): the client's transfer breaks off soon after the timeout, on a connection the
    proxy answers and on one uvicorn holds, never taken for a whole answer; the request
    is recorded."""
    box = make_box()
    port = int(box.url.split(":")[2].split("/")[0])
    body = json.dumps({"model": "m", "max_tokens": 8, "stream": True, "messages": HELLO})
    headers = {"x-api-key": box.token, "content-type": "application/json"}
    for first in ("proxy", "api"):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        if first == "api":
            conn.request("GET", "/healthz")
            assert conn.getresponse().read() == b'{"status":"ok"}'
        conn.request(
            "POST", "/proxy/anthropic/v1/messages", body, {**headers, "x-standin-gap-ms": "5000"}
        )
        r = conn.getresponse()
        assert r.status == 200
        with pytest.raises(http.client.IncompleteRead) as cut:
            r.read()
        assert b"message_start" in cut.value.partial  # what came before the silence
        # Cut before the next event (it comes 5 s after the first): only the first came.
        assert cut.value.partial.count(b"event: ") == 1, (first, cut.value.partial)
        conn.close()
    assert usage_of(box, 2)["requests"] == 2


def test_an_oversized_pipelined_request_waits_for_the_answer_before_it(
    make_box: Callable[[], Box],
) -> None:
    """A second request, pipelined behind a streamed answer, goes over the body limit
    while that answer is still coming: the answer arrives whole, then the 413."""
    box = make_box()
    port = int(box.url.split(":")[2].split("/")[0])
    body = json.dumps({"model": "m", "max_tokens": 8, "stream": True, "messages": HELLO})
    streamed = (
        f"POST /proxy/anthropic/v1/messages HTTP/1.1\r\nHost: a\r\nx-api-key: {box.token}\r\n"
        f"x-standin-gap-ms: 200\r\ncontent-length: {len(body)}\r\n\r\n{body}"
    ).encode()
    oversized = (
        f"POST /proxy/anthropic/v1/messages HTTP/1.1\r\nHost: a\r\nx-api-key: {box.token}\r\n"
        "transfer-encoding: chunked\r\n\r\n"
    ).encode() + b"".join(b"2000\r\n" + b"x" * 0x2000 + b"\r\n" for _ in range(10))
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(streamed + oversized + b"0\r\n\r\n")
        received = bytearray()
        while data := sock.recv(65536):
            received += data
    head, _, rest = bytes(received).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and b"transfer-encoding: chunked" in head.lower()
    events = bytearray()
    while True:  # the first answer's chunks, each whole
        size, _, rest = rest.partition(b"\r\n")
        n = int(size, 16)
        assert rest[n : n + 2] == b"\r\n", bytes(rest[:200])
        events += rest[:n]
        rest = rest[n + 2 :]
        if n == 0:
            break
    assert events.startswith(b"event: message_start\n")
    assert events.endswith(b'event: message_stop\ndata: {"type": "message_stop"}\n\n')
    assert rest.startswith(b"HTTP/1.1 413"), rest[:200]


def test_usage_is_recorded_and_reported(
    make_box: Callable[[], Box], api_server: ServerProcess
) -> None:
    box = make_box()
    client = box.sdk()
    client.messages.create(model="m", max_tokens=8, messages=HELLO)  # 2 in, 3 out
    with client.messages.stream(model="m", max_tokens=8, messages=HELLO) as stream:
        stream.get_final_message()  # 2 in, 3 out
    usage_url = f"/api/workspaces/{box.workspace_id}/usage"
    report = wait_until(  # recorded just after each answer ends
        lambda: box.owner.client.get(usage_url).json(),
        until=lambda report: report["days"] and report["days"][0]["requests"] == 2,
        what="2 requests recorded",
    )
    (day,) = report["days"]
    assert day["sandbox_id"] == str(box.id)
    assert (day["requests"], day["input_tokens"], day["output_tokens"]) == (2, 4, 6)
    assert (day["cache_creation_input_tokens"], day["cache_read_input_tokens"]) == (6, 10)
    assert report["limits"]["daily_requests"] is None  # no default configured here
    stranger = register(api_server.url, "stranger")
    assert stranger.client.get(usage_url).status_code == 404


def usage_of(box: Box, requests: int) -> dict[str, object]:
    """The box's usage today, once ``requests`` are recorded (they are, just after each
    answer ends)."""
    days = wait_until(
        lambda: box.owner.client.get(f"/api/workspaces/{box.workspace_id}/usage").json()["days"],
        until=lambda days: days and days[0]["requests"] == requests,
        what=f"{requests} requests recorded",
    )
    return days[0]


def asked_until_passed(url: str, box: Box, passed: int) -> list[int]:
    """The statuses of the box's requests to the server at ``url``, asked until
    ``passed`` of them have passed (the rest of a limit reaches it once another server
    gives back what it held)."""
    statuses: list[int] = []

    def ask_once() -> list[int]:
        statuses.append(ask(url, box))
        return statuses

    return wait_until(
        ask_once,
        until=lambda statuses: statuses.count(200) == passed,
        timeout=15,
        interval=0.2,
        what=f"{passed} requests passed",
    )


def test_one_connection_may_ask_the_proxy_and_the_api_in_turn(
    make_box: Callable[[], Box], api_server: ServerProcess
) -> None:
    """Proxy calls are answered before uvicorn, the REST API by uvicorn: a keep-alive
    connection that goes from one to the other is answered right, in either order."""
    box = make_box()
    payload = json.dumps({"model": "m", "max_tokens": 8, "messages": HELLO})
    for first in ("proxy", "api"):
        conn = http.client.HTTPConnection("127.0.0.1", api_server.port, timeout=10)
        conn.connect()
        sock = conn.sock
        order = ["proxy", "api", "proxy", "api"] if first == "proxy" else ["api", "proxy", "api"]
        for turn in order:
            if turn == "proxy":
                headers = {"x-api-key": box.token, "content-type": "application/json"}
                conn.request("POST", "/proxy/anthropic/v1/messages", payload, headers)
            else:
                conn.request("GET", "/healthz")
            r = conn.getresponse()
            body = json.loads(r.read())
            assert r.status == 200, body
            assert ("usage" in body) if turn == "proxy" else body == {"status": "ok"}
            assert conn.sock is sock  # still the one connection
        conn.close()
    day = usage_of(box, 3)
    assert (day["requests"], day["input_tokens"], day["output_tokens"]) == (3, 6, 9)


def test_daily_limits_hold_under_concurrency(
    make_box: Callable[[], Box], api_server: ServerProcess
) -> None:
    box = make_box()
    dev = register(api_server.url, "dev")
    box.owner.client.post(
        f"/api/workspaces/{box.workspace_id}/members",
        json={"username": dev.username, "role": "maintainer"},
    )
    limits = f"/api/workspaces/{box.workspace_id}/limits"
    assert (
        dev.client.put(limits, json={"daily_requests": 1, "daily_tokens": None}).status_code == 403
    )
    r = box.owner.client.put(limits, json={"daily_requests": -1, "daily_tokens": None})
    assert r.status_code == 422
    r = box.owner.client.put(limits, json={"daily_requests": 20, "daily_tokens": None})
    assert r.status_code == 200 and r.json()["daily_requests"] == 20

    def call(_: int) -> httpx.Response:
        return httpx.post(
            f"{box.url}/v1/messages",
            json={"model": "m", "max_tokens": 8, "messages": HELLO},
            headers={"x-api-key": box.token},
            timeout=30,
        )

    with concurrent.futures.ThreadPoolExecutor(50) as pool:
        answers = list(pool.map(call, range(50)))
    statuses = [r.status_code for r in answers]
    assert statuses.count(200) == 20 and statuses.count(429) == 30, statuses
    refused = next(r for r in answers if r.status_code == 429)
    assert refused.json()["error"]["type"] == "rate_limit_error"
    assert "20 requests" in refused.json()["error"]["message"]
    assert int(refused.headers["retry-after"]) > 0
    # A token limit: under it, requests pass; once used up, refused.
    r = box.owner.client.put(limits, json={"daily_requests": None, "daily_tokens": 10_000})
    assert r.status_code == 200
    assert call(0).status_code == 200
    r = box.owner.client.put(limits, json={"daily_requests": None, "daily_tokens": 1})
    assert settled(lambda: call(0), 429).json()["error"]["message"].count("token") == 1


def test_requests_counted_ahead_never_pass_a_new_limit(
    make_box: Callable[[], Box], api_server: ServerProcess
) -> None:
    """A busy sandbox's requests are counted some at a time ahead of need; a limit set
    meanwhile holds at once, and what was counted ahead is given back, not lost."""
    box = make_box()
    assert [ask(api_server.url, box) for _ in range(9)] == [200] * 9
    limits = f"/api/workspaces/{box.workspace_id}/limits"
    r = box.owner.client.put(limits, json={"daily_requests": 9, "daily_tokens": None})
    assert r.status_code == 200
    assert ask(api_server.url, box) == 429
    r = box.owner.client.put(limits, json={"daily_requests": 12, "daily_tokens": None})
    assert [ask(api_server.url, box) for _ in range(4)] == [200, 200, 200, 429]
    assert usage_of(box, 12)["requests"] == 12


def test_a_busy_sandbox_stops_at_its_token_limit(
    make_box: Callable[[], Box], api_server: ServerProcess
) -> None:
    """One request after another, counted ahead (and topped up meanwhile): the first
    request once the day's tokens reach the limit is refused; the limit is passed by
    no more than the last answer's tokens (none are in flight)."""
    box = make_box()
    limit = 300  # some 20 answers of the stand-in's
    r = box.owner.client.put(
        f"/api/workspaces/{box.workspace_id}/limits",
        json={"daily_requests": None, "daily_tokens": limit},
    )
    assert r.status_code == 200
    statuses = []
    while len(statuses) < 100 and 429 not in statuses:
        statuses.append(ask(api_server.url, box))
    assert statuses[-1] == 429 and statuses.count(200) == len(statuses) - 1, statuses
    day = usage_of(box, statuses.count(200))
    used = sum(int(day[name]) for name in COUNTS)  # type: ignore[call-overload]
    per_answer = used / statuses.count(200)
    assert limit <= used < limit + per_answer, (used, per_answer)


def test_a_busy_workspace_is_counted_ahead_before_it_runs_out(
    make_box: Callable[[], Box], server_env: dict[str, str]
) -> None:
    """Requests counted ahead are asked for again once half are handed out, without
    waiting: of a steady stream of a workspace's requests, only the first few wait for a
    statement; what is left over is given back."""
    box = make_box()
    workspace_id = UUID(box.workspace_id)
    proxy_side = build(Settings.from_env(server_env))  # its own, as a server's
    proxy_side.changes.start()  # (nothing is counted ahead without the change feed)
    usage = proxy_side.usage

    async def run() -> int:
        waited = 0
        try:
            for i in range(3000):
                if not usage.admit_now(workspace_id):
                    waited += 1
                    await usage.admit(workspace_id)
                if i % 5 == 0:
                    await asyncio.sleep(0.001)  # (a busy sandbox's pace, and the loop turns)
        finally:
            await usage.close()  # gives back what is still counted ahead
        return waited

    try:
        wait_until(lambda: proxy_side.changes.reliable, what="the change feed listening")
        waited = asyncio.run(run())
    finally:
        proxy_side.close()
    # The first 4 wait (what is asked for ahead doubles from 1); counted only at need,
    # each batch twice the last up to 256, some 20 would.
    assert waited <= 8, waited
    with psycopg.connect(server_env["SANDBAR_DATABASE_URL"]) as conn:
        counted = conn.execute(
            "SELECT requests FROM sandbar_usage_totals WHERE workspace_id = %s", (workspace_id,)
        ).fetchone()
    assert counted == (3000,)  # each request once; nothing counted ahead is kept


def test_a_limit_is_shared_by_several_servers(
    make_box: Callable[[], Box], api_server: ServerProcess, tmp_path: Path
) -> None:
    """Two Sandbar processes on one database: what one counted ahead and did not use
    comes back once it is idle, and together they pass exactly the limit."""
    box = make_box()
    r = box.owner.client.put(
        f"/api/workspaces/{box.workspace_id}/limits",
        json={"daily_requests": 8, "daily_tokens": None},
    )
    assert r.status_code == 200
    other = ServerProcess(api_server.env, tmp_path / "server.log").start()
    try:
        first = [ask(api_server.url, box) for _ in range(4)]  # counts some ahead
        assert first == [200] * 4
        # The rest of the limit reaches the other server, once the first gives back
        # what it held (it is idle now).
        second = asked_until_passed(other.url, box, 4)
        assert second.count(200) == 4, second
        assert ask(other.url, box) == 429 and ask(api_server.url, box) == 429
    finally:
        other.stop()
    assert usage_of(box, 8)["requests"] == 8


def test_a_token_limit_reached_through_another_server_stops_a_lease(
    make_box: Callable[[], Box], api_server: ServerProcess, tmp_path: Path
) -> None:
    """One server counts a busy sandbox's requests ahead; another takes the workspace
    past its token limit. The first learns of it with its next write of usage and hands
    out nothing more from what it counted ahead: one more answer at most passes there."""
    box = make_box()
    r = box.owner.client.put(
        f"/api/workspaces/{box.workspace_id}/limits",
        json={"daily_requests": None, "daily_tokens": 400},
    )
    assert r.status_code == 200
    other = ServerProcess(api_server.env, tmp_path / "server.log").start()
    try:
        first = [ask(api_server.url, box) for _ in range(12)]  # some counted ahead there
        assert first == [200] * 12
        second: list[int] = []
        while len(second) < 100 and 429 not in second:
            second.append(ask(other.url, box))
        assert second[-1] == 429 and second.count(200) > 0, second
        after: list[int] = []

        def ask_first() -> list[int]:
            after.append(ask(api_server.url, box))
            # A sandbox's pace: each answer's usage is written before the next is asked.
            usage_of(box, len(first) + second.count(200) + after.count(200))
            return after

        wait_until(
            ask_first,
            until=lambda after: after[-1] == 429,
            timeout=15,
            interval=0,
            what="the first server refusing",
        )
        assert after.count(200) <= 1, after
    finally:
        other.stop()
    passed = len(first) + second.count(200) + after.count(200)
    day = usage_of(box, passed)
    used = sum(int(day[name]) for name in COUNTS)  # type: ignore[call-overload]
    assert used < 400 + 2 * used / passed, (used, passed)


def test_proxy_calls_count_as_activity(make_box: Callable[[], Box], sandbar: Sandbar) -> None:
    box = make_box()
    assert sandbar.activity.last_seen(box.id) is None
    box.sdk().messages.create(model="m", max_tokens=8, messages=HELLO)
    wait_until(
        lambda: sandbar.activity.last_seen(box.id), timeout=30, interval=0.1, what="activity"
    )


def test_the_real_key_is_nowhere(
    make_box: Callable[[], Box], api_server: ServerProcess, server_env: dict[str, str]
) -> None:
    """After all the above: not in any answer, the event log or the server's log."""
    box = make_box()
    answers = [
        httpx.post(f"{box.url}/v1/messages", json={"messages": HELLO}, headers=h)
        for h in ({"x-api-key": box.token}, {"x-api-key": "wrong"}, {})
    ]
    for r in answers:
        assert REAL_KEY not in r.text and REAL_KEY not in str(r.headers)
    audit = run_sandbar("audit", "log", "--json", env=server_env)
    assert audit.returncode == 0, audit.stderr
    assert REAL_KEY not in audit.stdout
    assert REAL_KEY not in Path(api_server.log).read_text()


def test_a_client_that_hangs_up_at_once_sends_nothing_half_made(
    make_box: Callable[[], Box], api_server: ServerProcess, standin: tuple[AnthropicStandIn, int]
) -> None:
    box = make_box()
    app, _ = standin
    body = json.dumps({"model": "m", "max_tokens": 8, "messages": HELLO}).encode()
    request = (
        f"POST /proxy/anthropic/v1/messages HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"x-api-key: {box.token}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\n\r\n"
    ).encode() + body
    before, heads = len(app.requests), app.heads
    for _ in range(5):
        with socket.create_connection(("127.0.0.1", api_server.port), timeout=30) as sock:
            sock.sendall(request)
            # Gone at once: the server reads the end of the stream right after the body,
            # as from a client that closed. Only, this one hears when the server is done
            # with the connection, and so when the proxy's exchange has ended.
            sock.shutdown(socket.SHUT_WR)
            closed_by_server(sock)
    # Whatever reached the API reached it whole: no head left waiting for a body.
    wait_until(
        lambda: app.heads - heads == len(app.requests) - before,
        what="every request begun at the API ended",
    )
    assert all(seen["body"] == body for seen in app.requests[before:])


def closed_by_server(sock: socket.socket) -> bytes:
    """What the server sends before it closes the connection (a reset counts too)."""
    answer = b""
    try:
        while packet := sock.recv(65536):
            answer += packet
    except ConnectionResetError:
        pass
    return answer


def test_usage_of_parallel_requests_adds_up(
    api_server: ServerProcess,
    make_box: Callable[[], Box],
    tmp_path: Path,
) -> None:
    """Requests of two sandboxes at once (counted and recorded in batches), through a
    server stopped as soon as the last answer is in: every request and token is in the
    report."""
    boxes = [make_box(), make_box()]  # two sandboxes, in two workspaces
    server = ServerProcess(api_server.env, tmp_path / "server.log").start()
    try:
        with concurrent.futures.ThreadPoolExecutor(40) as pool:
            statuses = list(pool.map(lambda i: ask(server.url, boxes[i % 2]), range(80)))
    finally:
        server.stop()
    assert statuses == [200] * 80
    assert "Traceback" not in (tmp_path / "server.log").read_text()
    for box in boxes:
        (day,) = box.owner.client.get(f"/api/workspaces/{box.workspace_id}/usage").json()["days"]
        assert (day["sandbox_id"], day["requests"]) == (str(box.id), 40)
        assert (day["input_tokens"], day["output_tokens"]) == (80, 120)


@contextmanager
def own_server(
    api_server: ServerProcess, make_database: Callable[[], str], tmp_path: Path
) -> Iterator[tuple[ServerProcess, str, Box]]:
    """A server of its own on a fresh database (for a test that breaks the database),
    its database's URL, and a sandbox there."""
    url = make_database()
    env = {**api_server.env, "SANDBAR_DATABASE_URL": url}
    server = ServerProcess(env, tmp_path / "server.log").start()
    try:
        owner = register(server.url, "owner")
        wid = owner.client.post("/api/workspaces", json={"name": "llm"}).json()["id"]
        r = owner.client.post(
            f"/api/workspaces/{wid}/sandboxes", json={"name": "agent", "type": "opencode"}
        )
        sid = UUID(r.json()["id"])
        token = DerivedSecrets(env["SANDBAR_SECRET_KEY"].encode()).proxy_token(sid)
        yield server, url, Box(sid, wid, owner, token, f"{server.url}/proxy/anthropic")
    finally:
        server.stop()


def test_a_request_that_cannot_be_counted_is_refused_cleanly(
    api_server: ServerProcess,
    make_database: Callable[[], str],
    standin: tuple[AnthropicStandIn, int],
    tmp_path: Path,
) -> None:
    """The usage counters cannot be written (here: their table is gone): 503 in
    Anthropic's shape, nothing sent on, and the server goes on answering."""
    with own_server(api_server, make_database, tmp_path) as (server, url, box):
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("DROP TABLE sandbar_usage_totals")
        asked = len(standin[0].requests)
        r = httpx.post(
            f"{server.url}/proxy/anthropic/v1/messages",
            json={"model": "m", "max_tokens": 8, "messages": HELLO},
            headers={"x-api-key": box.token},
            timeout=30,
        )
        assert r.status_code == 503, r.text
        assert r.json()["error"]["type"] == "api_error"
        assert "count" in r.json()["error"]["message"]
        assert int(r.headers["retry-after"]) > 0
        assert len(standin[0].requests) == asked  # nothing went to the API
        assert box.owner.client.get("/healthz").status_code == 200


def test_usage_the_database_refuses_is_written_once_it_takes_it(
    api_server: ServerProcess, make_database: Callable[[], str], tmp_path: Path
) -> None:
    """The usage records cannot be written for a while (here: a constraint refuses
    them): the answers still go out, the records are kept and written once the database
    takes them again; no count is lost."""
    with own_server(api_server, make_database, tmp_path) as (server, url, box):
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(
                "ALTER TABLE sandbar_usage ADD CONSTRAINT refuse CHECK (requests < 0) NOT VALID"
            )
        assert [ask(server.url, box) for _ in range(5)] == [200] * 5
        log_file = tmp_path / "server.log"
        wait_until(  # (the write was tried)
            lambda: 'constraint "refuse"' in log_file.read_text(),
            interval=0.1,
            what="the refused write logged",
        )
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("ALTER TABLE sandbar_usage DROP CONSTRAINT refuse")
        assert ask(server.url, box) == 200
        day = usage_of(box, 6)
        assert (day["requests"], day["input_tokens"], day["output_tokens"]) == (6, 12, 18)
    assert "Traceback" not in (tmp_path / "server.log").read_text()


def test_a_workspace_that_cannot_be_counted_does_not_refuse_the_others(
    api_server: ServerProcess, make_database: Callable[[], str], tmp_path: Path
) -> None:
    """Requests of two workspaces at once, counted together in batches; one workspace's
    counter cannot be written (a constraint refuses its row): its requests answer 503,
    every request of the other goes through and is recorded."""
    with own_server(api_server, make_database, tmp_path) as (server, url, good):
        wid = good.owner.client.post("/api/workspaces", json={"name": "b"}).json()["id"]
        r = good.owner.client.post(
            f"/api/workspaces/{wid}/sandboxes", json={"name": "agent", "type": "opencode"}
        )
        sid = UUID(r.json()["id"])
        token = DerivedSecrets(server.env["SANDBAR_SECRET_KEY"].encode()).proxy_token(sid)
        bad = Box(sid, wid, good.owner, token, good.url)
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(
                "ALTER TABLE sandbar_usage_totals ADD CONSTRAINT refuse"
                f" CHECK (workspace_id <> '{wid}') NOT VALID"
            )
        boxes = [good, bad]
        with concurrent.futures.ThreadPoolExecutor(32) as pool:
            statuses = list(pool.map(lambda i: (i % 2, ask(server.url, boxes[i % 2])), range(96)))
        assert sorted(set(statuses)) == [(0, 200), (1, 503)], statuses
        assert usage_of(good, 48)["requests"] == 48


def test_requests_a_server_gives_back_while_the_database_refuses_are_not_lost(
    api_server: ServerProcess, make_database: Callable[[], str], tmp_path: Path
) -> None:
    """What one server counted ahead and gives back when idle cannot be written back
    for a while (a trigger refuses it): it is kept and written once the database takes
    it, so another server still gets the rest of the limit."""
    with own_server(api_server, make_database, tmp_path) as (server, url, box):
        r = box.owner.client.put(
            f"/api/workspaces/{box.workspace_id}/limits",
            json={"daily_requests": 8, "daily_tokens": None},
        )
        assert r.status_code == 200
        assert [ask(server.url, box) for _ in range(4)] == [200] * 4  # some counted ahead
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(
                "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS"
                " $$BEGIN RAISE EXCEPTION 'no giving back now'; END$$;"
                " CREATE TRIGGER refuse BEFORE UPDATE ON sandbar_usage_totals FOR EACH ROW"
                " WHEN (NEW.requests < OLD.requests) EXECUTE FUNCTION refuse()"
            )
        log_file = tmp_path / "server.log"
        wait_until(  # (idle: it tried)
            lambda: "no giving back now" in log_file.read_text(),
            timeout=15,
            interval=0.1,
            what="a give-back tried",
        )
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("DROP TRIGGER refuse ON sandbar_usage_totals")
        other = ServerProcess(server.env, tmp_path / "other.log").start()
        try:
            second = asked_until_passed(other.url, box, 4)
            assert second.count(200) == 4, second
        finally:
            other.stop()


STREAM = b"".join(
    b"event: %s\r\ndata: %s\r\n\r\n" % (name.encode(), json.dumps(data).encode())
    for name, data in [
        ("message_start", {"type": "message_start", "message": {"usage": {"input_tokens": 7}}}),
        ("ping", {"type": "ping"}),
        ("content_block_delta", {"type": "content_block_delta", "delta": {"text": "usage"}}),
        ("message_delta", {"type": "message_delta", "usage": {"output_tokens": 3}}),
        ("message_delta", {"type": "message_delta", "usage": {"output_tokens": 11}}),
        ("message_stop", {"type": "message_stop"}),
    ]
)


@given(cuts=st.lists(st.integers(min_value=0, max_value=len(STREAM)), max_size=12))
def test_usage_is_read_from_a_stream_however_it_is_cut(cuts: list[int]) -> None:
    """The proxy reads usage from an event stream as it passes, in whatever pieces the
    network delivers it: always the same counts (running totals: the last, largest)."""
    tap = UsageTap(b"text/event-stream; charset=utf-8")
    bounds = [0, *sorted(cuts), len(STREAM)]
    for start, end in itertools.pairwise(bounds):
        tap.feed(STREAM[start:end])
    assert tap.finish() == {"input_tokens": 7, "output_tokens": 11}
