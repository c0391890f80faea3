"""A stand-in for the Anthropic API on loopback (the real one cannot be reached from
here), speaking the Messages API's wire format: JSON answers, the SSE event sequence of a
streamed answer, and the error shape. It checks the real key and records every request.

The answer echoes the last user message; token counts are words, so tests know them:
input = words in all messages (and the system prompt), output = words in the answer."""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Any

REAL_KEY = "sk-ant-api03-REAL-KEY-never-leaves-sandbar-" + "x" * 40
MODEL = "claude-sonnet-4-5"


def _words(value: Any) -> int:
    if isinstance(value, str):
        return len(value.split())
    if isinstance(value, list):
        return sum(_words(v) for v in value)
    if isinstance(value, dict):
        return _words(value.get("text")) + _words(value.get("content"))
    return 0


def _last_user_text(messages: list[Any]) -> str:
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, str):
                return content
            if isinstance(content, list):
                texts = [c.get("text", "") for c in content if isinstance(c, dict)]
                return " ".join(t for t in texts if t)
    return ""


class AnthropicStandIn:
    __test__ = False

    def __init__(self, key: str = REAL_KEY) -> None:
        self.key = key
        self.requests: list[dict[str, Any]] = []  # whole requests
        self.heads = 0  # requests begun (a head, whether or not its body came)
        self.lock = threading.Lock()
        self.hold = threading.Event()  # set: streamed answers wait for ``release``
        self.release = threading.Semaphore(0)

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        self.heads += 1
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {n.decode("latin-1"): v.decode("latin-1") for n, v in scope["headers"]}
        with self.lock:
            self.requests.append(
                {"path": scope["path"], "headers": headers, "body": body, "method": scope["method"]}
            )
        if headers.get("x-api-key") != self.key:
            await self._error(send, 401, "authentication_error", "invalid x-api-key")
            return
        if scope["path"] != "/v1/messages" or scope["method"] != "POST":
            await self._error(send, 404, "not_found_error", f"no route {scope['path']}")
            return
        try:
            request = json.loads(body)
            messages = request["messages"]
        except (ValueError, KeyError, TypeError):
            await self._error(send, 400, "invalid_request_error", "messages: field required")
            return
        text = _last_user_text(messages)
        if text == "take your time":
            await asyncio.sleep(6)
        if text == "please fail":
            await self._error(send, 529, "overloaded_error", "Overloaded")
            return
        reply = f"echo: {text}"
        usage = {
            "input_tokens": _words(messages) + _words(request.get("system")),
            "output_tokens": _words(reply),
            "cache_creation_input_tokens": 3,
            "cache_read_input_tokens": 5,
        }
        model = request.get("model", MODEL)
        if request.get("stream"):
            # As the real API streams tokens some milliseconds apart (benchmarks ask).
            gap = float(headers.get("x-standin-gap-ms", "0") or 0) / 1000
            await self._stream(send, model, reply, usage, gap)
        else:
            await self._json(
                send,
                200,
                {
                    "id": "msg_standin",
                    "type": "message",
                    "role": "assistant",
                    "model": model,
                    "content": [{"type": "text", "text": reply}],
                    "stop_reason": "end_turn",
                    "stop_sequence": None,
                    "usage": usage,
                },
            )

    async def _stream(
        self, send: Any, model: str, reply: str, usage: dict[str, int], gap: float = 0.0
    ) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"text/event-stream; charset=utf-8"),
                    (b"cache-control", b"no-cache"),
                ],
            }
        )
        start_usage = {**usage, "output_tokens": 1}
        events: list[tuple[str, dict[str, Any]]] = [
            (
                "message_start",
                {
                    "type": "message_start",
                    "message": {
                        "id": "msg_standin",
                        "type": "message",
                        "role": "assistant",
                        "model": model,
                        "content": [],
                        "stop_reason": None,
                        "stop_sequence": None,
                        "usage": start_usage,
                    },
                },
            ),
            (
                "content_block_start",
                {
                    "type": "content_block_start",
                    "index": 0,
                    "content_block": {"type": "text", "text": ""},
                },
            ),
            ("ping", {"type": "ping"}),
        ]
        for i, word in enumerate(reply.split()):
            piece = word if i == 0 else " " + word
            events.append(
                (
                    "content_block_delta",
                    {
                        "type": "content_block_delta",
                        "index": 0,
                        "delta": {"type": "text_delta", "text": piece},
                    },
                )
            )
        events += [
            ("content_block_stop", {"type": "content_block_stop", "index": 0}),
            (
                "message_delta",
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                    "usage": {"output_tokens": usage["output_tokens"]},
                },
            ),
            ("message_stop", {"type": "message_stop"}),
        ]
        for i, (name, data) in enumerate(events):
            if self.hold.is_set() and i:
                await asyncio.to_thread(self.release.acquire, True, 30)
            elif gap and i:
                await asyncio.sleep(gap)
            chunk = f"event: {name}\ndata: {json.dumps(data)}\n\n".encode()
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    async def _json(self, send: Any, status: int, payload: Any) -> None:
        body = json.dumps(payload).encode()
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"request-id", b"req_standin"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    async def _error(self, send: Any, status: int, kind: str, message: str) -> None:
        await self._json(
            send, status, {"type": "error", "error": {"type": kind, "message": message}}
        )
