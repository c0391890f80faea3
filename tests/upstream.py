"""A test agent: a real HTTP and WebSocket server on loopback that reports what reached it,
for the proxy tests (and the proxy benchmark) where a real agent cannot show it."""

from __future__ import annotations

import asyncio
import hashlib
import json
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn

CHUNK = 64 * 1024


async def _json(send: Any, status: int, payload: Any, headers: list | None = None) -> None:
    body = json.dumps(payload).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), *(headers or [])],
        }
    )
    await send({"type": "http.response.body", "body": body})


class TestAgent:
    """Routes: /echo (what arrived), /bytes?n= (n bytes, streamed), /sse?n= (events,
    each sent when the previous one is taken: ``released``), /cookies (sets some),
    /close ("ok", then the connection closes), /ws (echo; "close N" closes with code
    N), anything else: 200 "ok"."""

    __test__ = False  # not a pytest class

    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []
        self.sse_gated = False
        self.sse_release = threading.Semaphore(0)

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] == "websocket":
            await self._websocket(scope, receive, send)
            return
        path = scope["path"]
        if path == "/forever":  # streams until the client goes away, and notes that
            await self._forever(receive, send)
            return
        query = dict(p.split("=", 1) for p in scope["query_string"].decode().split("&") if "=" in p)
        headers = [[n.decode("latin-1"), v.decode("latin-1")] for n, v in scope["headers"]]
        digest, size = hashlib.sha256(), 0
        while True:
            message = await receive()
            chunk = message.get("body", b"")
            digest.update(chunk)
            size += len(chunk)
            if not message.get("more_body"):
                break
        seen = {
            "method": scope["method"],
            "path": path,
            "query": scope["query_string"].decode(),
            "headers": headers,
            "body_size": size,
            "body_sha256": digest.hexdigest(),
            "client": scope["client"][0] if scope.get("client") else None,
        }
        self.seen.append(seen)
        if path == "/echo":
            await _json(send, 200, seen)
        elif path == "/bytes":
            await self._bytes(send, int(query.get("n", "0")))
        elif path == "/sse":
            await self._sse(send, int(query.get("n", "3")))
        elif path == "/broken":  # promises more than it sends, then hangs up
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [(b"content-length", b"1000000")],
                }
            )
            if query.get("sent") != "0":  # (sent=0: hangs up before any of the body)
                await send({"type": "http.response.body", "body": b"x" * 1000, "more_body": True})
            raise ConnectionAbortedError("the test agent hangs up mid-body")
        elif path == "/late":  # the head, and the body a moment later
            headers = [(b"content-type", b"text/plain"), (b"content-length", b"4")]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await asyncio.sleep(float(query.get("after", "0.3")))
            await send({"type": "http.response.body", "body": b"late"})
        elif path == "/cookies":
            await _json(
                send,
                200,
                {},
                [
                    (b"set-cookie", b"agent=1; Path=/; Domain=localhost"),
                    (b"set-cookie", b"sandbar_session=forged; Path=/"),
                    (b"set-cookie", b"plain=2; Path=/"),
                    (b"connection", b"x-private-hop"),
                    (b"x-private-hop", b"secret"),
                ],
            )
        else:
            headers = [(b"content-type", b"text/plain"), (b"content-length", b"2")]
            if path == "/close":
                headers.append((b"connection", b"close"))
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": b"ok"})

    async def _forever(self, receive: Any, send: Any) -> None:
        gone = asyncio.Event()

        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            gone.set()

        watcher = asyncio.get_running_loop().create_task(watch())
        await send({"type": "http.response.start", "status": 200, "headers": []})
        while not gone.is_set():
            await send({"type": "http.response.body", "body": b"." * 1024, "more_body": True})
            await asyncio.sleep(0.01)
        self.seen.append({"cancelled": "/forever"})
        watcher.cancel()

    async def _bytes(self, send: Any, n: int) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"application/octet-stream"),
                    (b"content-length", str(n).encode()),
                ],
            }
        )
        block = b"x" * CHUNK
        if n == 0:
            await send({"type": "http.response.body", "body": b""})
        while n > 0:
            part = block[: min(n, CHUNK)]
            n -= len(part)
            await send({"type": "http.response.body", "body": part, "more_body": n > 0})

    async def _sse(self, send: Any, n: int) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"text/event-stream"),
                    (b"cache-control", b"no-cache"),
                ],
            }
        )
        for i in range(n):
            if self.sse_gated and i:  # the test takes each event before the next is sent
                await asyncio.to_thread(self.sse_release.acquire, True, 30)
            data = f"id: {i}\ndata: event {i}\n\n".encode()
            await send({"type": "http.response.body", "body": data, "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    async def _websocket(self, scope: dict, receive: Any, send: Any) -> None:
        await receive()  # websocket.connect
        protocols = scope.get("subprotocols") or []
        await send({"type": "websocket.accept", "subprotocol": protocols[0] if protocols else None})
        headers = {n.decode("latin-1"): v.decode("latin-1") for n, v in scope["headers"]}
        await send({"type": "websocket.send", "text": json.dumps({"headers": headers})})
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                self.seen.append({"ws_closed": message.get("code")})
                return
            text = message.get("text")
            if text and text.startswith("close "):
                await send({"type": "websocket.close", "code": int(text.split()[1])})
                return
            if text is not None:
                await send({"type": "websocket.send", "text": text})
            else:
                await send({"type": "websocket.send", "bytes": message.get("bytes") or b""})


@contextmanager
def serving(app: Any) -> Iterator[int]:
    """Serve ``app`` on a free loopback port in a thread; yields the port."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", lifespan="off", ws="websockets-sansio")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        threading.Event().wait(0.02)
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
