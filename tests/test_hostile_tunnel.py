"""The agent's side is hostile too (issue 22): a tunnel client written for the tests
(tests/hostile_agent.py: a real WebSocket, real HTTP/2 frames) with a valid token, against
a real ``sandbar serve``. Whatever it sends, it can cost Sandbar only a bounded amount,
and only its own tunnel ends."""

from __future__ import annotations

import json
import socket
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import h2.errors
import pytest
from hyperframe.frame import (
    DataFrame,
    HeadersFrame,
    PingFrame,
    PriorityFrame,
    PushPromiseFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)
from websockets.frames import Opcode

from tests.conftest import ServerProcess, register, run_sandbar, running
from tests.hostile_agent import MAX_WINDOW, HostileAgent, Refused
from tests.test_tunnel import AgentProcess, Local, agent_cli, new_code, own_local
from tests.upstream import TestAgent

CALM = h2.errors.ErrorCodes.ENHANCE_YOUR_CALM
POLICY = 1008


@pytest.fixture(scope="module")
def hostile_server(
    server_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    with running(server_env, tmp_path_factory.mktemp("hostile") / "server.log") as proc:
        yield proc


@pytest.fixture(scope="module")
def neighbour(
    hostile_server: ServerProcess,
    agent_app: tuple[TestAgent, int],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Local, AgentProcess]]:
    """Another user's well-behaved agent on the same server, for the module's length."""
    local = own_local(hostile_server, agent_app[1], tmp_path_factory.mktemp("neighbour"))
    agent = local.connect()
    local.wait_status("running")
    yield local, agent
    agent.stop()


def still_served(neighbour: tuple[Local, AgentProcess]) -> None:
    """The neighbour's tunnel stayed up through the flood and still serves."""
    local, agent = neighbour
    with local.client() as client:
        assert client.get("/echo").status_code == 200
    assert "disconnected" not in agent.output(), agent.output()


def tunnel_token(local: Local) -> str:
    return json.loads(local.config.read_text())[local.id]["tunnel_token"]


def dial(local: Local) -> HostileAgent:
    """The hostile agent, connected (dials again while Sandbar asks it to wait)."""
    deadline = time.monotonic() + 60
    while True:
        try:
            return HostileAgent(local.server.port, local.id, tunnel_token(local))
        except Refused as e:
            assert e.response.status_code == 429 and time.monotonic() < deadline, e
            time.sleep(float(e.response.headers.get("Retry-After", "1")))


def calmed(agent: HostileAgent) -> bool:
    goaway = agent.goaway()
    return goaway is not None and agent.close_frame is not None


def opened_stream(local: Local, agent: HostileAgent) -> tuple[int, socket.socket]:
    """A browser's request to the sandbox: the stream Sandbar opens for it, and the
    browser's socket (the request waits for its answer)."""
    local.wait_status("running")
    browser = socket.create_connection(("127.0.0.1", local.server.port), timeout=30)
    browser.sendall(
        f"GET /x HTTP/1.1\r\nHost: {local.host}\r\n"
        f"Authorization: Bearer {local.token}\r\n\r\n".encode()
    )
    agent.wait_for(lambda a: bool(a.of_type(HeadersFrame)))
    return agent.of_type(HeadersFrame)[0].stream_id, browser


FLOODS = {
    "PING": lambda i: PingFrame(0, opaque_data=i.to_bytes(8, "big")),
    "SETTINGS": lambda i: SettingsFrame(0),
    "connection WINDOW_UPDATE": lambda i: WindowUpdateFrame(0, window_increment=1),
    "PRIORITY": lambda i: PriorityFrame(1 + 2 * (i % 50), depends_on=0, stream_weight=1),
    # (by hand: hyperframe's ExtensionFrame says a length of 0 whatever its body)
    "unknown type": lambda i: struct.pack(">IBI", 1 << 8 | 0xEE, 0, 1) + b"x",
}


@pytest.mark.parametrize("kind", list(FLOODS))
def test_a_flood_of_control_frames_ends_only_that_tunnel(
    hostile_server: ServerProcess,
    neighbour: tuple[Local, AgentProcess],
    tmp_path: Path,
    kind: str,
) -> None:
    """Issue 22, 2: 2-3 MB/s of PINGs froze the loop. Past a budget the tunnel ends with
    GOAWAY ENHANCE_YOUR_CALM and close code 1008 (before, every one was answered, for
    ever)."""
    local = own_local(hostile_server, 9, tmp_path)
    agent = dial(local)
    agent.settle()
    make = FLOODS[kind]
    sent = 0
    while sent < 20_000 and not agent.eof:
        agent.send(*(make(sent + i) for i in range(500)))
        sent += 500
    agent.wait_for(calmed)
    goaway = agent.goaway()
    assert goaway is not None and goaway.error_code == CALM, agent.summary()
    assert agent.close_frame is not None and agent.close_frame.code == POLICY
    # PINGs were answered only within the budget.
    assert len([f for f in agent.of_type(PingFrame) if "ACK" in f.flags]) <= 1_100
    agent.close()
    still_served(neighbour)


@pytest.mark.parametrize("kind", ["RST_STREAM", "empty DATA", "DATA on a closed stream"])
def test_a_flood_on_a_stream_ends_the_tunnel(
    hostile_server: ServerProcess,
    neighbour: tuple[Local, AgentProcess],
    tmp_path: Path,
    kind: str,
) -> None:
    """RST_STREAM and DATA for a stream that is over, and empty DATA: h2 dropped each
    quietly (or answered it), at whatever rate they came."""
    local = own_local(hostile_server, 9, tmp_path)
    agent = dial(local)
    agent.settle()
    stream, browser = opened_stream(local, agent)
    agent.answer(stream)
    if kind == "empty DATA":
        frame = DataFrame(stream, data=b"")
    else:
        agent.send(RstStreamFrame(stream, error_code=0))  # (the stream is over)
        frame = (
            RstStreamFrame(stream, error_code=0)
            if kind == "RST_STREAM"
            else DataFrame(stream, data=b"x")
        )
    for _ in range(40):
        if agent.eof or calmed(agent):
            break
        agent.send(*([frame] * 500))
    agent.wait_for(calmed)
    goaway = agent.goaway()
    assert goaway is not None and goaway.error_code == CALM, agent.summary()
    browser.close()
    agent.close()
    still_served(neighbour)


def test_pushes_are_disabled(hostile_server: ServerProcess, tmp_path: Path) -> None:
    """Sandbar's SETTINGS say ENABLE_PUSH=0, and a PUSH_PROMISE ends the tunnel (500k
    of them were taken, +315 MiB)."""
    local = own_local(hostile_server, 9, tmp_path)
    agent = dial(local)
    agent.settle()
    stream, browser = opened_stream(local, agent)
    settings = [f for f in agent.of_type(SettingsFrame) if "ACK" not in f.flags]
    assert any(f.settings.get(SettingsFrame.ENABLE_PUSH) == 0 for f in settings), settings
    agent.answer(stream)
    block = agent.header_block(
        [(":method", "GET"), (":scheme", "http"), (":path", "/p"), (":authority", "a")]
    )
    agent.send(PushPromiseFrame(stream, promised_stream_id=2, data=block, flags=["END_HEADERS"]))
    agent.wait_for(lambda a: a.goaway() is not None)
    goaway = agent.goaway()
    assert goaway is not None and goaway.error_code == h2.errors.ErrorCodes.PROTOCOL_ERROR
    browser.close()
    agent.close()


def test_websocket_pings_from_an_agent_that_never_reads(
    hostile_server: ServerProcess, tmp_path: Path
) -> None:
    """An agent floods WebSocket PINGs and reads nothing (RSS 94 -> 1,451 MiB in 25 s):
    PONGs go out only within the budget, then the tunnel ends (1008)."""
    local = own_local(hostile_server, 9, tmp_path)
    agent = dial(local)
    agent.settle()
    payload = b"p" * 125
    for _ in range(20_000):
        agent.send_ws(Opcode.PING, payload)
        if agent.eof:
            break
    local.wait_status("offline")  # the tunnel ended, though the agent read nothing
    agent.read_to_end()
    assert agent.pongs <= 1_100, agent.summary()
    assert agent.close_frame is not None and agent.close_frame.code == POLICY


def test_an_agent_that_does_not_read_holds_uploads_back_then_loses_its_tunnel(
    server_env: dict[str, str], tmp_path: Path
) -> None:
    """The agent opens every window wide, takes an upload's stream and stops reading
    (answering Sandbar's heartbeat blindly): Sandbar stops taking the browser's body
    after a bounded amount (it took all of it into memory before), and ends the tunnel
    (once it has taken nothing for SANDBAR_TUNNEL_STALL_AFTER: 1 s here, not 15)."""
    quick = {"SANDBAR_TUNNEL_STALL_AFTER": "1", "SANDBAR_TUNNEL_OFFLINE_GRACE": "0.5"}
    with running({**server_env, **quick}, tmp_path / "server.log") as server:
        _upload_to_an_agent_that_does_not_read(own_local(server, 9, tmp_path))


def _upload_to_an_agent_that_does_not_read(local: Local) -> None:
    agent = dial(local)
    agent.settle(window=MAX_WINDOW)
    local.wait_status("running")
    browser = socket.create_connection(("127.0.0.1", local.server.port), timeout=30)
    size = 96 * 1024 * 1024
    browser.sendall(
        f"POST /upload HTTP/1.1\r\nHost: {local.host}\r\n"
        f"Authorization: Bearer {local.token}\r\nContent-Length: {size}\r\n\r\n".encode()
    )
    agent.wait_for(lambda a: bool(a.of_type(HeadersFrame)))
    agent.answer(agent.of_type(HeadersFrame)[0].stream_id)
    stop = threading.Event()

    def blind_acks() -> None:  # keeps the heartbeat alive without reading a byte
        while not stop.wait(1):
            try:
                agent.send(PingFrame(0, opaque_data=b"sandbar!", flags=["ACK"]))
            except OSError:
                return

    acks = threading.Thread(target=blind_acks, daemon=True)
    acks.start()
    sent = 0
    browser.settimeout(5)  # no progress for this long: the upload is held back
    chunk = b"\0" * (1024 * 1024)
    try:
        while sent < size:
            sent += browser.send(chunk)
    except TimeoutError:
        pass
    except OSError:
        pass  # (the tunnel ended and took the request with it)
    assert sent < 48 * 1024 * 1024, f"{sent} of {size} bytes taken"
    local.wait_status("offline", timeout=10)  # the tunnel ended (no later than 15 + 3 s)
    stop.set()
    browser.close()
    agent.close()


def test_redials_are_limited_and_not_each_recorded(
    hostile_server: ServerProcess, server_env: dict[str, str], tmp_path: Path
) -> None:
    """A valid token redialled in a loop (16 threads added 12-25 Connected/Disconnected
    events a second): redials back off (429 with Retry-After), and a quick redial writes
    no event."""
    local = own_local(hostile_server, 9, tmp_path)
    token = tunnel_token(local)
    accepted = refused = 0
    for _ in range(30):
        try:
            agent = HostileAgent(hostile_server.port, local.id, token)
        except Refused as e:
            assert e.response.status_code == 429, e
            assert int(e.response.headers["Retry-After"]) >= 1
            refused += 1
            continue
        accepted += 1
        agent.settle()
        agent.close()
    assert accepted <= 4 and refused >= 26, (accepted, refused)  # (1, 2, 4 s apart)
    local.wait_status("offline", timeout=30)
    out = run_sandbar("audit", "log", "--workspace", local.workspace_id, "--json", env=server_env)
    assert out.returncode == 0, out.stderr
    events = [json.loads(line) for line in out.stdout.splitlines() if line.strip()]
    flaps = [
        e["event"] for e in events if e["aggregate_id"] == local.id and "onnected" in e["event"]
    ]
    assert len(flaps) <= 4, flaps  # one Connected, one Disconnected (2 more if slow)


def test_wrong_tokens_are_limited_per_address_and_not_each_logged(
    server_env: dict[str, str], tmp_path: Path
) -> None:
    """A wrong token tried in a loop (1,700 a second, a WARNING line each): past a few,
    the address gets 429 without a look at the database, and the log holds one line for
    them, not one per try."""
    server = ServerProcess(server_env, tmp_path / "server.log").start()
    try:
        local = own_local(server, 9, tmp_path)
        statuses = []
        for _ in range(60):
            try:
                HostileAgent(server.port, local.id, "sbt_wrong").close()
            except Refused as e:
                statuses.append(e.response.status_code)
        assert set(statuses) == {403, 429} and statuses.count(403) <= 14, statuses
        refusals = [line for line in server.log.read_text().splitlines() if local.id in line]
        assert len(refusals) <= 1, refusals
    finally:
        server.stop()


def test_the_token_travels_in_a_header(
    hostile_server: ServerProcess, agent_app: tuple[TestAgent, int], tmp_path: Path
) -> None:
    """The agent sends its token in ``Authorization: Bearer`` (in the query string it
    landed in access logs)."""
    local = own_local(hostile_server, agent_app[1], tmp_path)
    token = tunnel_token(local)
    with socket.socket() as front:
        front.bind(("127.0.0.1", 0))
        front.listen(1)
        front.settimeout(30)
        registrations = json.loads(local.config.read_text())
        registrations[local.id]["server"] = f"http://127.0.0.1:{front.getsockname()[1]}"
        local.config.write_text(json.dumps(registrations))
        agent = local.connect()
        try:
            conn, _ = front.accept()
            conn.settimeout(30)
            head = b""
            while b"\r\n\r\n" not in head:
                head += conn.recv(65536)
            conn.close()
        finally:
            agent.stop()
    request_line, *headers = head.decode().split("\r\n")
    assert token not in request_line and "?" not in request_line, request_line
    assert f"authorization: bearer {token}".lower() in [h.lower() for h in headers]
    assert token not in agent.output()


def test_a_registrant_who_loses_the_developer_role_loses_the_tunnel(
    hostile_server: ServerProcess, agent_app: tuple[TestAgent, int], tmp_path: Path
) -> None:
    """Issue 15, 7: a removed member's agent kept serving (and got the owner's request
    bodies). Demotion or removal closes its tunnel at once, and it cannot dial again."""
    owner = register(hostile_server.url, "owner")
    dev = register(hostile_server.url, "dev")
    wid = owner.client.post("/api/workspaces", json={"name": "team"}).json()["id"]
    r = owner.client.post(
        f"/api/workspaces/{wid}/members", json={"username": dev.username, "role": "developer"}
    )
    assert r.status_code == 201, r.text
    config = tmp_path / "agents.json"
    done = agent_cli(
        config, "register", "--server", hostile_server.url, "--code", new_code(dev, wid),
        "--name", "devbox", "--target", f"http://127.0.0.1:{agent_app[1]}",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    sid = next(iter(json.loads(config.read_text())))
    local = Local(sid, owner, wid, config, hostile_server)
    local.token = owner.client.post(f"/api/sandboxes/{sid}/access-tokens").json()["token"]

    def connected() -> AgentProcess:
        agent = local.connect()
        local.wait_status("running")
        with local.client() as client:
            assert client.get("/echo").status_code == 200
        return agent

    for lose in ("demote", "remove"):
        agent = connected()
        if lose == "demote":
            r = owner.client.put(f"/api/workspaces/{wid}/members/{dev.id}", json={"role": "guest"})
        else:
            r = owner.client.delete(f"/api/workspaces/{wid}/members/{dev.id}")
        assert r.status_code in (200, 204), r.text
        assert agent.proc.wait(timeout=30) == 1, agent.output()
        assert "no longer a developer" in agent.output()
        assert "Traceback" not in agent.output()
        local.wait_status("offline")
        again = local.connect()  # its token no longer opens a tunnel
        assert again.proc.wait(timeout=30) == 1
        assert "refused this agent" in again.output() and "Traceback" not in again.output()
        if lose == "demote":  # back to developer: served again (then removed)
            r = owner.client.put(
                f"/api/workspaces/{wid}/members/{dev.id}", json={"role": "developer"}
            )
            assert r.status_code == 200, r.text


def test_the_cli_says_why_it_stopped_without_a_traceback(
    hostile_server: ServerProcess, agent_app: tuple[TestAgent, int], tmp_path: Path
) -> None:
    """Issue 15, 8: ``sandbar agent connect`` ended with a traceback ("The future belongs
    to a different loop") when the server stopped it; and an unreadable registrations
    file is one clear line."""
    local = own_local(hostile_server, agent_app[1], tmp_path)
    first = local.connect()
    local.wait_status("running")
    second = local.connect()
    assert first.proc.wait(timeout=30) == 1
    assert "another connection of this agent took over" in first.output()
    assert local.owner.client.delete(f"/api/sandboxes/{local.id}").status_code == 202
    assert second.proc.wait(timeout=30) == 1
    assert "the sandbox was deleted" in second.output()
    for agent in (first, second):
        assert "Traceback" not in agent.output(), agent.output()
    local.config.write_text("{not json")
    broken = agent_cli(local.config, "connect", local.id)
    assert broken.returncode == 1 and "cannot read the registrations" in broken.stderr
    assert "Traceback" not in broken.stderr
    local.config.write_text(json.dumps({local.id: {"server": hostile_server.url}}))
    sparse = agent_cli(local.config, "connect", local.id)
    assert sparse.returncode == 1 and "incomplete" in sparse.stderr, sparse.stderr
    listed = agent_cli(local.config, "list")
    assert listed.returncode == 0 and local.id in listed.stdout, listed.stderr


def test_the_agent_heeds_retry_after(
    hostile_server: ServerProcess, agent_app: tuple[TestAgent, int], tmp_path: Path
) -> None:
    """Sandbar answers a dial that comes too soon with 429 and Retry-After: the agent
    waits that long before it dials again (its own backoff starts at half a second)."""
    local = own_local(hostile_server, agent_app[1], tmp_path)
    with socket.socket() as front:
        front.bind(("127.0.0.1", 0))
        front.listen(4)
        front.settimeout(30)
        registrations = json.loads(local.config.read_text())
        registrations[local.id]["server"] = f"http://127.0.0.1:{front.getsockname()[1]}"
        local.config.write_text(json.dumps(registrations))
        agent = local.connect()
        try:
            conn, _ = front.accept()
            with conn:
                conn.settimeout(30)
                head = b""
                while b"\r\n\r\n" not in head:
                    head += conn.recv(65536)
                conn.sendall(
                    b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 7\r\n"
                    b"Content-Length: 0\r\nConnection: close\r\n\r\n"
                )
            deadline = time.monotonic() + 30
            while "reconnecting in" not in agent.output():
                assert time.monotonic() < deadline, agent.output()
                assert agent.proc.poll() is None, agent.output()
                time.sleep(0.1)
        finally:
            agent.stop()
    assert "(Sandbar answered 429); reconnecting in 7.0 s" in agent.output(), agent.output()
