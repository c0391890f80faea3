"""One request of the API host, answered by the ASGI application (the REST API), on a
connection the front keeps.

The front (interfaces/proxy/front.py) routes each request of a connection by its own
``Host``: a reverse proxy that pools its connections to Sandbar (nginx with upstream
keep-alive, HAProxy, cloud load balancers) sends API and sandbox requests down the same
connection in any order. Handing the connection to uvicorn's own protocol, as the front
once did, kept it there: every later request on it went to the API, whatever its host.
So the front runs the application itself, one ``ApiExchange`` per request, queued with the
sandbox exchanges in the connection's order.

This is the part of uvicorn's ``RequestResponseCycle`` (uvicorn/protocols/http/
httptools_impl.py) the API needs, written against the front's queue rather than a
transport of its own: the request body handed over as it comes (reading paused past
``HIGH_WATER``), ``Expect: 100-continue`` answered on the first ``receive``, the response
framed with its length or chunked, writes waiting while the client reads slowly, and
``http.disconnect`` once the response is complete or the client has gone. uvicorn's
cycle cannot be reused: it writes to the transport as soon as it runs and owns the
connection's keep-alive."""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

import orjson

from interfaces.proxy import http1
from interfaces.proxy.gate import Request

if TYPE_CHECKING:
    from interfaces.proxy.front import FrontProtocol

log = logging.getLogger("sandbar.http")
access_log = logging.getLogger("uvicorn.access")

HIGH_WATER = 64 * 1024  # request body bytes held for the application before reading pauses
_INTERNAL_ERROR = orjson.dumps(
    {"error": {"code": "internal_error", "message": "something went wrong on our side"}}
)


class Application:
    """What every API exchange of a server shares: the ASGI application and the
    server's state, from uvicorn's protocol arguments."""

    def __init__(self, config: Any, server_state: Any, app_state: dict[str, Any]) -> None:
        self.app = config.loaded_app
        self.root_path: str = config.root_path
        self._server_state = server_state  # (its default headers are renewed each second)
        self.tasks: set[asyncio.Task[None]] = server_state.tasks
        self.state = app_state
        self.log_access = access_log.hasHandlers()

    @property
    def default_headers(self) -> list[tuple[bytes, bytes]]:
        """The date, and the server header if set."""
        headers: list[tuple[bytes, bytes]] = self._server_state.default_headers
        return headers


class ApiExchange:
    """One request to the API and its answer. The front calls ``start`` when it is this
    request's turn; the body comes in ``request_body`` whenever it is read."""

    def __init__(
        self,
        front: FrontProtocol,
        application: Application,
        request: Request,
        keep_alive: bool,
        http_version: str,
    ) -> None:
        self.front = front
        self.request = request
        self.keep_alive = keep_alive
        self._application = application
        self._http_version = http_version
        self._body: deque[bytes] = deque()
        self._body_size = 0
        self._more_body = True
        expect = next((v for n, v in request.headers if n == b"expect"), b"")
        self._expect_continue = expect.lower() == b"100-continue"
        self._delivered_end = False
        self._arrived = asyncio.Event()  # body, its end, or the client gone
        self._writable = asyncio.Event()
        self._writable.set()
        self._task: asyncio.Task[None] | None = None
        self._started = False
        self._complete = False
        self._chunked = False
        self._length = 0  # what is still due of a Content-Length body
        self._disconnected = False
        self._done = False

    # From the front

    def start(self) -> None:
        task = asyncio.get_running_loop().create_task(self._run())
        self._task = task
        self._application.tasks.add(task)
        task.add_done_callback(self._application.tasks.discard)

    def request_body(self, chunk: bytes) -> None:
        if self._done:
            return
        self._body.append(chunk)
        self._body_size += len(chunk)
        if self._body_size > HIGH_WATER:
            self.front.pause_reading("body")
        self._arrived.set()

    def request_complete(self) -> None:
        self._more_body = False
        self._arrived.set()

    def client_raw(self, data: bytes) -> None:  # (no upgrade reaches the API)
        pass

    def client_writable(self, writable: bool) -> None:
        if writable:
            self._writable.set()
        else:
            self._writable.clear()

    def abort(self) -> None:
        """The client went away: the application's sends go nowhere from now on."""
        self._done = True
        self._disconnected = True
        self._arrived.set()
        self._writable.set()

    # The application

    def _scope(self) -> dict[str, Any]:
        request = self.request
        target = request.target
        raw_path, _, query = target.partition(b"?")
        path = raw_path.decode("latin-1")
        if "%" in path:
            path = unquote(path, encoding="latin-1")
        front = self.front
        return {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.4"},
            "http_version": self._http_version,
            "server": front.server,
            "client": front.client,
            "scheme": "http",
            "method": request.method.decode("ascii"),
            "root_path": self._application.root_path,
            "path": path,
            "raw_path": raw_path,
            "query_string": query,
            "headers": request.headers,
            "state": self._application.state.copy(),
        }

    async def _run(self) -> None:
        try:
            await self._application.app(self._scope(), self._receive, self._send)
        except BaseException as exc:  # (as uvicorn: logged, answered, the server goes on)
            log.error("Exception in ASGI application", exc_info=exc)
            if isinstance(exc, asyncio.CancelledError):
                raise
            self._failed()
        else:
            if not self._complete:
                log.error("the API returned without completing its response")
                self._failed()
        finally:
            self._finish()

    def _failed(self) -> None:
        if not self._started and not self._disconnected:
            self.keep_alive = False
            head = self._head(
                500,
                [
                    (b"content-type", b"application/json"),
                    (b"content-length", b"%d" % len(_INTERNAL_ERROR)),
                ],
            )
            self.front.write(head + _INTERNAL_ERROR)
            self._complete = True
        else:  # cut short mid-body: the client must not take it for whole
            self.keep_alive = False

    async def _receive(self) -> dict[str, Any]:
        if self._expect_continue:
            self._expect_continue = False
            if not self._started:
                self.front.write(http1.CONTINUE)
        if self._delivered_end:  # all of the body was handed over: wait for the end
            while not (self._disconnected or self._complete):
                self._arrived.clear()
                await self._arrived.wait()
            return {"type": "http.disconnect"}
        while not (self._body or not self._more_body or self._disconnected):
            self._arrived.clear()
            await self._arrived.wait()
        if self._disconnected or self._complete:
            return {"type": "http.disconnect"}
        body = b"".join(self._body) if len(self._body) != 1 else self._body[0]
        self._body.clear()
        self._body_size = 0
        self.front.resume_reading("body")
        self._delivered_end = not self._more_body
        return {"type": "http.request", "body": body, "more_body": self._more_body}

    def _head(self, status: int, headers: list[tuple[bytes, bytes]]) -> bytes:
        # Answered before its body has all come (a 413, a 401): the rest is not read
        # for nothing, the connection closes after this answer.
        if not self.keep_alive or self.front.closing or self._more_body:
            self.keep_alive = False
            headers.append((b"connection", b"close"))
        return http1.response_head(status, self._application.default_headers, headers)

    async def _send(self, message: dict[str, Any]) -> None:
        if not self._writable.is_set() and not self._disconnected:
            await self._writable.wait()
        if self._disconnected:
            return
        kind = message["type"]
        if not self._started:
            if kind != "http.response.start":
                raise RuntimeError(f"expected http.response.start, got {kind}")
            self._start_response(message["status"], list(message.get("headers", ())))
        elif not self._complete:
            if kind != "http.response.body":
                raise RuntimeError(f"expected http.response.body, got {kind}")
            self._write_body(message.get("body", b""), message.get("more_body", False))
        else:
            raise RuntimeError(f"{kind} sent after the response was complete")

    def _start_response(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        self._started = True
        self._expect_continue = False
        framed = False
        out: list[tuple[bytes, bytes]] = []
        for name, value in headers:
            name = name.lower()
            if b"\r" in value or b"\n" in value or b"\r" in name or b"\n" in name:
                raise RuntimeError("invalid HTTP header")
            if name == b"content-length" and not framed:
                self._length = int(value)
                framed = True
            elif name == b"transfer-encoding":
                self._chunked = framed = True
            elif name == b"connection" and b"close" in value.lower():
                self.keep_alive = False
                continue  # (added once by _head)
            out.append((name, value))
        bodiless = self.request.method == b"HEAD" or status in (204, 304) or status < 200
        if bodiless:
            self._length = 0
            self._chunked = False
        elif not framed:
            self._chunked = True
            out.append((b"transfer-encoding", b"chunked"))
        if self._application.log_access:
            access_log.info(
                '%s - "%s %s HTTP/%s" %d',
                self.front.client_text,
                self.request.method.decode("ascii"),
                self.request.target.partition(b"?")[0].decode("latin-1"),  # (no query: tokens)
                self._http_version,
                status,
            )
        # The head goes out with the body's first bytes (one write, not two), or at the
        # end of this turn of the loop if the application sends no body at once.
        self.front.cork()
        self.front.write(self._head(status, out))
        asyncio.get_running_loop().call_soon(self.front.uncork)

    def _write_body(self, body: bytes, more: bool) -> None:
        if self.request.method == b"HEAD":
            body = b""
        if self._chunked:
            if body:
                self.front.write(http1.chunk(body))
            if not more:
                self.front.write(http1.LAST_CHUNK)
        else:
            if len(body) > self._length:
                raise RuntimeError("response body longer than its Content-Length")
            self._length -= len(body)
            if body:
                self.front.write(body)
            if not more and self._length:
                raise RuntimeError("response body shorter than its Content-Length")
        self.front.uncork()
        if not more:
            self._complete = True
            self._arrived.set()  # a receive waiting for the end returns http.disconnect

    def _finish(self) -> None:
        self.front.uncork()
        if self._done:
            return
        self._done = True
        self._arrived.set()
        self.front.resume_reading("body")
        self.front.finished(self)
