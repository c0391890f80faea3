"""A hostile sandbox server for the proxy tests: a raw-socket HTTP/1.1 server on loopback
whose answers are whatever bytes a test scripts, framed or not, so that the proxy can be
shown what a server running an agent's code may send it (tests/test_hostile_upstream.py).

Requests are read as a plain server reads them (a head, then a Content-Length body);
each answer is written by the test's handler for the request's path, on the connection it
came on. Every connection is kept, with the requests it carried and whether the proxy
closed it, so that a test can tell a reused connection from a new one."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

MAX_REQUEST_HEAD = 256 * 1024  # (the proxy's own cap is 64 KiB)


@dataclass
class Request:
    method: str
    target: str
    headers: list[tuple[str, str]]  # as sent: names lower-cased, in order
    body: bytes

    @property
    def path(self) -> str:
        return self.target.split("?", 1)[0]

    def header(self, name: str) -> str | None:
        return next((v for n, v in self.headers if n == name), None)


@dataclass(eq=False)
class Connection:
    """One connection from the proxy."""

    sock: socket.socket
    number: int
    requests: list[Request] = field(default_factory=list)
    closed: threading.Event = field(default_factory=threading.Event)  # by the proxy
    notes: dict[str, object] = field(default_factory=dict)  # a handler's own state

    def send(self, data: bytes) -> bool:
        """Write ``data``; False once the proxy has closed the connection."""
        try:
            self.sock.sendall(data)
            return True
        except OSError:
            self.closed.set()
            return False

    def send_until_closed(self, chunk: bytes, limit: int) -> int:
        """Write ``chunk`` again and again until the proxy closes the connection (or
        ``limit`` bytes are out, then hang up); returns the bytes written."""
        sent = 0
        while sent < limit:
            if not self.send(chunk):
                return sent
            sent += len(chunk)
        self.sock.shutdown(socket.SHUT_RDWR)
        return sent


Handler = Callable[[Connection, Request], None]


def response(status: int, body: bytes, *headers: str) -> bytes:
    """A well-formed answer, with any extra header lines."""
    head = [f"HTTP/1.1 {status} X", f"Content-Length: {len(body)}", *headers]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def honest(conn: Connection, request: Request) -> None:
    """The answer of a server that means no harm: its own path, echoed."""
    conn.send(response(200, b"real " + request.target.encode()))


class HostileUpstream:
    """The server: ``routes`` maps a path to its handler (any other path: ``honest``)."""

    def __init__(self) -> None:
        self.routes: dict[str, Handler] = {}
        self.connections: list[Connection] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Lock()

    def serve(self) -> None:
        while True:
            try:
                sock, _ = self._listener.accept()
            except OSError:
                return  # stopped
            with self._lock:
                conn = Connection(sock, len(self.connections))
                self.connections.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def stop(self) -> None:
        for sock in [self._listener, *(c.sock for c in self.connections)]:
            with contextlib.suppress(OSError):  # (no longer connected)
                sock.shutdown(socket.SHUT_RDWR)  # wakes a thread blocked on it; close does not
            sock.close()

    def connection_of(self, path: str) -> Connection:
        """The connection that carried the (last) request for ``path``."""
        with self._lock:
            found = [c for c in self.connections if any(r.path == path for r in c.requests)]
        assert found, f"no request for {path} arrived"
        return found[-1]

    def _serve(self, conn: Connection) -> None:
        buffer = b""
        try:
            while True:
                while b"\r\n\r\n" not in buffer:
                    data = conn.sock.recv(65536)
                    if not data:
                        conn.closed.set()
                        return
                    buffer += data
                    if len(buffer) > MAX_REQUEST_HEAD:
                        conn.sock.close()
                        return
                head, buffer = buffer.split(b"\r\n\r\n", 1)
                request_line, *lines = head.decode("latin-1").split("\r\n")
                method, target, _ = request_line.split(" ", 2)
                headers = [
                    (n.strip().lower(), v.strip())
                    for n, v in (line.split(":", 1) for line in lines if ":" in line)
                ]
                length = int(next((v for n, v in headers if n == "content-length"), "0"))
                while len(buffer) < length:
                    data = conn.sock.recv(65536)
                    if not data:
                        conn.closed.set()
                        return
                    buffer += data
                body, buffer = buffer[:length], buffer[length:]
                request = Request(method, target, headers, body)
                conn.requests.append(request)
                self.routes.get(request.path, honest)(conn, request)
        except OSError:
            conn.closed.set()


@contextmanager
def hostile_serving() -> Iterator[HostileUpstream]:
    server = HostileUpstream()
    thread = threading.Thread(target=server.serve, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.stop()
        thread.join(timeout=10)
