"""End to end with the real opencode image: create through the API, opencode answers at
the recorded address with the credential Sandbar gave it, a file in its home survives
pause and resume, and delete leaves no container and no volume."""

from __future__ import annotations

import uuid

import httpx

from infrastructure.agents import DerivedSecrets
from tests.conftest import register
from tests.containers.conftest import make_sandbox, make_workspace, wait_for
from tests.containers.test_lifecycle import container, home_file, no_trace_left, recorded_address


def test_opencode_end_to_end(container_env, start_server, engine, opencode_image):
    env = container_env(SANDBAR_OPENCODE_IMAGE=opencode_image, SANDBAR_SANDBOX_MEMORY="1g")
    server = start_server(env)
    alice = register(server.url, "alice")
    sid = make_sandbox(alice, make_workspace(alice))
    assert wait_for(alice.client, sid, "running", "failed", timeout=120)["status"] == "running"

    address = recorded_address(env["SANDBAR_DATABASE_URL"], sid)
    password = DerivedSecrets(env["SANDBAR_SECRET_KEY"].encode()).upstream_credential(
        uuid.UUID(sid)
    )
    health = httpx.get(f"http://{address}/global/health", auth=("opencode", password), timeout=5)
    assert health.status_code == 200
    assert health.json()["healthy"] is True
    # Without the credential opencode refuses: the password really was handed to it.
    assert httpx.get(f"http://{address}/global/health", timeout=5).status_code == 401

    c = container(engine, sid)
    home_file(c, "kept-across-pause")
    assert alice.client.post(f"/api/sandboxes/{sid}/pause").status_code == 202
    wait_for(alice.client, sid, "paused")
    assert alice.client.post(f"/api/sandboxes/{sid}/resume").status_code == 202
    wait_for(alice.client, sid, "running", timeout=120)
    c.reload()
    assert home_file(c) == "kept-across-pause"
    address = recorded_address(env["SANDBAR_DATABASE_URL"], sid)
    health = httpx.get(f"http://{address}/global/health", auth=("opencode", password), timeout=5)
    assert health.status_code == 200

    assert alice.client.delete(f"/api/sandboxes/{sid}").status_code == 202
    wait_for(alice.client, sid, "gone")
    no_trace_left(engine, sid)
