"""A hostile tunnel client, written for the tests: it dials a real ``sandbar serve`` as an
agent does (a real WebSocket handshake, with websockets' Sans-I/O client, over a plain
socket) and then speaks HTTP/2 frames made with hyperframe, so that a test can send what
no well-behaved agent would: floods of control frames, pushes, WebSocket PINGs, or
nothing read at all."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterable

import hpack
from hyperframe.frame import (
    DataFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    SettingsFrame,
    WindowUpdateFrame,
)
from websockets.client import ClientProtocol
from websockets.frames import Close, Opcode
from websockets.frames import Frame as WsFrame
from websockets.http11 import Response
from websockets.uri import parse_uri

MAX_WINDOW = 2**31 - 1
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


class Refused(Exception):
    def __init__(self, response: Response) -> None:
        super().__init__(f"{response.status_code} {response.reason_phrase}")
        self.response = response


class HostileAgent:
    def __init__(self, port: int, sandbox_id: str, token: str, *, path: str = "") -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=20)
        self.ws = ClientProtocol(parse_uri(f"ws://127.0.0.1:{port}/api/tunnel/{sandbox_id}"))
        self.ws.max_size = None
        request = self.ws.connect()
        request.headers["Authorization"] = f"Bearer {token}"
        if path:
            request.path = path
        self.ws.send_request(request)
        self._send_pending()
        self.frames: list[Frame] = []  # HTTP/2 frames received, in order
        self.pongs = 0
        self.close_frame: Close | None = None
        self.eof = False
        self._h2 = b""
        self._preface = len(PREFACE)  # Sandbar is the HTTP/2 client: its preface first
        self._hpack = hpack.Encoder()
        response = None
        while response is None:
            for event in self._read_events():
                if isinstance(event, Response):
                    response = event
        if response.status_code != 101:
            self.sock.close()
            raise Refused(response)

    # Sending.

    def send(self, *frames: Frame | bytes) -> None:
        """HTTP/2 frames, in one WebSocket message."""
        data = b"".join(f if isinstance(f, bytes) else f.serialize() for f in frames)
        self.ws.send_binary(data)
        self._send_pending()

    def send_ws(self, opcode: Opcode, data: bytes, fin: bool = True) -> None:
        self.ws.send_frame(WsFrame(opcode, data, fin=fin))
        self._send_pending()

    def settle(self, window: int = 1024 * 1024, **settings: int) -> None:
        """The server's preface (its SETTINGS, with INITIAL_WINDOW_SIZE ``window``) and
        the ACK of Sandbar's; a connection window as large as ``window`` allows."""
        values = {SettingsFrame.INITIAL_WINDOW_SIZE: window, **settings}
        ack = SettingsFrame(0, flags=["ACK"])
        frames: list[Frame] = [SettingsFrame(0, settings=values), ack]
        if window > 65535:
            frames.append(WindowUpdateFrame(0, window_increment=window - 65535))
        self.send(*frames)

    def answer(self, stream_id: int, status: int = 200, end: bool = False) -> None:
        block = self._hpack.encode([(":status", str(status))])
        flags = ["END_HEADERS", *(["END_STREAM"] if end else [])]
        self.send(HeadersFrame(stream_id, data=block, flags=flags))

    def header_block(self, headers: list[tuple[str, str]]) -> bytes:
        return self._hpack.encode(headers)

    def data(self, stream_id: int, payload: bytes, end: bool = False) -> DataFrame:
        return DataFrame(stream_id, data=payload, flags=["END_STREAM"] if end else [])

    # Receiving.

    def wait_for(self, done: Callable[[HostileAgent], bool], timeout: float = 30) -> None:
        """Read until ``done(self)``, the connection's end, or ``timeout`` (an error)."""
        deadline = time.monotonic() + timeout
        while not done(self):
            if self.eof:
                raise AssertionError(f"the connection ended first; frames: {self.summary()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"not within {timeout} s; frames: {self.summary()}")
            list(self._read_events())

    def read_to_end(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not self.eof:
            assert time.monotonic() < deadline, f"still open; frames: {self.summary()}"
            list(self._read_events())

    def goaway(self) -> GoAwayFrame | None:
        return next((f for f in self.frames if isinstance(f, GoAwayFrame)), None)

    def of_type(self, kind: type[Frame]) -> list[Frame]:
        return [f for f in self.frames if isinstance(f, kind)]

    def summary(self) -> str:
        kinds: dict[str, int] = {}
        for f in self.frames:
            kinds[type(f).__name__] = kinds.get(type(f).__name__, 0) + 1
        return f"{kinds}, {self.pongs} pongs, close {self.close_frame}"

    def close(self) -> None:
        self.sock.close()

    def _read_events(self) -> Iterable[object]:
        try:
            data = self.sock.recv(1 << 20)
        except TimeoutError:
            return []
        except OSError:
            data = b""
        if data:
            self.ws.receive_data(data)
        else:
            self.eof = True
            self.ws.receive_eof()
        events = self.ws.events_received()
        for event in events:
            if isinstance(event, WsFrame):
                if event.opcode in (Opcode.BINARY, Opcode.CONT):
                    self._h2 += event.data
                    self._parse()
                elif event.opcode is Opcode.PONG:
                    self.pongs += 1
                elif event.opcode is Opcode.CLOSE:
                    self.close_frame = Close.parse(event.data)
        self._send_pending()  # (the answer to a close frame)
        return events

    def _parse(self) -> None:
        if self._preface:
            if len(self._h2) < self._preface:
                return
            assert self._h2.startswith(PREFACE), self._h2[:24]
            self._h2, self._preface = self._h2[self._preface :], 0
        while len(self._h2) >= 9:
            frame, length = Frame.parse_frame_header(memoryview(self._h2[:9]))
            if len(self._h2) < 9 + length:
                return
            frame.parse_body(memoryview(self._h2[9 : 9 + length]))
            self._h2 = self._h2[9 + length :]
            self.frames.append(frame)

    def _send_pending(self) -> None:
        for data in self.ws.data_to_send():
            if data:
                try:
                    self.sock.sendall(data)
                except OSError:
                    self.eof = True
                    return
