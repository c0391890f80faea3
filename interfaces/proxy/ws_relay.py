"""WebSocket upgrades, relayed message by message between the browser (ASGI) and the
agent (a ``websockets`` client), with close codes passed on in both directions."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from starlette.types import Receive, Scope, Send
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

log = logging.getLogger(__name__)
MAX_MESSAGE = 16 * 1024 * 1024
# Codes a peer may not send in a close frame (RFC 6455 7.4.1), and what to say instead.
_UNSENDABLE = {1004: 1011, 1005: 1000, 1006: 1011, 1015: 1011}


def sendable(code: int | None) -> int:
    if code is None:
        return 1000
    if code in _UNSENDABLE:
        return _UNSENDABLE[code]
    return code if 1000 <= code <= 4999 else 1011


async def relay_websocket(
    scope: Scope, receive: Receive, send: Send, target: str, headers: list[tuple[bytes, bytes]]
) -> None:
    path = scope.get("raw_path") or scope["path"].encode()
    if scope["query_string"]:
        path += b"?" + scope["query_string"]
    origin = next((v for n, v in scope["headers"] if n == b"origin"), None)
    try:
        agent = await connect(
            f"ws://{target}{path.decode('latin-1')}",
            additional_headers=[(n.decode("latin-1"), v.decode("latin-1")) for n, v in headers],
            origin=origin.decode("latin-1") if origin else None,  # type: ignore[arg-type]
            subprotocols=scope.get("subprotocols") or None,  # type: ignore[arg-type]
            open_timeout=10,
            max_size=MAX_MESSAGE,
            compression=None,
            user_agent_header=None,
        )
    except InvalidStatus as e:
        await refuse_websocket(scope, send, e.response.status_code)
        return
    except (OSError, TimeoutError, InvalidHandshake):
        await refuse_websocket(scope, send, 502)
        return
    async with agent:
        await send({"type": "websocket.accept", "subprotocol": agent.subprotocol})
        to_agent = asyncio.create_task(_browser_to_agent(receive, agent))
        to_browser = asyncio.create_task(_agent_to_browser(agent, send))
        done, pending = await asyncio.wait(
            {to_agent, to_browser}, return_when=asyncio.FIRST_COMPLETED
        )
        for task in pending:
            task.cancel()
        for task in done | pending:
            try:
                await task
            except asyncio.CancelledError:
                pass
            except Exception as e:
                log.info("websocket relay ended: %r", e)


async def _browser_to_agent(receive: Receive, agent: ClientConnection) -> None:
    while True:
        message = await receive()
        if message["type"] == "websocket.receive":
            data = message.get("bytes")
            try:
                await agent.send(data if data is not None else message.get("text", ""))
            except ConnectionClosed:
                return
        elif message["type"] == "websocket.disconnect":
            await agent.close(sendable(message.get("code")), message.get("reason") or "")
            return


async def _agent_to_browser(agent: ClientConnection, send: Send) -> None:
    try:
        async for data in agent:
            if isinstance(data, str):
                await send({"type": "websocket.send", "text": data})
            else:
                await send({"type": "websocket.send", "bytes": data})
    except ConnectionClosed:
        pass
    rcvd = agent.protocol.close_rcvd
    code = sendable(rcvd.code if rcvd else 1006)
    with contextlib.suppress(Exception):  # the browser may be gone already
        await send({"type": "websocket.close", "code": code, "reason": rcvd.reason if rcvd else ""})


async def refuse_websocket(scope: Scope, send: Send, status: int) -> None:
    if "websocket.http.response" in scope.get("extensions", {}):
        await send({"type": "websocket.http.response.start", "status": status, "headers": []})
        await send({"type": "websocket.http.response.body", "body": b""})
    else:
        await send({"type": "websocket.close", "code": 1011})
