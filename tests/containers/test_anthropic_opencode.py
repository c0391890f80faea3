"""opencode in its container, configured by Sandbar, asks the Anthropic API through
Sandbar's proxy (a loopback stand-in plays the API): the prompt arrives with the real key,
the answer comes back to opencode, and the real key is nowhere a sandbox or a user could
see it: not in any answer, the event log, the server's log, or the container."""

from __future__ import annotations

import json
from pathlib import Path

import httpx

from tests.anthropic_standin import REAL_KEY, AnthropicStandIn
from tests.conftest import ServerProcess, free_port, register, run_sandbar
from tests.containers.conftest import (
    make_sandbox,
    make_workspace,
    remove_containers_of,
    wait_for,
)
from tests.upstream import serving
from tests.waiting import wait_until


def test_opencode_asks_the_api_through_the_proxy(
    container_env, engine, opencode_image, tmp_path: Path
) -> None:
    standin = AnthropicStandIn()
    with serving(standin) as api_port:
        port = free_port()
        env = container_env(
            SANDBAR_OPENCODE_IMAGE=opencode_image,
            SANDBAR_SANDBOX_MEMORY="1g",
            SANDBAR_ANTHROPIC_API_KEY=REAL_KEY,
            SANDBAR_ANTHROPIC_BASE_URL=f"http://127.0.0.1:{api_port}",
            # Containers reach Sandbar through the engine's gateway to the host.
            SANDBAR_SANDBOX_API_URL=f"http://host.docker.internal:{port}",
        )
        # Listening on 127.0.0.1, Sandbar also listens on the engine's bridge, which
        # is where containers find host.docker.internal.
        server = ServerProcess(env, tmp_path / "server.log", port=port).start()
        seen: list[str] = []
        try:
            alice = register(server.url, "alice")
            sid = make_sandbox(alice, make_workspace(alice))
            status = wait_for(alice.client, sid, "running", "failed", timeout=120)
            assert status["status"] == "running", status
            r = alice.client.post(f"/api/sandboxes/{sid}/access-tokens")
            seen.append(r.text)
            token = r.json()["token"]
            opencode = httpx.Client(
                base_url=server.url,
                headers={"host": f"oc-{sid}.localhost:{port}", "authorization": f"Bearer {token}"},
                timeout=120,
            )
            session = opencode.post("/session", json={})
            assert session.status_code == 200, session.text
            answer = opencode.post(
                f"/session/{session.json()['id']}/message",
                json={
                    "parts": [{"type": "text", "text": "hello from the sandbox"}],
                    "model": {"providerID": "anthropic", "modelID": "claude-sonnet-4-5"},
                },
            )
            seen += [session.text, answer.text]
            assert answer.status_code == 200, answer.text
            texts = [p.get("text") for p in answer.json()["parts"] if p.get("type") == "text"]
            assert "echo: hello from the sandbox" in texts, answer.text
            asked = [q for q in standin.requests if q["path"] == "/v1/messages"]
            assert asked and all(q["headers"]["x-api-key"] == REAL_KEY for q in asked)
            assert any(b"hello from the sandbox" in q["body"] for q in asked)

            # The usage opencode's calls made is recorded for the workspace.
            wid = status["workspace_id"]
            usage = wait_until(
                lambda: alice.client.get(f"/api/workspaces/{wid}/usage").json(),
                until=lambda usage: usage["days"],
                interval=0.1,
                what="opencode's usage recorded",
            )
            assert usage["days"][0]["requests"] == len(asked)

            # Nowhere to be seen: the container, the answers, the log of events.
            inspected = engine.api.inspect_container(f"sandbar-{sid}")
            assert REAL_KEY not in json.dumps(inspected)
            env_vars = "\n".join(inspected["Config"]["Env"])
            assert "sbp_" in env_vars  # the sandbox's own proxy token is what it holds
            audit = run_sandbar("audit", "log", "--json", env=env)
            assert audit.returncode == 0, audit.stderr
            seen.append(audit.stdout)
            assert not [s for s in seen if REAL_KEY in s]
        finally:
            server.stop()
            remove_containers_of(engine, env)
        log = (tmp_path / "server.log").read_text()
        assert REAL_KEY not in log
        assert "Traceback" not in log, log
