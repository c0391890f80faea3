"""Sandbar behind nginx (Debian's, installed by scripts/nginx.sh) with the configuration
README's Deploying section shows (deploy/nginx.conf): upstream keep-alive, HTTP/1.1,
WebSocket upgrade headers, buffering off. nginx sends every host's requests down
whichever kept-alive connection is free; each must still reach the right side: the
API, a sandbox through the ticket flow, a local agent dialing its tunnel through nginx,
SSE and WebSockets."""

from __future__ import annotations

import json
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit
from uuid import UUID

import httpx
import pytest
from websockets.sync.client import connect as ws_connect

from interfaces.bootstrap import Sandbar
from tests.conftest import (
    ROOT,
    ServerProcess,
    User,
    free_port,
    record,
    register,
    running,
    settled,
)
from tests.nginx_server import nginx
from tests.test_tunnel import AgentProcess, own_local
from tests.upstream import TestAgent


@dataclass
class Front:
    port: int
    sandbar: ServerProcess

    @property
    def url(self) -> str:
        return f"http://localhost:{self.port}"


@pytest.fixture(scope="module")
def front(server_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Front]:
    found = subprocess.run(
        [str(ROOT / "scripts/nginx.sh")], capture_output=True, text=True, timeout=1800
    )
    assert found.returncode == 0, found.stderr
    binary = found.stdout.strip()
    folder = tmp_path_factory.mktemp("nginx")
    env = {**server_env, "SANDBAR_TRUSTED_PROXIES": "127.0.0.1"}
    with running(env, folder / "sandbar.log") as sandbar:
        port = free_port()
        site = (ROOT / "deploy/nginx.conf").read_text()
        assert "server 127.0.0.1:8080;" in site and "listen 80;" in site
        site = site.replace("server 127.0.0.1:8080;", f"server 127.0.0.1:{sandbar.port};")
        site = site.replace("listen 80;", f"listen 127.0.0.1:{port};")
        with nginx(folder / "nginx", site, port, binary):
            yield Front(port, sandbar)


def _sandbox_routed_to(sandbar: Sandbar, owner: User, port: int) -> str:
    """A cloud sandbox whose agent is the test agent on ``port`` (recorded as the
    container worker would)."""
    wid = owner.client.post("/api/workspaces", json={"name": "behind-nginx"}).json()["id"]
    r = owner.client.post(
        f"/api/workspaces/{wid}/sandboxes", json={"name": "b", "type": "opencode"}
    )
    assert r.status_code == 201, r.text
    sid = r.json()["id"]
    record(sandbar, UUID(sid), lambda s: s.record_started(f"127.0.0.1:{port}"))
    return sid


def test_api_and_sandboxes_share_nginx_kept_alive_connections(
    front: Front, sandbar: Sandbar, agent_app: tuple[TestAgent, int]
) -> None:
    owner = register(front.url, "nginx")
    sid = _sandbox_routed_to(sandbar, owner, agent_app[1])
    token = owner.client.post(f"/api/sandboxes/{sid}/access-tokens").json()["token"]
    host = f"oc-{sid}.localhost:{front.port}"
    sandbox = httpx.Client(
        base_url=f"http://127.0.0.1:{front.port}",
        headers={"host": host, "authorization": f"Bearer {token}"},
        timeout=30,
    )
    with sandbox:
        # Alternate, so nginx hands the same few upstream connections to both hosts.
        settled(lambda: sandbox.get("/echo"), 200)  # (the server hears of the start)
        for n in range(30):
            me = owner.client.get("/api/auth/me")
            assert me.status_code == 200 and me.json()["username"] == owner.username
            echo = sandbox.get(f"/echo?n={n}")
            assert echo.status_code == 200, echo.text
            assert echo.json()["query"] == f"n={n}"
        docs = owner.client.get("/docs")
        assert docs.status_code == 200 and "text/html" in docs.headers["content-type"]
        # The console's page and its script, on the same kept-alive connections.
        page = owner.client.get("/")
        assert page.status_code == 200 and "text/html" in page.headers["content-type"]
        assert '<script type="module" src="/assets/js/main.js">' in page.text
        script = owner.client.get("/assets/js/main.js")
        assert script.status_code == 200 and "javascript" in script.headers["content-type"]
        assert sandbox.get("/echo?after=console").json()["query"] == "after=console"
        # SSE and a WebSocket to the sandbox through nginx.
        sse = sandbox.get("/sse?n=4")
        assert sse.status_code == 200 and sse.text.count("data: event") == 4
        sock = socket.create_connection(("127.0.0.1", front.port), timeout=10)
        with ws_connect(
            f"ws://{host}/ws",
            sock=sock,
            additional_headers={"authorization": f"Bearer {token}"},
            open_timeout=15,
        ) as ws:
            assert json.loads(ws.recv(timeout=15))["headers"]["x-forwarded-host"] == host
            ws.send("through nginx")
            assert ws.recv(timeout=15) == "through nginx"
    owner.client.close()


def test_the_ticket_flow_through_nginx(
    front: Front, sandbar: Sandbar, agent_app: tuple[TestAgent, int]
) -> None:
    owner = register(front.url, "ticket")
    sid = _sandbox_routed_to(sandbar, owner, agent_app[1])
    host = f"oc-{sid}.localhost:{front.port}"
    browser = httpx.Client(
        base_url=f"http://127.0.0.1:{front.port}", headers={"host": host}, timeout=30
    )
    with browser:
        first = settled(lambda: browser.get("/echo"), 302)
        to_api = urlsplit(first.headers["location"])
        assert to_api.netloc == f"localhost:{front.port}"  # nginx's, as the browser sees it
        second = owner.client.get(f"{to_api.path}?{to_api.query}")
        assert second.status_code == 302, second.text
        back = urlsplit(second.headers["location"])
        assert back.netloc == host
        third = browser.get(f"{back.path}?{back.query}")
        assert third.status_code == 302, third.text
        page = browser.get("/echo")
        assert page.status_code == 200, page.text
        assert ["x-forwarded-host", host] in page.json()["headers"]
    owner.client.close()


def test_an_agent_dials_its_tunnel_through_nginx(
    front: Front, agent_app: tuple[TestAgent, int], tmp_path: Path
) -> None:
    local = own_local(front.sandbar, agent_app[1], tmp_path, via=front.url)
    owner, config, sid = local.owner, local.config, local.id
    agent = AgentProcess(config, sid)
    try:
        local.wait_status("running", timeout=30)
        host = f"oc-{sid}.localhost:{front.port}"
        with httpx.Client(
            base_url=f"http://127.0.0.1:{front.port}",
            headers={"host": host, "authorization": f"Bearer {local.token}"},
            timeout=30,
        ) as client:
            for n in range(10):
                r = client.get(f"/echo?n={n}")
                assert r.status_code == 200, r.text
                assert r.json()["query"] == f"n={n}"
                assert owner.client.get("/api/auth/me").status_code == 200
    finally:
        agent.stop()
    assert "Traceback" not in agent.output(), agent.output()
    owner.client.close()
