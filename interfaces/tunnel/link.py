"""One tunnel: an HTTP/2 connection (the ``h2`` state machine) carried in the binary
messages of one WebSocket, between Sandbar (the HTTP/2 client) and an agent (the server).

Every stream is a ``CONNECT`` to the agent's local target, so a stream is a byte pipe,
like a TCP connection: Sandbar's proxy writes HTTP/1.1 into it and reads the answer back
exactly as it does with a container (headers byte for byte, bodies, SSE, WebSocket
upgrades). HTTP/2 brings what the tunnel needs and a home-made protocol would have to
reinvent: many streams at once, per-stream flow control (a slow browser fills its own
stream's window and stops only that stream; nothing is ever dropped), RST_STREAM to
cancel a stream at the far end, and PING for heartbeats. docs/tunnel.md describes the
wire format."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
import hyperframe.frame

log = logging.getLogger(__name__)


def _data_repr(self: hyperframe.frame.DataFrame) -> str:
    return f"data=<{len(self.data)} bytes>"


# h2 logs every frame it receives as ``repr(frame)``, computed before the logger can decline
# it; for a DATA frame, hyperframe's repr re-serializes and hex-encodes the whole payload:
# two copies of every byte received, about half the tunnel's CPU on a bulk transfer. A
# DATA frame's repr gives its length instead (only repr changes; parsing is untouched).
hyperframe.frame.DataFrame._body_repr = _data_repr  # type: ignore[method-assign]

WINDOW = 1024 * 1024  # per stream: what may be in flight before the reader takes it
MAX_STREAMS = 256  # so at most MAX_STREAMS * WINDOW (256 MiB) waits for slow readers
# The connection's window is the largest HTTP/2 allows, far above MAX_STREAMS * WINDOW:
# streams whose readers stall can never use it up and hold back the others.
CONNECTION_WINDOW = 2**31 - 1
MAX_MESSAGE = 1024 * 1024  # bytes per WebSocket message
# What a stream's reader has consumed is handed to h2 in lumps of this much (and when the
# stream goes): h2 sends a WINDOW_UPDATE only once half a window is consumed anyway, and a
# call per small request cost more than the rest of its DATA frame's handling.
ACK_EVERY = 32 * 1024
SMALL_FRAME = 16 * 1024  # no peer's MAX_FRAME_SIZE is smaller (RFC 9113, 6.5.2)
PING_EVERY = 5.0  # seconds
DEAD_AFTER = 15.0  # seconds without a ping answered: the link is dead


class TunnelBusy(Exception):
    """No stream can be opened now (the tunnel's limit is reached)."""


class Pipe:
    """One stream's end. Subclasses say what to do with what arrives."""

    def __init__(self, link: Link, stream_id: int) -> None:
        self.link = link
        self.stream_id = stream_id
        self._pending: deque[bytes] = deque()  # written, waiting for window
        self._pending_size = 0
        self._end_after_pending = False
        self._writable = True  # as last told with on_writable
        self.closed = False

    # What arrives (called by the link).

    def on_headers(self, headers: list[tuple[bytes, bytes]]) -> None:
        pass

    def on_data(self, data: bytes, flow_length: int) -> None:
        """Data for this end; call ``self.ack(flow_length)`` once it is consumed."""
        raise NotImplementedError

    def on_end(self) -> None:
        """The far end will send nothing more."""

    def on_reset(self, reason: str) -> None:
        """The stream is gone (reset, or the link died)."""

    def on_writable(self, writable: bool) -> None:
        """Pending output rose above the high-water mark (False), or fell back below
        half of it after that (True)."""

    # Sending.

    def write(self, data: bytes) -> None:
        if self.closed or not data:
            return
        self._pending.append(data)
        self._pending_size += len(data)
        self.link.pump(self)
        if self._pending_size > WINDOW and self._writable:
            self._writable = False
            self.on_writable(False)

    def end(self) -> None:
        """No more data from this end (after what is pending)."""
        if self.closed:
            return
        self._end_after_pending = True
        self.link.pump(self)

    def reset(self) -> None:
        """Abandon the stream; the far end closes its side."""
        if not self.closed:
            self.closed = True
            self.link.reset(self.stream_id)

    def ack(self, flow_length: int) -> None:
        self.link.ack(self.stream_id, flow_length)

    @property
    def pending(self) -> int:
        return self._pending_size


class Link:
    """The HTTP/2 connection of one tunnel, fed with the WebSocket's messages by
    ``receive`` and sending through ``write``, which takes bytes at once and never blocks
    (a transport's write, say: what it holds is bounded by the streams' windows)."""

    def __init__(
        self,
        write: Callable[[bytes], None],
        *,
        client_side: bool,
        on_request: Callable[[int, list[tuple[bytes, bytes]]], Pipe | None] | None = None,
    ) -> None:
        config = h2.config.H2Configuration(client_side=client_side, header_encoding=None)
        self.conn = h2.connection.H2Connection(config=config)
        self.conn.initiate_connection()
        # Sent as a change, so each applies when the peer acknowledges it.
        self.conn.update_settings(
            {
                h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: WINDOW,
                h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: MAX_STREAMS,
                h2.settings.SettingCodes.MAX_FRAME_SIZE: 64 * 1024,
            }
        )
        self.conn.increment_flow_control_window(CONNECTION_WINDOW - 65535)
        self._write = write
        self._on_request = on_request
        self.pipes: dict[int, Pipe] = {}
        self._unacked: dict[int, int] = {}  # stream: consumed, not yet handed to h2
        self._flush_scheduled = False
        self._loop = asyncio.get_running_loop()
        self.closed: asyncio.Future[str] = self._loop.create_future()
        self._last_pong = time.monotonic()
        self._heartbeats = self._loop.create_task(self._heartbeat())
        self._flush_soon()

    # Incoming bytes.

    def receive(self, data: bytes) -> None:
        if self.closed.done():
            return
        try:
            events = self.conn.receive_data(data)
        except h2.exceptions.ProtocolError as e:
            self.close(f"the peer broke the tunnel's protocol ({type(e).__name__}: {e})")
            return
        for event in events:
            self._dispatch(event)
        self._flush_soon()

    def _dispatch(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.DataReceived):  # (by far the most frequent first)
            pipe = self.pipes.get(event.stream_id)
            if pipe is None:
                self.ack(event.stream_id, event.flow_controlled_length)
            else:
                pipe.on_data(event.data, event.flow_controlled_length)
        elif isinstance(event, h2.events.RequestReceived):
            pipe = self._on_request(event.stream_id, event.headers) if self._on_request else None
            if pipe is None:
                self.reset(event.stream_id, h2.errors.ErrorCodes.REFUSED_STREAM)
            else:
                self.pipes[event.stream_id] = pipe
            if event.stream_ended and pipe is not None:
                pipe.on_end()
        elif isinstance(event, h2.events.ResponseReceived):
            pipe = self.pipes.get(event.stream_id)
            if pipe is not None:
                pipe.on_headers(event.headers)
        elif isinstance(event, h2.events.StreamEnded):
            pipe = self.pipes.get(event.stream_id)
            if pipe is not None:
                pipe.on_end()
                self._forget_if_done(pipe)
        elif isinstance(event, h2.events.StreamReset):
            pipe = self._forget(event.stream_id)
            if pipe is not None:
                pipe.closed = True
                pipe.on_reset("the far end cancelled the stream")
        elif isinstance(event, h2.events.WindowUpdated):
            targets = (
                list(self.pipes.values())
                if event.stream_id == 0
                else [p for p in [self.pipes.get(event.stream_id)] if p is not None]
            )
            for pipe in targets:
                self.pump(pipe)
        elif isinstance(event, h2.events.PingAckReceived):
            self._last_pong = time.monotonic()
        elif isinstance(event, h2.events.ConnectionTerminated):
            self.close(f"the peer closed the tunnel (code {event.error_code})")

    # Outgoing.

    def open(self, pipe_factory: Callable[[int], Pipe]) -> Pipe:
        """A new stream to the agent's target (client side only); TunnelBusy when
        ``MAX_STREAMS`` are open already."""
        stream_id = self.conn.get_next_available_stream_id()
        try:
            self.conn.send_headers(stream_id, [(b":method", b"CONNECT"), (b":authority", b"agent")])
        except h2.exceptions.TooManyStreamsError:
            raise TunnelBusy(f"{MAX_STREAMS} streams are open in this tunnel") from None
        pipe = pipe_factory(stream_id)
        self.pipes[stream_id] = pipe
        self._flush_soon()
        return pipe

    def respond(self, stream_id: int, status: int, end: bool = False) -> None:
        with contextlib.suppress(h2.exceptions.StreamClosedError, KeyError):
            self.conn.send_headers(stream_id, [(b":status", str(status).encode())], end_stream=end)
        if end:
            self._forget(stream_id)
        self._flush_soon()

    def pump(self, pipe: Pipe) -> None:
        """Send what the windows allow of a pipe's pending data (and its end)."""
        sent = False
        try:
            while pipe._pending:
                chunk = pipe._pending[0]
                if len(chunk) <= SMALL_FRAME:
                    # A small write (most are) goes as it is, h2 checking the windows
                    # (which it does anyway); asking first cost as much again.
                    try:
                        self.conn.send_data(pipe.stream_id, chunk)
                    except h2.exceptions.FlowControlError:
                        pass  # the window is short: cut below
                    else:
                        pipe._pending.popleft()
                        pipe._pending_size -= len(chunk)
                        sent = True
                        continue
                window = min(
                    self.conn.local_flow_control_window(pipe.stream_id),
                    self.conn.max_outbound_frame_size,
                )
                if window <= 0:
                    break
                chunk = pipe._pending.popleft()
                if len(chunk) > window:
                    pipe._pending.appendleft(chunk[window:])
                    chunk = chunk[:window]
                pipe._pending_size -= len(chunk)
                self.conn.send_data(pipe.stream_id, chunk)
                sent = True
            if not pipe._pending and pipe._end_after_pending and not pipe.closed:
                pipe._end_after_pending = False
                self.conn.end_stream(pipe.stream_id)
                sent = True
                self._forget_if_done(pipe)
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError, KeyError):
            pipe._pending.clear()
            pipe._pending_size = 0
            return
        if sent:
            self._flush_soon()
            if not pipe._writable and pipe._pending_size <= WINDOW // 2:
                pipe._writable = True
                pipe.on_writable(True)

    def ack(self, stream_id: int, flow_length: int) -> None:
        """``flow_length`` bytes of the stream were consumed: their room in the windows
        goes back to the peer (gathered per stream up to ACK_EVERY while it lives)."""
        if flow_length <= 0 or self.closed.done():
            return
        if stream_id in self.pipes:
            flow_length += self._unacked.pop(stream_id, 0)
            if flow_length < ACK_EVERY:
                self._unacked[stream_id] = flow_length
                return
        self._acknowledge(stream_id, flow_length)

    def _acknowledge(self, stream_id: int, flow_length: int) -> None:
        with contextlib.suppress(h2.exceptions.StreamClosedError, KeyError):
            self.conn.acknowledge_received_data(flow_length, stream_id)
            self._flush_soon()

    def reset(self, stream_id: int, code: int = h2.errors.ErrorCodes.CANCEL) -> None:
        self._forget(stream_id)
        with contextlib.suppress(h2.exceptions.StreamClosedError, KeyError):
            self.conn.reset_stream(stream_id, error_code=code)
            self._flush_soon()

    def _forget_if_done(self, pipe: Pipe) -> None:
        with contextlib.suppress(KeyError):
            stream = self.conn.streams.get(pipe.stream_id)
            if stream is None or stream.closed:
                self._forget(pipe.stream_id)

    def _forget(self, stream_id: int) -> Pipe | None:
        """The stream's pipe, no longer the link's; what its reader consumed and h2 was
        not told yet goes back to the connection's window."""
        pipe = self.pipes.pop(stream_id, None)
        unacked = self._unacked.pop(stream_id, 0)
        if unacked and not self.closed.done():
            self._acknowledge(stream_id, unacked)
        return pipe

    def _flush_soon(self) -> None:
        """Send what h2 has to send once this turn of the event loop is over: all the
        frames that turn made leave together."""
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        data = self.conn.data_to_send()
        # Message boundaries mean nothing, so cut freely: a message stays well under any
        # WebSocket size limit however many streams were pumped at once.
        for start in range(0, len(data), MAX_MESSAGE):
            self._write(data[start : start + MAX_MESSAGE])

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(PING_EVERY)
            if time.monotonic() - self._last_pong > DEAD_AFTER:
                self.close(f"no heartbeat for {DEAD_AFTER:g} s")
                return
            with contextlib.suppress(h2.exceptions.ProtocolError):
                self.conn.ping(b"sandbar!")
                self._flush_soon()

    # Ending.

    def close(self, reason: str) -> None:
        """End the tunnel: every stream fails with ``reason``."""
        if self.closed.done():
            return
        self.closed.set_result(reason)
        with contextlib.suppress(h2.exceptions.ProtocolError):
            self.conn.close_connection()
            self._flush()
        pipes, self.pipes = self.pipes, {}
        for pipe in pipes.values():
            pipe.closed = True
            pipe.on_reset(reason)
        if self._heartbeats is not asyncio.current_task():
            self._heartbeats.cancel()
