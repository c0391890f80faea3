"""``sandbar agent``: register this machine's opencode (or openclaw) with a Sandbar, and
keep it connected through a tunnel.

Registrations are kept in ``$SANDBAR_AGENT_CONFIG`` (default
``~/.config/sandbar/agents.json``), readable by you alone (0600): each holds a tunnel
token and the password Sandbar presents to the local server."""

from __future__ import annotations

import argparse
import asyncio
import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from interfaces.cli.output import table

if TYPE_CHECKING:
    from interfaces.tunnel.agent import Pace, Registration


def config_path() -> Path:
    configured = os.environ.get("SANDBAR_AGENT_CONFIG")
    if configured:
        return Path(configured)
    return Path.home() / ".config" / "sandbar" / "agents.json"


def load() -> dict[str, dict[str, Any]]:
    path = config_path()
    if not path.exists():
        return {}
    try:
        registrations = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise SystemExit(f"cannot read the registrations in {path}: {e}") from None
    if not isinstance(registrations, dict):
        raise SystemExit(f"{path} holds no registrations (a JSON object was expected)")
    return registrations


def save(registrations: dict[str, dict[str, Any]]) -> None:
    """Written whole, then renamed into place: never half a file, never readable by others."""
    path = config_path()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".agents-")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(registrations, f, indent=2)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextmanager
def updating() -> Iterator[dict[str, dict[str, Any]]]:
    """The registrations, to change: saved after, while other ``sandbar agent`` commands
    wait (a lock file beside them), so that two registering at once both stay."""
    path = config_path()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    lock = os.open(path.with_name(path.name + ".lock"), os.O_CREAT | os.O_RDWR, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        registrations = load()
        yield registrations
        save(registrations)
    finally:
        os.close(lock)  # (and with it the lock)


def _say(message: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {message}", flush=True)


def _register(args: argparse.Namespace) -> int:
    try:
        r = httpx.post(
            f"{args.server.rstrip('/')}/api/agent/register",
            json={"code": args.code, "name": args.name, "type": args.type},
            timeout=30,
        )
    except (httpx.HTTPError, httpx.InvalidURL) as e:
        print(f"cannot reach {args.server}: {e}", file=sys.stderr)
        return 1
    if r.status_code != 201:
        try:
            message = r.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = r.text[:200]
        print(f"registration refused ({r.status_code}): {message}", file=sys.stderr)
        return 1
    try:
        answer = r.json()
        sandbox_id, workspace_id = answer["sandbox_id"], answer["workspace_id"]
        tunnel_token, password = answer["tunnel_token"], answer["agent_password"]
        url = answer["sandbox"]["url"]
    except (ValueError, KeyError, TypeError):
        print(f"{args.server} answered 201 without a registration in it", file=sys.stderr)
        return 1
    saved = {
        "server": args.server.rstrip("/"),
        "workspace_id": workspace_id,
        "name": args.name,
        "type": args.type,
        "target": args.target,
        "tunnel_token": tunnel_token,
        "agent_password": password,
        "url": url,
    }
    with updating() as registrations:
        registrations[sandbox_id] = saved
    table(["sandbox", "name", "type", "target", "opens at"], [_row(sandbox_id, saved)])
    print(f"\nsaved in {config_path()}; now run: sandbar agent connect {sandbox_id}")
    return 0


def _row(sandbox_id: str, r: dict[str, Any]) -> list[str]:
    return [sandbox_id, *(str(r.get(k, "")) for k in ("name", "type", "target", "url"))]


def _list(args: argparse.Namespace) -> int:
    registrations = load()
    if not registrations:
        print("no agents registered here (sandbar agent register ...)")
        return 0
    table(
        ["sandbox", "name", "type", "target", "opens at"],
        [_row(k, v) for k, v in registrations.items()],
    )
    return 0


def _remove(args: argparse.Namespace) -> int:
    with updating() as registrations:
        removed = registrations.pop(args.sandbox, None)
    if removed is None:
        print(f"no registration for sandbox {args.sandbox}", file=sys.stderr)
        return 1
    print(f"removed {args.sandbox} (delete the sandbox in Sandbar to revoke its token)")
    return 0


def _pick(sandbox: str | None) -> tuple[str, dict[str, Any]]:
    registrations = load()
    if sandbox:
        if sandbox not in registrations:
            raise SystemExit(f"no registration for sandbox {sandbox} (sandbar agent list)")
        return sandbox, registrations[sandbox]
    if len(registrations) != 1:
        raise SystemExit("say which sandbox to connect (sandbar agent list)")
    return next(iter(registrations.items()))


def _connect(args: argparse.Namespace) -> int:
    from interfaces.tunnel.agent import Registration

    sandbox_id, saved = _pick(args.sandbox)
    try:
        registration = Registration(
            saved["server"], sandbox_id, saved["tunnel_token"], saved["target"]
        )
    except (KeyError, TypeError):
        raise SystemExit(
            f"the registration of {sandbox_id} in {config_path()} is incomplete:"
            " register the agent again"
        ) from None
    pace = _pace()
    server = None
    # SIGTERM ends the command as Ctrl-C does, from the start: whatever it started stops.
    signal.signal(signal.SIGTERM, _terminated)
    try:
        if args.start_opencode:
            server = _start_opencode(saved, args.opencode)
            if not _wait_ready(saved, server):
                return 1
        return _stay_connected(registration, pace)
    finally:
        if server is not None:
            _stop(server)


def _pace() -> Pace:
    """The tunnel's clocks, from the ``SANDBAR_TUNNEL_*`` variables Sandbar reads too (one
    name and one default for each, in README's settings table): the environment, like
    ``SANDBAR_AGENT_CONFIG``, is where a service manager or a test sets them, and no
    option shows them in ``--help`` as if a user had to choose. Sandbar's other settings
    mean nothing here and are not read."""
    from infrastructure.settings import Settings
    from interfaces.tunnel.agent import Pace
    from interfaces.tunnel.link import Heartbeat

    settings = Settings.from_env(
        {k: v for k, v in os.environ.items() if k.startswith("SANDBAR_TUNNEL_")}
    )
    try:
        heartbeat = Heartbeat(settings.tunnel_ping_every, settings.tunnel_dead_after)
        return Pace(heartbeat, backoff_cap=settings.tunnel_backoff_cap)
    except ValueError as e:
        raise SystemExit(f"SANDBAR_TUNNEL_*: {e}") from None


def _terminated(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _stop(server: subprocess.Popen[bytes]) -> None:
    """Stop the opencode this command started (killed if it does not stop in 10 s)."""
    server.terminate()
    try:
        server.wait(timeout=10)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait(timeout=10)


def _event_loop() -> asyncio.AbstractEventLoop:
    """uvloop's where it is installed (as with ``sandbar serve``, through uvicorn): the
    agent relays every request of its sandbox, and the standard loop's own work was some
    10% of the agent's CPU per request (bench/profile_tunnel.py)."""
    try:
        import uvloop
    except ImportError:  # (not on every platform)
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def _stay_connected(registration: Registration, pace: Pace) -> int:
    from interfaces.tunnel.agent import Stop, run

    loop = _event_loop()
    main = loop.create_task(run(registration, _say, pace))
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, main.cancel)
    try:
        loop.run_until_complete(main)
    except Stop as e:
        _say(f"stopped: {e}")
        return 1
    except asyncio.CancelledError:
        _say("stopped")
        return 0
    except Exception as e:  # (a bug: said in one line, not a traceback)
        _say(f"stopped: unexpected error ({type(e).__name__}: {e})")
        return 1
    finally:
        pending = asyncio.all_tasks(loop)
        for task in pending:
            task.cancel()
        if pending:  # (gather() of nothing would make a future of another loop)
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        loop.close()
    return 0


def _start_opencode(saved: dict[str, Any], executable: str | None) -> subprocess.Popen[bytes]:
    """``opencode serve`` on the registration's target, with the password Sandbar uses."""
    program = executable or shutil.which("opencode")
    if program is None:
        raise SystemExit("opencode is not on PATH (or say where: --opencode PATH)")
    host, _, port = saved["target"].split("://", 1)[-1].rstrip("/").rpartition(":")
    env = {**os.environ, "OPENCODE_SERVER_PASSWORD": str(saved.get("agent_password", ""))}
    _say(f"starting {program} serve on {saved['target']}")
    return subprocess.Popen(  # noqa: S603 - the user's own opencode
        [program, "serve", "--hostname", host or "127.0.0.1", "--port", port or "4096"], env=env
    )


def _wait_ready(saved: dict[str, Any], server: subprocess.Popen[bytes]) -> bool:
    """Wait until the opencode just started answers, so that the sandbox shows as
    running only once it can be used."""
    url = saved["target"].rstrip("/") + "/global/health"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if server.poll() is not None:
            _say(f"opencode exited ({server.returncode}) before it answered")
            return False
        try:
            r = httpx.get(url, auth=("opencode", str(saved.get("agent_password", ""))), timeout=5)
            if r.status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    _say("opencode did not answer within 120 s")
    return False


def add_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    agent = sub.add_parser("agent", help="connect this machine's agent to a Sandbar")
    commands = agent.add_subparsers(dest="agent_command", required=True)

    register = commands.add_parser("register", help="register with a one-time code")
    register.add_argument(
        "--server", required=True, help="Sandbar's address, e.g. https://sandbar.example.com"
    )
    register.add_argument(
        "--code", required=True, help="the code from POST /api/workspaces/{id}/agent-code"
    )
    register.add_argument("--name", required=True)
    register.add_argument("--type", default="opencode", choices=["opencode", "openclaw"])
    register.add_argument(
        "--target", default="http://127.0.0.1:4096", help="the local agent server"
    )
    register.set_defaults(run=_register)

    connect = commands.add_parser("connect", help="dial Sandbar and stay connected")
    connect.add_argument("sandbox", nargs="?", help="which registration (if there are several)")
    connect.add_argument("--start-opencode", action="store_true", help="run opencode serve too")
    connect.add_argument("--opencode", help="the opencode executable (default: from PATH)")
    connect.set_defaults(run=_connect)

    listing = commands.add_parser("list", help="the registrations kept here")
    listing.set_defaults(run=_list)

    remove = commands.add_parser("remove", help="forget a registration")
    remove.add_argument("sandbox")
    remove.set_defaults(run=_remove)
