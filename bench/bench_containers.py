"""Cloud sandbox latency through Sandbar beside the bare engine, in the same run.

  create -> running   Sandbar: POST the sandbox, until GET says running
                      bare:    `docker run` of the same image with the same confinement,
                               until its port answers the same health check
  pause / resume      Sandbar: POST pause (resume), until GET says paused (running)
                      bare:    container stop (start, until the port answers)

Both sides poll every 10 ms. The sides alternate round by round in ABBA order (bare then
Sandbar, Sandbar then bare, ...), so a machine slowing down or speeding up weighs on both
alike. Prints each side's median, the ratio of the medians and the median over pairs of
rounds of the pair's ratio, and writes bench/results/containers.json (with the machine's
load before and after).
Needs DOCKER_HOST (or starts a private engine with scripts/engine.sh) and builds the images.
Usage: .venv/bin/python bench/bench_containers.py [--quick] [--rounds N] [--skip-opencode]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import docker
import httpx
import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.bench_core import write_results  # noqa: E402
from bench.bench_proxy import machine_load  # noqa: E402
from bench.rounds import abba, even_rounds, pair_ratio  # noqa: E402
from interfaces.cli.output import table  # noqa: E402
from tests.conftest import FAST_HASHING, ServerProcess, register  # noqa: E402

POLL = 0.01
OPERATIONS = ("create", "pause", "resume")
SIDES = ("bare", "sandbar")


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


def bare(client, image: str) -> dict[str, float]:
    """One round of the engine alone: run / stop / start of a container confined like
    Sandbar's; seconds per operation."""
    out: dict[str, float] = {}
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
    out["create"] = time.perf_counter() - t
    t = time.perf_counter()
    c.stop(timeout=5)
    out["pause"] = time.perf_counter() - t
    t = time.perf_counter()
    c.start()
    c.reload()
    port = c.attrs["NetworkSettings"]["Ports"]["4096/tcp"][0]["HostPort"]
    url = f"http://127.0.0.1:{port}/global/health"
    until(lambda u=url: answers(u, ("opencode", "bench")))
    out["resume"] = time.perf_counter() - t
    c.remove(force=True, v=True)
    client.volumes.get(volume).remove(force=True)
    return out


def status_is(client: httpx.Client, sid: str, status: str) -> bool:
    return client.get(f"/api/sandboxes/{sid}").json()["status"] == status


def through_sandbar(client: httpx.Client, wid: str) -> dict[str, float]:
    """One round through Sandbar's API: create, pause, resume, then delete (untimed);
    seconds per operation."""
    out: dict[str, float] = {}
    t = time.perf_counter()
    sid = client.post(
        f"/api/workspaces/{wid}/sandboxes", json={"name": "b", "type": "opencode"}
    ).json()["id"]
    until(lambda s=sid: status_is(client, s, "running"))
    out["create"] = time.perf_counter() - t
    t = time.perf_counter()
    client.post(f"/api/sandboxes/{sid}/pause")
    until(lambda s=sid: status_is(client, s, "paused"))
    out["pause"] = time.perf_counter() - t
    t = time.perf_counter()
    client.post(f"/api/sandboxes/{sid}/resume")
    until(lambda s=sid: status_is(client, s, "running"))
    out["resume"] = time.perf_counter() - t
    client.delete(f"/api/sandboxes/{sid}")
    until(lambda s=sid: client.get(f"/api/sandboxes/{s}").status_code == 404)
    return out


def interleaved(client, image: str, server: ServerProcess, rounds: int) -> dict[str, list]:
    """``rounds`` rounds of each side, in ABBA order: side: one dict per round."""
    user = register(server.url, "bench")
    wid = user.client.post("/api/workspaces", json={"name": "bench"}).json()["id"]
    runs: dict[str, list[dict[str, float]]] = {side: [] for side in SIDES}
    for r in range(rounds):
        for side in abba(SIDES, r):
            one = bare(client, image) if side == "bare" else through_sandbar(user.client, wid)
            runs[side].append(one)
            print(
                f"  round {r + 1}/{rounds} {side:7} "
                + "  ".join(f"{op} {one[op] * 1000:,.0f} ms" for op in OPERATIONS),
                file=sys.stderr,
                flush=True,
            )
    return runs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="2 rounds of the tiny image only (a smoke run)"
    )
    parser.add_argument(
        "--rounds", type=int, help="rounds of the tiny image, made even (ABBA; default 6)"
    )
    parser.add_argument("--skip-opencode", action="store_true")
    args = parser.parse_args()
    tiny_rounds = even_rounds(args.rounds or (2 if args.quick else 6))
    # opencode starts in seconds, not milliseconds: fewer rounds, still whole ABBA pairs.
    opencode_rounds = even_rounds(max(4, tiny_rounds // 2))

    load_before, loadavg_before = machine_load(), os.getloadavg()
    print(f"machine load before the run: {load_before:.2f} cores", file=sys.stderr)
    started = time.perf_counter()
    host, private = engine_host()
    try:
        env_base = {**os.environ, "DOCKER_HOST": host}
        images = ["tiny"] + ([] if args.skip_opencode or args.quick else ["opencode"])
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
            rounds = tiny_rounds if which == "tiny" else opencode_rounds
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
            print(f"{which}: {rounds} rounds per side, ABBA ...", file=sys.stderr, flush=True)
            server = ServerProcess(env, Path(tempfile.mkdtemp()) / "server.log").start()
            try:
                runs = interleaved(client, image, server, rounds)
            finally:
                server.stop()
                with psycopg.connect(server_url, autocommit=True) as conn:
                    conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            results[which] = {"rounds": rounds}
            for op in OPERATIONS:
                seconds = {side: [run[op] for run in runs[side]] for side in SIDES}
                b, s = statistics.median(seconds["bare"]), statistics.median(seconds["sandbar"])
                paired = pair_ratio(seconds["sandbar"], seconds["bare"])
                results[which][op] = {
                    "bare_s": b,
                    "sandbar_s": s,
                    "ratio": s / b,  # of the medians
                    "ratio_by_pair": paired,  # median over ABBA pairs of the pair's ratio
                    "bare_runs_s": seconds["bare"],
                    "sandbar_runs_s": seconds["sandbar"],
                }
                rows.append(
                    (
                        which,
                        op,
                        f"{b * 1000:,.0f}",
                        f"{s * 1000:,.0f}",
                        f"{s / b:.2f}x",
                        f"{paired:.2f}x",
                    )
                )
    finally:
        if private:  # (the engine this run started, on error too)
            subprocess.run([str(ROOT / "scripts/engine.sh"), "stop", str(private)], check=False)
    load_after = machine_load()
    table(
        ["IMAGE", "OPERATION", "BARE ENGINE ms", "SANDBAR ms", "RATIO", "RATIO BY ABBA PAIR"],
        rows,
    )
    print(
        f"\nmedians of {tiny_rounds} rounds (tiny) and {opencode_rounds} (opencode) per side,"
        f" the sides in ABBA order. Machine load: {load_before:.2f} cores busy before the run,"
        f" {load_after:.2f} after, of {os.cpu_count()} (load average before"
        f" {' '.join(f'{x:.2f}' for x in loadavg_before)}, after"
        f" {' '.join(f'{x:.2f}' for x in os.getloadavg())})."
    )
    results["run"] = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "cores": os.cpu_count(),
        "quick": args.quick,
        "seconds": time.perf_counter() - started,
        "machine_load_before_cores": load_before,
        "machine_load_after_cores": load_after,
        "loadavg_before": loadavg_before,
        "loadavg_after": os.getloadavg(),
    }
    write_results("containers", results, "medians; ")
    return 0


if __name__ == "__main__":
    sys.exit(main())
