"""Cloud sandbox latency through Sandbar beside the bare engine, in the same run.

  create -> running   Sandbar: POST the sandbox, until GET says running
                      bare:    `docker run` of the same image with the same confinement,
                               until its port answers the same health check
  pause / resume      Sandbar: POST pause (resume), until GET says paused (running)
                      bare:    container stop (start, until the port answers)

Both sides poll every 10 ms. Prints medians and ratios and writes bench/results/containers.json.
Needs DOCKER_HOST (or starts a private engine with scripts/engine.sh) and builds the images.
Usage: .venv/bin/python bench/bench_containers.py [--rounds N] [--skip-opencode]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import docker
import httpx
import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.bench_core import write_results  # noqa: E402
from interfaces.cli.output import table  # noqa: E402
from tests.conftest import FAST_HASHING, ServerProcess, register  # noqa: E402

POLL = 0.01


def engine_host() -> tuple[str, Path | None]:
    host = os.environ.get("DOCKER_HOST")
    if host:
        return host, None
    folder = Path(tempfile.mkdtemp(prefix="sbb-", dir="/tmp"))
    out = subprocess.run(
        [str(ROOT / "scripts/engine.sh"), "start", str(folder)],
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.strip(), folder


def until(check, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError
        time.sleep(POLL)


def answers(url: str, auth: tuple[str, str] | None) -> bool:
    try:
        return httpx.get(url, auth=auth, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def bare(client, image: str, rounds: int) -> dict[str, list[float]]:
    """The engine alone: run / stop / start of a container confined like Sandbar's."""
    out: dict[str, list[float]] = {"create": [], "pause": [], "resume": []}
    for _ in range(rounds):
        name = f"bench-bare-{uuid.uuid4().hex[:8]}"
        volume = f"{name}-home"
        t = time.perf_counter()
        c = client.containers.run(
            image,
            name=name,
            detach=True,
            cap_drop=["ALL"],
            security_opt=["no-new-privileges"],
            mem_limit="1g",
            nano_cpus=1_000_000_000,
            pids_limit=512,
            init=True,
            volumes={volume: {"bind": "/root", "mode": "rw"}},
            ports={"4096/tcp": ("127.0.0.1", None)},
            environment={"OPENCODE_SERVER_PASSWORD": "bench"},
        )
        c.reload()
        port = c.attrs["NetworkSettings"]["Ports"]["4096/tcp"][0]["HostPort"]
        url = f"http://127.0.0.1:{port}/global/health"
        until(lambda u=url: answers(u, ("opencode", "bench")))
        out["create"].append(time.perf_counter() - t)
        t = time.perf_counter()
        c.stop(timeout=5)
        out["pause"].append(time.perf_counter() - t)
        t = time.perf_counter()
        c.start()
        c.reload()
        port = c.attrs["NetworkSettings"]["Ports"]["4096/tcp"][0]["HostPort"]
        url = f"http://127.0.0.1:{port}/global/health"
        until(lambda u=url: answers(u, ("opencode", "bench")))
        out["resume"].append(time.perf_counter() - t)
        c.remove(force=True, v=True)
        client.volumes.get(volume).remove(force=True)
    return out


def status_is(client: httpx.Client, sid: str, status: str) -> bool:
    return client.get(f"/api/sandboxes/{sid}").json()["status"] == status


def through_sandbar(server: ServerProcess, rounds: int) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {"create": [], "pause": [], "resume": []}
    user = register(server.url, "bench")
    wid = user.client.post("/api/workspaces", json={"name": "bench"}).json()["id"]
    for _ in range(rounds):
        t = time.perf_counter()
        sid = user.client.post(
            f"/api/workspaces/{wid}/sandboxes", json={"name": "b", "type": "opencode"}
        ).json()["id"]
        until(lambda s=sid: status_is(user.client, s, "running"))
        out["create"].append(time.perf_counter() - t)
        t = time.perf_counter()
        user.client.post(f"/api/sandboxes/{sid}/pause")
        until(lambda s=sid: status_is(user.client, s, "paused"))
        out["pause"].append(time.perf_counter() - t)
        t = time.perf_counter()
        user.client.post(f"/api/sandboxes/{sid}/resume")
        until(lambda s=sid: status_is(user.client, s, "running"))
        out["resume"].append(time.perf_counter() - t)
        user.client.delete(f"/api/sandboxes/{sid}")
        until(lambda s=sid: user.client.get(f"/api/sandboxes/{s}").status_code == 404)
    return out


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--skip-opencode", action="store_true")
    args = parser.parse_args()

    host, private = engine_host()
    env_base = {**os.environ, "DOCKER_HOST": host}
    images = ["tiny"] + ([] if args.skip_opencode else ["opencode"])
    for which in images:
        subprocess.run([str(ROOT / "images/build.sh"), which], env=env_base, check=True)
    server_url = os.environ.get(
        "SANDBAR_BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
    )
    client = docker.DockerClient(base_url=host)
    results: dict[str, dict] = {}
    rows = []
    for which in images:
        image = f"sandbar-{which}:latest"
        rounds = args.rounds if which == "tiny" else max(3, args.rounds // 2)
        name = f"sandbar_bench_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(server_url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        params = conninfo_to_dict(server_url)
        params["dbname"] = name
        env = {
            **FAST_HASHING,
            "DOCKER_HOST": host,
            "SANDBAR_DATABASE_URL": make_conninfo(**params),
            "SANDBAR_DATA_DIR": tempfile.mkdtemp(),
            "SANDBAR_SECRET_KEY": uuid.uuid4().hex,
            "SANDBAR_OPENCODE_IMAGE": image,
            "SANDBAR_SANDBOX_MEMORY": "1g",
            "SANDBAR_SANDBOX_CPUS": "1",
            "SANDBAR_SANDBOX_PIDS": "512",
        }
        server = ServerProcess(env, Path(tempfile.mkdtemp()) / "server.log").start()
        try:
            # Interleave so that both sides see the same machine.
            b1 = bare(client, image, rounds)
            s1 = through_sandbar(server, rounds)
        finally:
            server.stop()
            with psycopg.connect(server_url, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        results[which] = {}
        for op in ("create", "pause", "resume"):
            b, s = statistics.median(b1[op]), statistics.median(s1[op])
            results[which][op] = {"bare_s": b, "sandbar_s": s, "ratio": s / b}
            rows.append((which, op, f"{b * 1000:.0f}", f"{s * 1000:.0f}", f"{s / b:.2f}x"))
    table(["IMAGE", "OPERATION", "BARE ENGINE ms", "SANDBAR ms", "RATIO"], rows)
    write_results("containers", results, "medians; ")
    if private:
        subprocess.run([str(ROOT / "scripts/engine.sh"), "stop", str(private)], check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
