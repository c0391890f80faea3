"""opencode's terminals through Sandbar: shared by the container and the tunnel tests."""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import AbstractContextManager

import httpx
from websockets.sync.client import ClientConnection


def terminal_round_trip(
    client: httpx.Client, websocket: Callable[[str], AbstractContextManager[ClientConnection]]
) -> None:
    """opencode's terminals are WebSockets (``/pty/{id}/connect``): open one through
    ``client`` (a sandbox host's), have its shell compute something over ``websocket``,
    read the answer, close."""
    created = client.post("/pty", json={"command": "/bin/sh", "title": "proxy test"})
    assert created.status_code == 200, created.text
    pty_id = created.json()["id"]
    assert pty_id.startswith("pty")
    try:
        with websocket(f"/pty/{pty_id}/connect") as ws:
            ws.send("echo sandbar-$((6 * 7))-ok\n")
            seen = ""
            deadline = time.monotonic() + 20
            # The answer, not the echo of what was typed: only the shell writes "42".
            while "sandbar-42-ok" not in seen:
                left = deadline - time.monotonic()
                try:
                    message = ws.recv(timeout=max(left, 0.01))
                except TimeoutError:
                    raise AssertionError(f"no answer from the terminal: {seen!r}") from None
                if isinstance(message, bytes):
                    message = message.decode(errors="replace")
                seen += message
    finally:
        assert client.delete(f"/pty/{pty_id}").status_code == 200
