"""Cloud sandboxes on a real engine, with the tiny image: the worker starts, pauses,
resumes and deletes real containers, confined as docs/design.md says."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
import uuid

import docker
import httpx
import psycopg
import pytest

from application.container_worker import TOPICS
from infrastructure.agents import DerivedSecrets
from infrastructure.containers import DockerEngine, interface_address
from infrastructure.settings import Settings
from interfaces.bootstrap import build
from projections.view import EVENTS_TABLE
from tests.conftest import ROOT, register, run_sandbar
from tests.containers.conftest import gone, make_sandbox, make_workspace, wait_for
from tests.waiting import wait_until


def secrets_of(server) -> DerivedSecrets:
    return DerivedSecrets(server.env["SANDBAR_SECRET_KEY"].encode())


def worker_position(database_url: str) -> int:
    """How far in the log the container worker has done what it follows."""
    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            "SELECT notification_id FROM sandbar_follower_tracking"
            " WHERE follower = 'container-worker'"
        ).fetchone()
    return row[0] if row else 0


def recorded_address(database_url: str, sandbox_id: str) -> str:
    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            "SELECT target FROM sandbar_routes WHERE sandbox_id = %s", (sandbox_id,)
        ).fetchone()
    assert row and row[0], "no address recorded"
    return row[0]


def container(engine, sandbox_id: str):
    return engine.containers.get(f"sandbar-{sandbox_id}")


def containers_of_workspace(engine, workspace_id: str) -> list[str]:
    labelled = {"label": f"sandbar.workspace={workspace_id}"}
    return sorted(c.name for c in engine.containers.list(all=True, filters=labelled))


def no_trace_left(engine, sandbox_id: str) -> None:
    with pytest.raises(docker.errors.NotFound):
        container(engine, sandbox_id)
    with pytest.raises(docker.errors.NotFound):
        engine.volumes.get(f"sandbar-home-{sandbox_id}")


def home_file(c, text: str | None = None) -> str:
    if text is not None:
        assert c.exec_run(["sh", "-c", f"echo {text} > /root/kept.txt"]).exit_code == 0
    result = c.exec_run(["cat", "/root/kept.txt"])
    return result.output.decode().strip() if result.exit_code == 0 else ""


def test_create_pause_resume_delete(shared_server, engine):
    alice = register(shared_server.url, "alice")
    wid = make_workspace(alice)
    sid = make_sandbox(alice, wid)
    assert wait_for(alice.client, sid, "running", "failed")["status"] == "running"

    # The recorded address is where the agent answers, with its own credential.
    address = recorded_address(shared_server.env["SANDBAR_DATABASE_URL"], sid)
    assert address.startswith("127.0.0.1:")
    password = secrets_of(shared_server).upstream_credential(uuid.UUID(sid))
    health = httpx.get(f"http://{address}/global/health", auth=("opencode", password))
    assert health.status_code == 200

    c = container(engine, sid)
    home_file(c, "survives")
    assert alice.client.post(f"/api/sandboxes/{sid}/pause").status_code == 202
    wait_for(alice.client, sid, "paused")
    c.reload()
    assert c.status == "exited"  # stopped: its CPU and memory are free

    assert alice.client.post(f"/api/sandboxes/{sid}/resume").status_code == 202
    wait_for(alice.client, sid, "running")
    c.reload()
    assert c.status == "running"
    assert home_file(c) == "survives"

    assert alice.client.delete(f"/api/sandboxes/{sid}").status_code == 202
    wait_for(alice.client, sid, "gone")
    no_trace_left(engine, sid)
    listed = alice.client.get(f"/api/workspaces/{wid}/sandboxes").json()
    assert sid not in [s["id"] for s in listed]


def test_container_is_confined_and_labelled(shared_server, engine):
    alice = register(shared_server.url, "alice")
    wid = make_workspace(alice)
    sid = make_sandbox(alice, wid)
    wait_for(alice.client, sid, "running")
    attrs = container(engine, sid).attrs
    host = attrs["HostConfig"]
    assert host["CapDrop"] == ["ALL"]
    assert "no-new-privileges" in host["SecurityOpt"]
    assert host["Memory"] == 256 * 1024 * 1024
    assert host["NanoCpus"] == 500_000_000
    assert host["PidsLimit"] == 128
    assert host["Init"] is True
    assert not host.get("Privileged")
    mounts = attrs["Mounts"]
    assert [(m["Type"], m["Name"], m["Destination"]) for m in mounts] == [
        ("volume", f"sandbar-home-{sid}", "/root")
    ]
    assert not any("docker.sock" in (m.get("Source") or "") for m in mounts)
    labels = attrs["Config"]["Labels"]
    assert labels["sandbar.sandbox"] == sid
    assert labels["sandbar.workspace"] == wid
    bindings = attrs["NetworkSettings"]["Ports"]["4096/tcp"]
    assert {b["HostIp"] for b in bindings} == {"127.0.0.1"}

    assert labels["sandbar.instance"] == secrets_of(shared_server).instance()
    env = dict(e.split("=", 1) for e in attrs["Config"]["Env"])
    secrets = secrets_of(shared_server)
    assert env["OPENCODE_SERVER_PASSWORD"] == secrets.upstream_credential(uuid.UUID(sid))
    config = json.loads(env["OPENCODE_CONFIG_CONTENT"])
    options = config["provider"]["anthropic"]["options"]
    assert options["apiKey"] == secrets.proxy_token(uuid.UUID(sid))
    assert options["baseURL"].endswith("/proxy/anthropic/v1")
    assert not any(k.startswith("SANDBAR_") for k in env)
    assert shared_server.env["SANDBAR_SECRET_KEY"] not in json.dumps(attrs)


def test_openclaw_sandbox_gets_its_gateway_token(shared_server, engine):
    alice = register(shared_server.url, "alice")
    sid = make_sandbox(alice, make_workspace(alice), "openclaw")
    wait_for(alice.client, sid, "running")
    attrs = container(engine, sid).attrs
    env = dict(e.split("=", 1) for e in attrs["Config"]["Env"])
    secrets = secrets_of(shared_server)
    assert env["OPENCLAW_GATEWAY_TOKEN"] == secrets.upstream_credential(uuid.UUID(sid))
    assert env["ANTHROPIC_API_KEY"] == secrets.proxy_token(uuid.UUID(sid))
    assert env["ANTHROPIC_BASE_URL"].endswith("/proxy/anthropic")
    assert "18789/tcp" in attrs["NetworkSettings"]["Ports"]


def test_deleting_a_workspace_deletes_its_sandboxes(shared_server, engine):
    alice = register(shared_server.url, "alice")
    wid = make_workspace(alice)
    sids = [make_sandbox(alice, wid) for _ in range(2)]
    for sid in sids:
        wait_for(alice.client, sid, "running")
    assert alice.client.delete(f"/api/workspaces/{wid}").status_code == 204
    # Container, home volume, network and host rule go one after the other: wait for all
    # (the volume was once checked between the container's removal and its own).
    for sid in sids:
        wait_until(
            lambda sid=sid: gone(engine, sid),
            timeout=60,
            interval=0.2,
            what=f"sandbox {sid} of a deleted workspace gone",
        )
        no_trace_left(engine, sid)


def _exists(engine, sandbox_id: str) -> bool:
    try:
        container(engine, sandbox_id)
        return True
    except docker.errors.NotFound:
        return False


def test_missing_image_fails_with_a_reason(container_env, start_server):
    server = start_server(container_env(SANDBAR_OPENCLAW_IMAGE="sandbar-missing:latest"))
    alice = register(server.url, "alice")
    sid = make_sandbox(alice, make_workspace(alice), "openclaw")
    body = wait_for(alice.client, sid, "failed")
    assert "sandbar-missing:latest" in body["error"]
    assert "make images" in body["error"]


def test_a_failed_sandbox_is_retried_by_resuming_it(
    container_env, start_server, engine, tiny_image
):
    """Failed for a missing image; once the image is there, resume makes it run."""
    missing = f"sandbar-retry-{uuid.uuid4().hex[:8]}"
    server = start_server(container_env(SANDBAR_OPENCLAW_IMAGE=f"{missing}:latest"))
    alice = register(server.url, "alice")
    sid = make_sandbox(alice, make_workspace(alice), "openclaw")
    wait_for(alice.client, sid, "failed")
    engine.images.get(tiny_image).tag(missing, "latest")
    try:
        r = alice.client.post(f"/api/sandboxes/{sid}/resume")
        assert (r.status_code, r.json()["status"]) == (202, "resuming"), r.text
        assert wait_for(alice.client, sid, "running", "failed")["status"] == "running"
        assert container(engine, sid).status == "running"
    finally:
        engine.images.remove(f"{missing}:latest")


def test_engine_down_fails_with_a_reason_and_the_api_answers(container_env, start_server, tmp_path):
    server = start_server(container_env(DOCKER_HOST=f"unix://{tmp_path}/no-engine.sock"))
    alice = register(server.url, "alice")
    wid = make_workspace(alice)
    sid = make_sandbox(alice, wid)
    body = wait_for(alice.client, sid, "failed")
    # What is wrong and what to do, not the engine client's own words.
    assert f"no container engine answers at unix://{tmp_path}/no-engine.sock" in body["error"]
    assert "scripts/engine.sh" in body["error"]
    assert "Error while fetching" not in body["error"]
    assert alice.client.get(f"/api/workspaces/{wid}").status_code == 200
    # A failed sandbox can still be deleted: at once, as it never started.
    r = alice.client.delete(f"/api/sandboxes/{sid}")
    assert (r.status_code, r.json()["status"]) == (202, "deleted")
    # The engine client's own text is in the log, once (the worker swept every 2 s meanwhile).
    assert server.log.read_text().count("Error while fetching") == 1, server.log.read_text()


def test_a_deletion_waits_for_the_engine_and_says_why(
    container_env, start_server, engine, tmp_path
):
    """A sandbox that ran holds a home: deleting it with the engine away waits, saying why
    in ``error``; it finishes once the engine is back."""
    env = container_env()
    server = start_server(env)
    alice = register(server.url, "alice")
    sid = make_sandbox(alice, make_workspace(alice))
    wait_for(alice.client, sid, "running")
    server.stop()
    away = start_server({**env, "DOCKER_HOST": f"unix://{tmp_path}/no-engine.sock"})
    alice.client.base_url = httpx.URL(away.url)
    for _ in range(2):  # asking again answers the same
        r = alice.client.delete(f"/api/sandboxes/{sid}")
        assert (r.status_code, r.json()["status"]) == (202, "deleting"), r.text
    wait_until(
        lambda: alice.client.get(f"/api/sandboxes/{sid}").json().get("error"),
        timeout=60,
        interval=0.2,
        what="a reason in the sandbox's error",
    )
    body = alice.client.get(f"/api/sandboxes/{sid}").json()
    assert body["status"] == "deleting" and "no container engine answers" in body["error"]
    assert container(engine, sid).status == "running"  # nothing was removed meanwhile
    away.stop()
    back = server.start()
    alice.client.base_url = httpx.URL(back.url)
    wait_for(alice.client, sid, "gone")
    wait_until(
        lambda: gone(engine, sid),
        timeout=60,
        interval=0.2,
        what="nothing of the deleted sandbox left behind",
    )


def test_reprocessing_the_log_never_makes_a_second_container(container_env, start_server, engine):
    env = container_env()
    server = start_server(env)
    alice = register(server.url, "alice")
    wid = make_workspace(alice)
    sids = [make_sandbox(alice, wid) for _ in range(3)]
    for sid in sids:
        wait_for(alice.client, sid, "running")
    server.stop()
    with psycopg.connect(env["SANDBAR_DATABASE_URL"], autocommit=True) as conn:
        conn.execute("UPDATE sandbar_follower_tracking SET notification_id = 0")
        (last,) = conn.execute(
            f"SELECT max(notification_id) FROM {EVENTS_TABLE} WHERE topic = ANY(%s)", (TOPICS,)
        ).fetchone()
    server.start()
    # The worker's position moves past an event only once the work it asks for is done:
    # past the last one it follows, it has gone through the whole log again.
    wait_until(
        lambda: worker_position(env["SANDBAR_DATABASE_URL"]) >= last,
        timeout=60,
        interval=0.2,
        what=f"the worker past notification {last} again",
    )
    for sid in sids:
        assert wait_for(alice.client, sid, "running")["status"] == "running"
    assert containers_of_workspace(engine, wid) == sorted(f"sandbar-{s}" for s in sids)


def test_reconcile_removes_orphans_and_recreates_vanished(
    container_env, start_server, engine, tiny_image
):
    env = container_env()
    server = start_server(env)
    alice = register(server.url, "alice")
    sid = make_sandbox(alice, make_workspace(alice))
    wait_for(alice.client, sid, "running")
    server.stop()

    container(engine, sid).remove(force=True)  # vanished while Sandbar was down
    orphan_id = str(uuid.uuid4())
    orphan = engine.containers.run(
        tiny_image,
        name=f"sandbar-{orphan_id}",
        labels={"sandbar.sandbox": orphan_id, "sandbar.instance": secrets_of(server).instance()},
        detach=True,
    )
    server.start()
    wait_until(
        lambda: not _exists(engine, orphan_id) and _running(engine, sid),
        timeout=60,
        interval=0.2,
        what="reconciliation converged",
    )
    assert orphan.name not in [c.name for c in engine.containers.list(all=True)]
    assert wait_for(alice.client, sid, "running")["status"] == "running"
    # The new container's address is recorded (a Relocated event) once it answers.
    port = container(engine, sid).attrs["NetworkSettings"]["Ports"]["4096/tcp"][0]["HostPort"]
    wait_until(
        lambda: recorded_address(env["SANDBAR_DATABASE_URL"], sid),
        until=lambda address: address == f"127.0.0.1:{port}",
        timeout=60,
        interval=0.2,
        what="the new address recorded",
    )


def _running(engine, sandbox_id: str) -> bool:
    try:
        return container(engine, sandbox_id).status == "running"
    except docker.errors.NotFound:
        return False


def test_crash_while_creating_converges(container_env, start_server, engine):
    env = container_env()
    server = start_server(env)
    alice = register(server.url, "alice")
    wid = make_workspace(alice)
    sids = [make_sandbox(alice, wid) for _ in range(6)]
    server.kill()  # SIGKILL mid-creation
    server.start()
    for sid in sids:
        assert wait_for(alice.client, sid, "running")["status"] == "running"
    assert containers_of_workspace(engine, wid) == sorted(f"sandbar-{s}" for s in sids)


def test_idle_sandbox_is_paused_by_system(container_env, start_server):
    env = container_env(SANDBAR_IDLE_TIMEOUT="2", SANDBAR_SWEEP_INTERVAL="0.5")
    server = start_server(env)
    alice = register(server.url, "alice")
    sid = make_sandbox(alice, make_workspace(alice))
    wait_for(alice.client, sid, "running")
    wait_for(alice.client, sid, "paused", timeout=60)
    log = run_sandbar("audit", "log", "--json", env=env)
    assert log.returncode == 0, log.stderr
    events = [json.loads(line) for line in log.stdout.splitlines()]
    pauses = [
        e for e in events if e["aggregate_id"] == sid and e["event"] == "Sandbox.PauseRequested"
    ]
    assert [e["actor"] for e in pauses] == ["system"]


def test_worker_runs_apart_from_the_api(container_env, start_server, tmp_path):
    env = container_env(SANDBAR_WORKER="false")
    server = start_server(env)
    alice = register(server.url, "alice")
    sid = make_sandbox(alice, make_workspace(alice))
    time.sleep(1)
    assert alice.client.get(f"/api/sandboxes/{sid}").json()["status"] == "creating"

    log = (tmp_path / "worker.log").open("wb")
    worker = subprocess.Popen(
        [sys.executable, "-m", "interfaces.cli.main", "worker"],
        env={**os.environ, **env},
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        assert wait_for(alice.client, sid, "running")["status"] == "running"
    finally:
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=30) == 0
    assert "Traceback" not in (tmp_path / "worker.log").read_text()


def test_activity_keeps_a_sandbox_running(container_env, start_server):
    """The activity port (fed by the proxies) is shared through the database: a sandbox in
    use is not paused, and is paused once its use stops."""
    from eventsourcing.postgres import PostgresDatastore
    from psycopg.conninfo import conninfo_to_dict

    from infrastructure.activity import ActivityTable

    env = container_env(SANDBAR_IDLE_TIMEOUT="3", SANDBAR_SWEEP_INTERVAL="0.5")
    server = start_server(env)
    alice = register(server.url, "alice")
    sid = make_sandbox(alice, make_workspace(alice))
    wait_for(alice.client, sid, "running")

    info = conninfo_to_dict(env["SANDBAR_DATABASE_URL"])
    datastore = PostgresDatastore(
        info["dbname"],
        info.get("host", "127.0.0.1"),
        info.get("port", 5432),
        info.get("user", "postgres"),
        info.get("password", ""),
    )
    activity = ActivityTable(datastore, flush_every=0)
    in_use_until = time.monotonic() + 6  # twice the idle timeout
    while time.monotonic() < in_use_until:
        activity.touch(uuid.UUID(sid))
        assert alice.client.get(f"/api/sandboxes/{sid}").json()["status"] == "running"
        time.sleep(0.3)
    wait_for(alice.client, sid, "paused", timeout=60)
    datastore.close()


class _MadeRightAfterReading:
    """The read model, except that the first ``cloud_sandboxes()`` is followed, before it
    returns, by ``make()``: a sandbox created (and its container started) the moment after
    the sweep has read the log."""

    def __init__(self, reads, make) -> None:
        self._reads = reads
        self._make = make
        self.made: str | None = None

    def cloud_sandboxes(self):
        rows = self._reads.cloud_sandboxes()
        if self.made is None:
            self.made = self._make()
        return rows

    def __getattr__(self, name):
        return getattr(self._reads, name)


def test_a_sandbox_made_during_a_sweep_is_not_taken_for_an_orphan(
    container_env, start_server, engine, docker_host, monkeypatch
):
    """Fixed interleaving of the sweep and a creation: the container of a sandbox created
    while the sweep runs is left be (it once was removed as an orphan)."""
    env = container_env(SANDBAR_WORKER="false")
    server = start_server(env)
    alice = register(server.url, "alice")
    wid = make_workspace(alice)
    monkeypatch.setenv("DOCKER_HOST", docker_host)
    app = build(Settings.from_env(env))
    try:
        containers = DockerEngine(app.settings, app.secrets)

        def make() -> str:
            sid = make_sandbox(alice, wid)
            containers.start(uuid.UUID(sid), uuid.UUID(wid), "opencode")
            return sid

        reads = _MadeRightAfterReading(app.reads, make)
        worker = dataclasses.replace(app, reads=reads).container_worker()
        worker.reconcile()
        assert reads.made is not None
        assert container(engine, reads.made).status == "running"
    finally:
        app.close()


def test_containers_reach_sandbar_on_the_engine_bridge(
    shared_server, engine, tiny_image, docker_host, monkeypatch
):
    """What a sandbox's agent does to reach the Anthropic proxy: Sandbar, listening on
    127.0.0.1, also listens on the engine's bridge, which containers know as
    host.docker.internal (a freshly started engine may not name the bridge's gateway:
    its interface's address is used then)."""
    bridge = engine.networks.get("bridge").attrs
    name = bridge["Options"]["com.docker.network.bridge.name"]
    gateway = interface_address(name)
    assert gateway is not None
    monkeypatch.setenv("DOCKER_HOST", docker_host)
    assert DockerEngine(Settings.from_env(), DerivedSecrets(b"k" * 32)).host_gateway() == gateway
    assert f"listening on http://{gateway}:{shared_server.port}" in shared_server.log.read_text()
    url = f"http://host.docker.internal:{shared_server.port}/healthz"
    box = engine.containers.run(
        tiny_image,
        ["wget", "-q", "-O", "-", url],
        extra_hosts={"host.docker.internal": "host-gateway"},
        detach=True,
    )
    try:
        assert box.wait(timeout=30)["StatusCode"] == 0, box.logs()
        assert json.loads(box.logs()) == {"status": "ok"}
    finally:
        box.remove(force=True)
