"""How ``sandbar serve`` stops (issue 19, defects found): on a port already taken, and on
SIGTERM or SIGINT, with the embedded PostgreSQL it started (no SANDBAR_DATABASE_URL).
Real processes, ports and signals: the server drains, tells its agents to dial again
(1012), exits 0, and its PostgreSQL is gone."""

from __future__ import annotations

import os
import signal
import socket
import uuid
from pathlib import Path

import pytest
from hyperframe.frame import DataFrame

from tests.conftest import FAST_HASHING, ServerProcess, run_sandbar
from tests.test_hostile_tunnel import dial, opened_stream
from tests.test_tunnel import own_local
from tests.waiting import wait_until

RESTARTING = 1012


def embedded_env(data_dir: Path, **more: str) -> dict[str, str]:
    """A server's settings with no database URL: it starts PostgreSQL in ``data_dir``."""
    return {
        **FAST_HASHING,
        "SANDBAR_DATABASE_URL": "",  # (empty: the default, the embedded server)
        "SANDBAR_DATA_DIR": str(data_dir),
        "SANDBAR_SECRET_KEY": "test-secret-key-" + uuid.uuid4().hex,
        "SANDBAR_WORKER": "false",
        **more,
    }


def postgres_processes(data_dir: Path) -> list[int]:
    """The PostgreSQL processes serving ``data_dir``'s database."""
    pgdata = str((data_dir / "postgres").resolve()).encode()
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            except OSError:
                continue
            if b"postgres" in cmdline and pgdata in cmdline.split(b"\0"):
                found.append(int(entry))
    return found


def postmaster_pid(data_dir: Path) -> int:
    return int((data_dir / "postgres" / "postmaster.pid").read_text().split()[0])


def assert_postgres_gone(data_dir: Path, pid: int | None = None) -> None:
    """Stopped: no postmaster.pid, and (within moments: a process ends a little after
    it says so) no process of it, ``pid`` the postmaster included."""
    assert not (data_dir / "postgres" / "postmaster.pid").exists()
    wait_until(lambda: postgres_processes(data_dir) == [], timeout=15)
    if pid is not None:
        wait_until(lambda: not _alive(pid), timeout=15)


def _alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "zombie" not in status.lower()


def refuses_connections(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return True
    return False


def test_serve_on_a_port_taken_exits_at_once_and_stops_its_postgresql(tmp_path: Path) -> None:
    """It says why, exits non-zero, and stops the PostgreSQL it started (the container
    worker on, as by default: no thread of it keeps the process alive)."""
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    data = tmp_path / "data"
    try:
        done = run_sandbar(
            "serve", "--port", str(port), env=embedded_env(data, SANDBAR_WORKER="true"), timeout=90
        )
    finally:
        taken.close()
    assert done.returncode == 1, done.stderr
    assert f"cannot listen on 127.0.0.1:{port}: Address already in use" in done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    assert "starting embedded PostgreSQL" in done.stderr  # (there was one to stop)
    assert_postgres_gone(data)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_drains_then_stops_sandbar_and_its_postgresql(
    tmp_path: Path, sig: signal.Signals
) -> None:
    """SIGTERM (systemd, Docker, Kubernetes) as SIGINT: Sandbar stops accepting; a
    request in flight through a tunnel finishes, one that would not is cut at the grace
    period; then the agent is told to dial again (1012); the process exits 0, its
    PostgreSQL stopped."""
    data = tmp_path / "data"
    env = embedded_env(data, SANDBAR_SHUTDOWN_GRACE="8")
    server = ServerProcess(env, tmp_path / "server.log").start()
    try:
        assert server.proc is not None
        postgres = postmaster_pid(data)
        local = own_local(server, 9, tmp_path)
        agent = dial(local)
        agent.settle()
        finishing, browser = opened_stream(local, agent)
        agent.frames.clear()
        hanging, stuck_browser = opened_stream(local, agent)

        server.proc.send_signal(sig)
        wait_until(lambda: refuses_connections(server.port), timeout=30)
        assert agent.close_frame is None  # (the tunnel carries requests still)
        agent.answer(finishing)
        reply = b"HTTP/1.1 200 OK\r\ncontent-length: 14\r\n\r\nlate but whole"
        agent.send(DataFrame(finishing, data=reply, flags=["END_STREAM"]))
        answer = _read_all(browser)
        assert answer.startswith(b"HTTP/1.1 200"), answer
        assert answer.endswith(b"\r\n\r\nlate but whole"), answer

        agent.wait_for(lambda a: a.close_frame is not None, timeout=30)
        assert agent.close_frame is not None and agent.close_frame.code == RESTARTING
        assert _read_all(stuck_browser) == b""  # cut at the grace period, unanswered
        assert hanging != finishing
        assert server.proc.wait(timeout=60) == 0
    finally:
        server.kill()
    log = server.log.read_text()
    assert "Traceback" not in log, log
    assert "cutting 1 connection(s)" in log, log
    assert "stopping the embedded PostgreSQL" in log, log
    assert_postgres_gone(data, postgres)


def test_audit_says_it_shares_the_servers_postgresql(tmp_path: Path) -> None:
    """``sandbar audit`` beside a running server uses the PostgreSQL the server
    started, says so, and leaves it running for the server as it exits."""
    data = tmp_path / "data"
    env = embedded_env(data)
    server = ServerProcess(env, tmp_path / "server.log").start()
    try:
        postgres = postmaster_pid(data)
        done = run_sandbar("audit", "log", env=env, timeout=90)
        assert done.returncode == 0, done.stderr
        assert "starting embedded PostgreSQL" not in done.stderr, done.stderr
        assert f"using the embedded PostgreSQL already running in {data / 'postgres'}" in (
            done.stderr
        )
        assert "leaving the embedded PostgreSQL running" in done.stderr, done.stderr
        assert postmaster_pid(data) == postgres  # still the server's, still up
        assert postgres_processes(data)
        assert server.proc is not None
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(timeout=60) == 0
    finally:
        server.kill()
    assert_postgres_gone(data, postgres)


def _read_all(sock: socket.socket) -> bytes:
    """What the server sends until it closes the connection."""
    sock.settimeout(30)
    chunks = []
    try:
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    except ConnectionResetError:
        pass
    sock.close()
    return b"".join(chunks)
