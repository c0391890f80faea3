"""A bare HTTP/1.1 client over one socket, for tests that must control exactly what goes
down a connection (pipelining, several hosts on one connection) and read each answer as
it was framed: status, headers and body (by Content-Length, chunked, or to the close)."""

from __future__ import annotations

import socket
from dataclasses import dataclass


@dataclass
class Answer:
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        return next((v for n, v in self.headers if n == name), None)


class Reader:
    """Reads answers one after another from ``sock``."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""

    def _more(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionError(f"closed; unread: {self.buffer[:200]!r}")
        self.buffer += data

    def _line(self) -> bytes:
        while b"\r\n" not in self.buffer:
            self._more()
        line, self.buffer = self.buffer.split(b"\r\n", 1)
        return line

    def _exactly(self, n: int) -> bytes:
        while len(self.buffer) < n:
            self._more()
        data, self.buffer = self.buffer[:n], self.buffer[n:]
        return data

    def answer(self, method: str = "GET") -> Answer:
        """The next final answer (interim 1xx answers are skipped)."""
        while True:
            status_line = self._line()
            status = int(status_line.split(b" ", 2)[1])
            headers: list[tuple[str, str]] = []
            while line := self._line():
                name, _, value = line.partition(b":")
                headers.append((name.decode().strip().lower(), value.decode().strip()))
            if 100 <= status < 200 and status != 101:
                continue
            break
        found = dict(headers)
        if method == "HEAD" or status in (101, 204, 304):
            body = b""
        elif "content-length" in found:
            body = self._exactly(int(found["content-length"]))
        elif found.get("transfer-encoding", "").lower() == "chunked":
            parts = []
            while True:
                size = int(self._line().split(b";")[0], 16)
                if size == 0:
                    while self._line():  # trailers
                        pass
                    break
                parts.append(self._exactly(size))
                self._exactly(2)
            body = b"".join(parts)
        else:  # to the close
            try:
                while True:
                    self._more()
            except ConnectionError:
                pass
            body, self.buffer = self.buffer, b""
        return Answer(status, headers, body)


def request(
    method: str, host: str, target: str, headers: dict[str, str] | None = None, body: bytes = b""
) -> bytes:
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}"]
    for name, value in (headers or {}).items():
        lines.append(f"{name}: {value}")
    if body or method in ("POST", "PUT", "PATCH"):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body
