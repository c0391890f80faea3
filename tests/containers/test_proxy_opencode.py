"""The subdomain proxy in front of the real opencode (images/build.sh): its web app, its
OpenAPI document, its event stream and a terminal's WebSocket reach a program holding an
access token and a browser that walked the ticket flow, at ``oc-{id}.localhost``; with no
credentials a browser is sent to the API host, and Sandbar's own credentials never reach
opencode (watched on the wire)."""

from __future__ import annotations

import base64
import json
import socket
import struct
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import ClientConnection
from websockets.sync.client import connect as ws_connect

from infrastructure.agents import DerivedSecrets
from tests.conftest import ServerProcess, User, register
from tests.containers.conftest import make_sandbox, make_workspace, wait_for
from tests.containers.test_lifecycle import recorded_address
from tests.terminals import terminal_round_trip
from tests.waiting import wait_until


@dataclass
class OpenBox:
    """A running opencode sandbox, its owner, and how to reach its host."""

    id: str
    owner: User
    host: str  # "oc-{id}.localhost:{port}", as a browser would name it
    server: ServerProcess
    token: str  # an access token of the owner's

    def client(self, **headers: str) -> httpx.Client:
        """A client of the sandbox host (connecting to the server's loopback address)."""
        return httpx.Client(
            base_url=self.server.url, headers={"host": self.host, **headers}, timeout=30
        )

    def bearer(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.token}"}

    def websocket(self, path: str, headers: dict[str, str]) -> ClientConnection:
        sock = socket.create_connection(("127.0.0.1", self.server.port), timeout=10)
        return ws_connect(
            f"ws://{self.host}{path}", sock=sock, additional_headers=headers, open_timeout=15
        )


def open_box(server: ServerProcess) -> OpenBox:
    owner = register(server.url, "ocproxy")
    sid = make_sandbox(owner, make_workspace(owner))
    body = wait_for(owner.client, sid, "running", "failed", timeout=180)
    assert body["status"] == "running", body
    host = f"oc-{sid}.localhost:{server.port}"
    assert body["url"] == f"http://{host}/"
    r = owner.client.post(f"/api/sandboxes/{sid}/access-tokens")
    assert r.status_code == 201, r.text
    return OpenBox(sid, owner, host, server, r.json()["token"])


@pytest.fixture(scope="module")
def box(opencode_server: ServerProcess, engine: Any) -> Iterator[OpenBox]:
    made = open_box(opencode_server)
    yield made
    made.owner.client.close()


def walk_ticket_flow(box: OpenBox, path: str) -> str:
    """What a browser does on its first visit to ``path``: sent to the API host, which
    knows its session, and back with a one-time ticket for the sandbox host's cookie.
    Returns that cookie's value."""
    with box.client() as anonymous:
        first = anonymous.get(path)
        assert first.status_code == 302, first.text
        to_api = urlsplit(first.headers["location"])
        assert to_api.netloc == f"localhost:{box.server.port}"
        assert to_api.path == f"/api/sandboxes/{box.id}/open"
        assert parse_qs(to_api.query)["next"] == [path]
        second = box.owner.client.get(f"{to_api.path}?{to_api.query}")
        assert second.status_code == 302, second.text
        back = urlsplit(second.headers["location"])
        assert (back.scheme, back.netloc, back.path) == ("http", box.host, "/_sandbar/ticket")
        third = anonymous.get(f"{back.path}?{back.query}")
        assert third.status_code == 302, third.text
        assert third.headers["location"] == path
        name, _, rest = third.headers["set-cookie"].partition("=")
        assert name == "sandbar_sandbox"
        attributes = rest.lower()
        assert "httponly" in attributes and "domain" not in attributes
        return rest.split(";")[0]


def first_event(client: httpx.Client, path: str) -> dict:
    """The first server-sent event of ``path``'s stream, without waiting for its end."""
    timeout = httpx.Timeout(10, read=15)
    with client.stream("GET", path, headers={"accept": "text/event-stream"}, timeout=timeout) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line.startswith("data:"):
                return json.loads(line[5:])
    raise AssertionError("the event stream ended before its first event")


def assert_web_app(client: httpx.Client) -> None:
    page = client.get("/", headers={"accept": "text/html"})
    assert page.status_code == 200, page.text
    assert page.headers["content-type"].startswith("text/html")
    assert "<title>OpenCode</title>" in page.text
    # Its script, served from the same host.
    script = page.text.split('<script type="module" crossorigin src="', 1)[1].split('"', 1)[0]
    assert script.startswith("/assets/index-") and script.endswith(".js"), script
    js = client.get(script)
    assert js.status_code == 200
    assert "javascript" in js.headers["content-type"]
    assert len(js.content) > 100_000  # the whole app, not an error page


def assert_openapi(client: httpx.Client) -> dict:
    doc = client.get("/doc")
    assert doc.status_code == 200, doc.text
    spec = doc.json()
    assert spec["openapi"].startswith("3.")
    assert spec["info"]["title"] == "opencode"
    assert "/event" in spec["paths"] and "/pty/{ptyID}/connect" in spec["paths"]
    return spec


# Without credentials


def test_without_credentials_a_browser_is_sent_to_the_api_host(box: OpenBox) -> None:
    with box.client() as anonymous:
        r = anonymous.get("/doc?x=1", headers={"accept": "text/html"})
        assert r.status_code == 302
        assert r.headers["location"] == (
            f"http://localhost:{box.server.port}/api/sandboxes/{box.id}/open?next=%2Fdoc%3Fx%3D1"
        )
        assert r.headers["cache-control"] == "no-store"
        # Not a browser's navigation: refused, not forwarded.
        assert anonymous.post("/pty", json={"command": "/bin/sh"}).status_code == 401
        forged = anonymous.get("/doc", headers={"authorization": "Bearer sbx_forged"})
        assert forged.status_code == 401
        assert "openapi" not in forged.text
        # A foreign cookie is no grant either.
        assert anonymous.get("/doc", headers={"cookie": "sandbar_sandbox=sbx_x"}).status_code == 302
    with pytest.raises(InvalidStatus) as refused, box.websocket("/pty/pty_x/connect", {}):
        pass
    assert refused.value.response.status_code == 401


def test_terminals_work_in_the_image_as_built(opencode_server: ServerProcess) -> None:
    """opencode's terminals load a native library that needs libutil.so.1: the image
    must carry it (images/build.sh), or every POST /pty is a 500."""
    fresh = open_box(opencode_server)
    try:
        with fresh.client(**fresh.bearer()) as client:
            created = client.post("/pty", json={"command": "/bin/sh"})
        assert created.status_code == 200, created.text
    finally:
        fresh.owner.client.close()


# With an access token


def test_web_app_openapi_and_events_with_an_access_token(box: OpenBox) -> None:
    with box.client(**box.bearer()) as client:
        assert_web_app(client)
        spec = assert_openapi(client)
        assert "/global/health" in spec["paths"]
        health = client.get("/global/health")
        assert health.status_code == 200 and health.json()["healthy"] is True
        event = first_event(client, "/event")
        assert event["type"] == "server.connected", event
        # Leaving the stream before its end (the proxy lets the agent go) harms nothing.
        assert client.get("/global/health").status_code == 200


def test_terminal_websocket_round_trip_with_an_access_token(box: OpenBox) -> None:
    with box.client(**box.bearer()) as client:
        terminal_round_trip(client, lambda path: box.websocket(path, box.bearer()))


# With the browser's cookie


def test_the_ticket_flow_cookie_opens_everything(box: OpenBox) -> None:
    grant = walk_ticket_flow(box, "/")
    # As a browser sends it: writes and WebSockets from the sandbox's own page say so.
    cookie = {"cookie": f"sandbar_sandbox={grant}", "origin": f"http://{box.host}"}
    with box.client(**cookie) as browser:
        assert_web_app(browser)
        assert_openapi(browser)
        assert first_event(browser, "/event")["type"] == "server.connected"
        terminal_round_trip(browser, lambda path: box.websocket(path, cookie))


# What reaches opencode


class WireTap:
    """The TCP payloads sent to some ports of this machine (every interface), read with a
    packet socket: the bytes the proxy really sends the agent."""

    def __init__(self, ports: set[int]) -> None:
        self.ports = ports
        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(0x0800))
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 << 20)
        self.sock.settimeout(0.2)
        self.payloads: list[bytes] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._stop.is_set():
            try:
                packet = self.sock.recv(1 << 16)
            except TimeoutError:
                continue
            if len(packet) < 20 or packet[9] != 6:  # not TCP
                continue
            ip_header = (packet[0] & 0x0F) * 4
            (port,) = struct.unpack("!H", packet[ip_header + 2 : ip_header + 4])
            tcp_header = (packet[ip_header + 12] >> 4) * 4
            payload = packet[ip_header + tcp_header :]
            if port in self.ports and payload:
                self.payloads.append(payload)

    def wait_to_see(self, *marks: bytes) -> None:
        """Until the payloads hold each of ``marks``: packets are read in the order they
        came, so what was sent before them has been read too."""
        wait_until(
            lambda: all(mark in b"".join(self.payloads) for mark in marks),
            what="the tap seeing each request",
        )

    def stop(self) -> bytes:
        self._stop.set()
        self._thread.join()
        self.sock.close()
        return b"\n".join(self.payloads)


def test_sandbar_credentials_never_reach_opencode(box: OpenBox) -> None:
    session = box.owner.client.cookies["sandbar_session"]
    grant = walk_ticket_flow(box, "/doc")
    address = recorded_address(box.server.env["SANDBAR_DATABASE_URL"], box.id)
    try:
        tap = WireTap({int(address.rpartition(":")[2]), 4096})
    except PermissionError:
        pytest.skip("watching the wire needs CAP_NET_RAW")
    probes = [f"probe-{uuid.uuid4().hex}" for _ in range(3)]
    try:
        # A program with a token, and a browser with its cookie, each also sending a
        # session cookie (never sent to this host by a browser, but a client may) and a
        # cookie of the agent's own.
        with box.client(**box.bearer()) as client:
            jar = f"sandbar_session={session}; mine={probes[0]}"
            assert client.get("/global/health", headers={"cookie": jar}).status_code == 200
        jar = f"sandbar_sandbox={grant}; sandbar_session={session}; mine={probes[1]}"
        with box.client(cookie=jar, origin=f"http://{box.host}") as browser:
            assert browser.get("/global/health").status_code == 200
            assert first_event(browser, "/event")["type"] == "server.connected"
            pty_id = browser.post("/pty", json={"command": "/bin/sh"}).json()["id"]
        jar = f"sandbar_sandbox={grant}; sandbar_session={session}; mine={probes[2]}"
        own = {"cookie": jar, "origin": f"http://{box.host}"}
        with box.websocket(f"/pty/{pty_id}/connect", own) as ws:
            ws.recv(timeout=10)  # the terminal's opening message: the handshake went through
        tap.wait_to_see(*(probe.encode() for probe in probes))
    finally:
        wire = tap.stop()
    with box.client(**box.bearer()) as client:
        client.delete(f"/pty/{pty_id}")

    # The tap saw these requests (waited for above): the agent's own cookies pass, with
    # its own credential.
    password = DerivedSecrets(box.server.env["SANDBAR_SECRET_KEY"].encode()).upstream_credential(
        uuid.UUID(box.id)
    )
    basic = base64.b64encode(f"opencode:{password}".encode())
    assert b"Basic " + basic in wire
    # Sandbar's own never.
    assert session.encode() not in wire
    assert grant.encode() not in wire
    assert box.token.encode() not in wire
    assert b"sandbar_" not in wire.lower()
