"""The ``sandbar`` command ends with a sentence, never a traceback."""

from __future__ import annotations

from tests.conftest import free_port, run_sandbar


def test_serve_says_when_it_cannot_reach_the_database() -> None:
    port = free_port()  # (nothing listens there)
    done = run_sandbar(
        "serve",
        "--port",
        str(free_port()),
        env={"SANDBAR_DATABASE_URL": f"postgresql://nobody@127.0.0.1:{port}/sandbar"},
        timeout=60,
    )
    assert done.returncode == 1
    assert "Traceback" not in done.stderr, done.stderr
    assert "cannot use the database (SANDBAR_DATABASE_URL)" in done.stderr
    assert f"port {port} failed" in done.stderr
