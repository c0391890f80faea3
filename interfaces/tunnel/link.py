"""One tunnel: an HTTP/2 connection carried in the binary messages of one WebSocket,
between Sandbar (the HTTP/2 client) and an agent (the server).

Every stream is a ``CONNECT`` to the agent's local target, so a stream is a byte pipe,
like a TCP connection: Sandbar's proxy writes HTTP/1.1 into it and reads the answer back
exactly as it does with a container (headers byte for byte, bodies, SSE, WebSocket
upgrades). HTTP/2 brings what the tunnel needs and a home-made protocol would have to
reinvent: many streams at once, per-stream flow control (a slow browser fills its own
stream's window and stops only that stream; nothing is ever dropped), RST_STREAM to
cancel a stream at the far end, and PING for heartbeats. docs/tunnel.md describes the
wire format.

The ``h2`` state machine keeps the connection: the preface and SETTINGS, streams opening
and closing (HEADERS, END_STREAM, RST_STREAM, the stream limit), PING and GOAWAY, and
every check that goes with them. DATA and WINDOW_UPDATE frames, nearly all a tunnel
carries, are read and written here instead, in HTTP/2's format (RFC 9113, 6.1 and 6.9):
h2 handles each frame through several layers of objects, which cost a small request
more than everything else between the browser and the agent's server. So the windows
are kept here, and the sizes of the frames sent follow the peer's SETTINGS. h2 sees a
zero-length DATA frame where a stream's DATA ends it, or where DATA comes for a stream
that is not (or no longer) one to read, so that its streams' states stay exact and it
judges what that DATA means; and a WINDOW_UPDATE for a stream that is not open (closed
or idle: h2 tells which). Nothing else of the data.

The agent at the far end may be hostile (it runs on a member's machine), and every
tunnel shares one event loop with everyone else's: frames that carry nothing a stream
needs (PING, SETTINGS, RST_STREAM, WINDOW_UPDATE that opens no sent data's room, empty
DATA, DATA for a stream that is gone, PRIORITY, unknown types...) are counted, and past
a budget per second the tunnel ends with GOAWAY ENHANCE_YOUR_CALM, as HTTP/2 servers do
against rapid reset; pushes are disabled (a PUSH_PROMISE ends the tunnel); and a turn
of the loop reads at most ``FRAMES_PER_TURN`` frames of a tunnel (the rest waits for the
next turn, the socket's reading paused meanwhile), so that tiny frames cannot hold the
loop for long."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings

log = logging.getLogger(__name__)

WINDOW = 1024 * 1024  # per stream: what may be in flight before the reader takes it
MAX_STREAMS = 256  # so at most MAX_STREAMS * WINDOW (256 MiB) waits for slow readers
# The connection's window is the largest HTTP/2 allows, far above MAX_STREAMS * WINDOW:
# streams whose readers stall can never use it up and hold back the others.
MAX_WINDOW = 2**31 - 1  # the largest window HTTP/2 allows
CONNECTION_WINDOW = MAX_WINDOW
MAX_FRAME = 64 * 1024  # the largest frame this end accepts (its SETTINGS ask for it)
MAX_MESSAGE = 1024 * 1024  # bytes per WebSocket message
# A WINDOW_UPDATE goes back for a stream once half its window is passed on (as h2 does),
# for the connection once this much is.
CONNECTION_ACK = 64 * 1024 * 1024
PING_EVERY = 5.0  # seconds (the default: see Heartbeat)
DEAD_AFTER = 15.0  # seconds without a ping answered: the link is dead (the default)
# Frames that carry nothing a stream needs, per tunnel: this many at once, refilled at
# CALM_RATE a second (a well-behaved peer sends a handful a minute).
CALM_BURST = 1000
CALM_RATE = 200.0
FRAMES_PER_TURN = 512  # read per turn of the event loop; the rest on the next one
MAX_DRAINING = 4 * MAX_STREAMS  # streams reset here whose in-flight frames are expected

# A frame's header (RFC 9113, 4.1): 24-bit length and 8-bit type, flags, stream id.
_HEAD = struct.Struct(">IBI")
_INCREMENT = struct.Struct(">I")
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"  # the client's, before its first frame
DATA, HEADERS, RST_STREAM, PUSH_PROMISE, GOAWAY = 0x0, 0x1, 0x3, 0x5, 0x7
WINDOW_UPDATE, CONTINUATION = 0x8, 0x9
END_STREAM, END_HEADERS, PADDED = 0x1, 0x4, 0x8


def frame_head(length: int, kind: int, flags: int, stream_id: int) -> bytes:
    return _HEAD.pack(length << 8 | kind, flags, stream_id)


def window_update(stream_id: int, increment: int) -> bytes:
    return frame_head(4, WINDOW_UPDATE, 0, stream_id) + _INCREMENT.pack(increment)


class Broken(Exception):
    """The peer broke the protocol (a window overrun, say): the tunnel ends, and the
    GOAWAY says ``code`` (RFC 9113, 7)."""

    def __init__(self, reason: str, code: int = h2.errors.ErrorCodes.PROTOCOL_ERROR) -> None:
        super().__init__(reason)
        self.code = code


FLOW_CONTROL_ERROR = h2.errors.ErrorCodes.FLOW_CONTROL_ERROR
ENHANCE_YOUR_CALM = h2.errors.ErrorCodes.ENHANCE_YOUR_CALM
SMALLEST_UPDATE = 1024  # a WINDOW_UPDATE smaller than this is counted as control


class Calm:
    """A token bucket of control frames: ``burst`` at once, refilled at ``rate`` a
    second. ``spend`` says whether one more is within the budget."""

    def __init__(self, rate: float = CALM_RATE, burst: int = CALM_BURST) -> None:
        self._rate = rate
        self._burst = float(burst)
        self._tokens = float(burst)
        self._at = time.monotonic()

    def spend(self) -> bool:
        now = time.monotonic()
        self._tokens = min(self._burst, self._tokens + (now - self._at) * self._rate)
        self._at = now
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True


@dataclass(frozen=True)
class Heartbeat:
    """How often a link PINGs its peer (``every`` seconds), and how long it goes without
    an answer before it calls the link dead (``dead_after``): no TCP error says that a
    machine stopped answering. Each end keeps its own, set where the link is made
    (Sandbar's settings, the agent's environment), so that tests can take seconds."""

    every: float = PING_EVERY
    dead_after: float = DEAD_AFTER

    def __post_init__(self) -> None:
        if not 0 < self.every <= self.dead_after:
            raise ValueError(
                f"a tunnel's heartbeat needs 0 < ping every ({self.every:g} s)"
                f" <= dead after ({self.dead_after:g} s)"
            )


DEFAULT_HEARTBEAT = Heartbeat()


class TunnelBusy(Exception):
    """No stream can be opened now (the tunnel's limit is reached)."""


class Pipe:
    """One stream's end. Subclasses say what to do with what arrives."""

    def __init__(self, link: Link, stream_id: int) -> None:
        self.link = link
        self.stream_id = stream_id
        self._pending: deque[bytes | memoryview] = deque()  # written, waiting for window
        self._pending_size = 0
        self._end_after_pending = False
        self._writable = True  # as last told with on_writable
        self.closed = False  # reset, or gone with the link
        # The link's bookkeeping of this stream.
        self.send_window = link.peer_initial_window
        self.receive_window = WINDOW  # what the peer may still send (at most)
        self.consumed = 0  # passed on, not yet given back with a WINDOW_UPDATE
        self.heard = False  # the far end's HEADERS came: DATA may follow
        self.far_ended = False
        self.near_ended = False  # END_STREAM sent

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
        if self.closed or self._end_after_pending or not data:
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
    (a transport's write, say: what it holds is bounded by the streams' windows, and
    nothing is pumped while ``pause_output`` holds it). ``on_backlog(True)`` says that
    frames wait for a later turn (stop reading the socket), ``on_backlog(False)`` that
    they are read (read on). It PINGs the peer as ``heartbeat`` says, and ends once the
    peer stops answering."""

    def __init__(
        self,
        write: Callable[[bytes], None],
        *,
        client_side: bool,
        on_request: Callable[[int, list[tuple[bytes, bytes]]], Pipe | None] | None = None,
        on_backlog: Callable[[bool], None] | None = None,
        heartbeat: Heartbeat = DEFAULT_HEARTBEAT,
    ) -> None:
        config = h2.config.H2Configuration(client_side=client_side, header_encoding=None)
        self.conn = h2.connection.H2Connection(config=config)
        self.conn.initiate_connection()
        # Sent as a change, so each applies when the peer acknowledges it.
        self.conn.update_settings(
            {
                h2.settings.SettingCodes.ENABLE_PUSH: 0,
                h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: WINDOW,
                h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: MAX_STREAMS,
                h2.settings.SettingCodes.MAX_FRAME_SIZE: MAX_FRAME,
            }
        )
        self.conn.increment_flow_control_window(CONNECTION_WINDOW - 65535)
        self._write = write
        self._on_request = on_request
        self._on_backlog = on_backlog
        self._client_side = client_side
        self.pipes: dict[int, Pipe] = {}
        # The windows, kept here rather than in h2 (see the module's docstring).
        self.peer_initial_window = self.conn.remote_settings.initial_window_size
        self._max_frame = self.conn.max_outbound_frame_size  # the peer's, 16 KiB at first
        self._send_window = 65535  # the connection's, as the peer opens it
        # Until the peer's first SETTINGS, and inside a header block (HEADERS or
        # PUSH_PROMISE to its END_HEADERS), no DATA or WINDOW_UPDATE may come.
        self._settled = False
        self._in_block = False
        self._receive_window = CONNECTION_WINDOW
        self._consumed = 0  # passed on (or dropped), not yet given back to the connection
        self._preface = 0 if client_side else len(PREFACE)
        self._partial = b""  # the start of a frame the next message completes
        # Messages (and where to go on in each) not read yet: more than a turn's frames.
        self._inbox: deque[tuple[bytes, int]] = deque()
        self._turn_scheduled = False
        self._backlogged = False  # as last told with on_backlog
        self._calm = Calm()
        # Streams reset here: the room the peer may still fill with DATA already on its
        # way (no control frame), and those whose HEADERS had not come yet.
        self._draining: dict[int, int] = {}
        self._unanswered: set[int] = set()
        # Streams closed lately (in order): one WINDOW_UPDATE or RST_STREAM of the peer's
        # may cross each one's end.
        self._crossing: dict[int, None] = {}
        self._output_paused = False
        self._out: list[bytes | memoryview] = []  # frames for the next message, in order
        self._flush_scheduled = False
        self._loop = asyncio.get_running_loop()
        self.closed: asyncio.Future[str] = self._loop.create_future()
        self._heartbeat_pace = heartbeat
        self._last_pong = time.monotonic()
        self._heartbeats = self._loop.create_task(self._heartbeat())
        self._flush_soon()

    # Incoming bytes.

    def receive(self, data: bytes) -> None:
        if self.closed.done():
            return
        self._inbox.append((data, 0))
        if not self._turn_scheduled:
            self._read_turn()

    def calm(self, what: str) -> bool:
        """Count one control frame the transport saw (a WebSocket PING, say): False, and
        the tunnel ended, once the budget is spent."""
        if self.closed.done():
            return False
        if self._calm.spend():
            return True
        self.close(f"too many control frames ({what})", ENHANCE_YOUR_CALM)
        return False

    def _read_turn(self) -> None:
        """Read up to FRAMES_PER_TURN frames of what waits; the rest on a later turn."""
        self._turn_scheduled = False
        left = FRAMES_PER_TURN
        inbox = self._inbox
        try:
            while inbox and left > 0 and not self.closed.done():
                data, start = inbox.popleft()
                if self._partial:
                    data, start = self._partial + data[start:], 0
                    self._partial = b""
                stop, left = self._frames(data, start, left)
                if stop < len(data):
                    if left > 0:  # a frame the next message completes
                        self._partial = data[stop:]
                    else:
                        inbox.appendleft((data, stop))
        except h2.exceptions.ProtocolError as e:
            self.close(f"the peer broke the tunnel's protocol ({type(e).__name__}: {e})")
        except Broken as e:
            self.close(f"the peer broke the tunnel's protocol ({e})", e.code)
        if self.closed.done():
            inbox.clear()
        elif inbox:
            self._turn_scheduled = True
            self._loop.call_soon(self._read_turn)
        if self._on_backlog is not None and self._backlogged != self._turn_scheduled:
            self._backlogged = self._turn_scheduled
            self._on_backlog(self._backlogged)
        self._flush_soon()

    def _spend(self, what: str) -> None:
        if not self._calm.spend():
            raise Broken(f"too many control frames ({what})", ENHANCE_YOUR_CALM)

    def _frames(self, data: bytes, pos: int, left: int) -> tuple[int, int]:
        """Read up to ``left`` frames of ``data`` from ``pos``: DATA and WINDOW_UPDATE
        here, the rest in h2 (in runs, each given before the next frame read here, so
        that order holds); where it stopped, and how many frames it may still read."""
        given = pos  # data[:given] is read (here or by h2)
        if self._preface:  # the client's preface, for h2
            skip = min(self._preface, len(data) - pos)
            self._preface -= skip
            pos += skip
        end = len(data)
        while end - pos >= 9 and left > 0 and not self.closed.done():
            kind_length, flags, stream_id = _HEAD.unpack_from(data, pos)
            length, kind = kind_length >> 8, kind_length & 0xFF
            if length > MAX_FRAME:
                pos = end  # for h2, which refuses it
                break
            stop = pos + 9 + length
            if stop > end:
                break
            left -= 1
            stream_id &= 0x7FFFFFFF
            if (kind == DATA and stream_id) or (kind == WINDOW_UPDATE and length == 4):
                if given < pos:
                    self._to_h2(data[given:pos])
                    if self.closed.done():
                        return stop, left
                if self._in_block or not self._settled:
                    raise Broken("a frame before the peer's SETTINGS or inside a header block")
                if kind == DATA:
                    self._data(data, pos + 9, stop, flags, stream_id)
                elif stream_id:
                    self._window_update(stream_id, _INCREMENT.unpack_from(data, pos + 9)[0])
                else:
                    self._connection_window_update(_INCREMENT.unpack_from(data, pos + 9)[0])
                given = stop
            elif kind in (HEADERS, RST_STREAM):
                # Whether it is control depends on the stream's state: h2 reads what
                # came before it first.
                if given < pos:
                    self._to_h2(data[given:pos])
                    given = pos
                    if self.closed.done():
                        return stop, left
                if kind == RST_STREAM:
                    self._reset_frame(stream_id)
                else:
                    self._headers_frame(stream_id)
                    self._in_block = not flags & END_HEADERS  # (h2 checks the rest)
            elif kind == PUSH_PROMISE:
                raise Broken("a PUSH_PROMISE: pushes are disabled")
            elif kind == CONTINUATION:
                self._spend("CONTINUATION")
                self._in_block = not flags & END_HEADERS
            elif kind != GOAWAY:  # PING, SETTINGS, PRIORITY, and types h2 ignores
                self._spend(f"frames of type {kind}")
            pos = stop
        if given < pos:
            self._to_h2(data[given:pos])
        return pos, left

    def _reset_frame(self, stream_id: int) -> None:
        """An RST_STREAM is control unless it ends a stream that is open here (or one
        reset here meanwhile: the two crossed)."""
        if stream_id in self.pipes:
            return
        crossed = self._crossing.pop(stream_id, 0) is None
        if self._draining.pop(stream_id, None) is None and not crossed:
            self._spend("RST_STREAM")
        self._unanswered.discard(stream_id)

    def _headers_frame(self, stream_id: int) -> None:
        """HEADERS are control unless they answer (or open, for the agent) a stream."""
        pipe = self.pipes.get(stream_id)
        if pipe is not None:
            if pipe.heard:
                self._spend("HEADERS")
        elif stream_id in self._unanswered:
            self._unanswered.discard(stream_id)  # (crossed our reset)
        elif self._client_side or stream_id <= self.conn.highest_inbound_stream_id:
            self._spend("HEADERS")  # h2 judges it; a new request is the agent's to take

    def _to_h2(self, data: bytes) -> None:
        for event in self.conn.receive_data(data):
            self._dispatch(event)

    def _data(self, data: bytes, start: int, stop: int, flags: int, stream_id: int) -> None:
        length = stop - start
        self._receive_window -= length
        if self._receive_window < 0:
            raise Broken("DATA beyond the connection's window", FLOW_CONTROL_ERROR)
        if flags & PADDED:
            if length == 0 or data[start] >= length:
                raise Broken("a DATA frame's padding is longer than the frame")
            stop -= data[start]
            start += 1
        pipe = self.pipes.get(stream_id)
        if pipe is None or not pipe.heard or pipe.far_ended:
            # Not (or no longer) a stream to read; the room goes back.
            self._give_back(length)
            room = self._draining.get(stream_id)
            if room is not None and (length or flags & END_STREAM) and length <= room:
                # Already on its way when this end reset the stream: expected (h2 would
                # drop it too).
                if flags & END_STREAM or length == room:
                    del self._draining[stream_id]
                else:
                    self._draining[stream_id] = room - length
                return
            # Control: h2 says what it means (a reset for a closed stream, an error for
            # one never opened).
            self._spend("DATA for a stream that is not open")
            self._to_h2(frame_head(0, DATA, flags & END_STREAM, stream_id))
            return
        if start == stop and not flags & END_STREAM:
            self._spend("empty DATA")
        pipe.receive_window -= length
        if pipe.receive_window < 0:
            raise Broken(f"DATA beyond stream {stream_id}'s window", FLOW_CONTROL_ERROR)
        if flags & END_STREAM:
            pipe.far_ended = True
        if start < stop:
            pipe.on_data(data[start:stop], length)
        elif length:
            self.ack(stream_id, length)  # padding alone
        if flags & END_STREAM:
            self._to_h2(frame_head(0, DATA, END_STREAM, stream_id))

    def _window_update(self, stream_id: int, increment: int) -> None:
        increment &= 0x7FFFFFFF
        pipe = self.pipes.get(stream_id)
        if pipe is None:
            # A stream gone meanwhile (the update crossed its end: ignored), or one never
            # opened (a protocol error): h2 knows which.
            crossed = self._crossing.pop(stream_id, 0) is None
            if not crossed and stream_id not in self._draining:
                self._spend("WINDOW_UPDATE for a stream that is not open")
            self._to_h2(window_update(stream_id, increment))
            return
        if increment == 0:
            raise Broken(f"a WINDOW_UPDATE of 0 for stream {stream_id}")
        if increment < SMALLEST_UPDATE or pipe.send_window + increment > self.peer_initial_window:
            self._spend("WINDOW_UPDATE")  # (not room given back for DATA sent)
        if pipe.send_window + increment > MAX_WINDOW:
            raise Broken(f"stream {stream_id}'s window past 2^31-1", FLOW_CONTROL_ERROR)
        pipe.send_window += increment
        if pipe._pending or pipe._end_after_pending:
            self.pump(pipe)

    def _connection_window_update(self, increment: int) -> None:
        increment &= 0x7FFFFFFF
        if increment == 0:
            raise Broken("a WINDOW_UPDATE of 0 for the connection")
        if increment < CONNECTION_ACK // 64:
            self._spend("WINDOW_UPDATE")  # (far below the lumps the agent gives back)
        if self._send_window + increment > MAX_WINDOW:
            raise Broken("the connection's window past 2^31-1", FLOW_CONTROL_ERROR)
        blocked = self._send_window <= 0
        self._send_window += increment
        if blocked:
            for pipe in list(self.pipes.values()):
                if pipe._pending:
                    self.pump(pipe)

    def _dispatch(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.RequestReceived):
            pipe = self._on_request(event.stream_id, event.headers) if self._on_request else None
            if pipe is None:
                self.reset(event.stream_id, h2.errors.ErrorCodes.REFUSED_STREAM)
                return
            pipe.heard = True
            self.pipes[event.stream_id] = pipe
            if event.stream_ended:
                pipe.far_ended = True
                pipe.on_end()
        elif isinstance(event, h2.events.ResponseReceived):
            pipe = self.pipes.get(event.stream_id)
            if pipe is not None:
                pipe.heard = True
                pipe.on_headers(event.headers)
        elif isinstance(event, h2.events.StreamEnded):
            pipe = self.pipes.get(event.stream_id)
            if pipe is not None:
                pipe.far_ended = True
                pipe.on_end()
                self._forget_if_done(pipe)
        elif isinstance(event, h2.events.StreamReset):
            pipe = self._forget(event.stream_id)
            if pipe is not None:
                pipe.on_reset("the far end cancelled the stream")
        elif isinstance(event, h2.events.RemoteSettingsChanged):
            self._settled = True
            self._max_frame = self.conn.max_outbound_frame_size
            initial = self.conn.remote_settings.initial_window_size
            change, self.peer_initial_window = initial - self.peer_initial_window, initial
            for pipe in list(self.pipes.values()):
                pipe.send_window += change  # (RFC 9113, 6.9.2)
                if pipe.send_window > MAX_WINDOW:
                    raise Broken(
                        f"stream {pipe.stream_id}'s window past 2^31-1", FLOW_CONTROL_ERROR
                    )
                if change > 0 and pipe._pending:
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
        if pipe.closed or pipe.near_ended:
            pipe._pending.clear()
            pipe._pending_size = 0
            return
        if self._output_paused:
            return  # (the pipe says it is not writable once its pending passes WINDOW)
        sent = False
        while pipe._pending:
            room = min(pipe.send_window, self._send_window, self._max_frame)
            if room <= 0:
                break
            chunk = pipe._pending[0]
            size = len(chunk)
            if size > room:
                view = memoryview(chunk)
                pipe._pending[0] = view[room:]
                chunk, size = view[:room], room
            else:
                pipe._pending.popleft()
            self._send(frame_head(size, DATA, 0, pipe.stream_id), chunk)
            pipe._pending_size -= size
            pipe.send_window -= size
            self._send_window -= size
            sent = True
        if not pipe._pending and pipe._end_after_pending:
            pipe.near_ended = True
            with contextlib.suppress(h2.exceptions.StreamClosedError, KeyError):
                self.conn.end_stream(pipe.stream_id)
            self._forget_if_done(pipe)
            sent = True
        if sent:
            self._flush_soon()
            if not pipe._writable and pipe._pending_size <= WINDOW // 2:
                pipe._writable = True
                pipe.on_writable(True)

    def pause_output(self, paused: bool) -> None:
        """Hold the streams' DATA while the socket does not take more (the agent is
        not reading), and send it again once it does."""
        self._output_paused = paused
        if not paused:
            for pipe in list(self.pipes.values()):
                if pipe._pending or pipe._end_after_pending:
                    self.pump(pipe)

    def ack(self, stream_id: int, flow_length: int) -> None:
        """``flow_length`` bytes of the stream were consumed: their room in the windows
        goes back to the peer (a stream's once half its window is consumed)."""
        if flow_length <= 0 or self.closed.done():
            return
        pipe = self.pipes.get(stream_id)
        if pipe is not None and not pipe.far_ended:
            pipe.consumed += flow_length
            if pipe.consumed >= WINDOW // 2:
                pipe.receive_window += pipe.consumed
                self._send(window_update(stream_id, pipe.consumed))
                pipe.consumed = 0
        self._give_back(flow_length)

    def _give_back(self, flow_length: int) -> None:
        """Room in the connection's window, returned once there is a lump of it."""
        self._consumed += flow_length
        if self._consumed >= CONNECTION_ACK:
            self._receive_window += self._consumed
            self._send(window_update(0, self._consumed))
            self._consumed = 0

    def reset(self, stream_id: int, code: int = h2.errors.ErrorCodes.CANCEL) -> None:
        pipe = self._forget(stream_id)
        if pipe is not None and not pipe.far_ended:
            # What the peer sent before it hears of the reset is no control frame.
            self._draining[stream_id] = max(pipe.receive_window, 0)
            if not pipe.heard:
                self._unanswered.add(stream_id)
            if len(self._draining) > MAX_DRAINING:
                oldest = next(iter(self._draining))
                del self._draining[oldest]
                self._unanswered.discard(oldest)
        with contextlib.suppress(h2.exceptions.StreamClosedError, KeyError):
            self.conn.reset_stream(stream_id, error_code=code)
            self._flush_soon()

    def _forget_if_done(self, pipe: Pipe) -> None:
        with contextlib.suppress(KeyError):
            stream = self.conn.streams.get(pipe.stream_id)
            if stream is None or stream.closed:
                self._forget(pipe.stream_id)

    def _forget(self, stream_id: int) -> Pipe | None:
        """The stream's pipe, no longer the link's (and closed)."""
        pipe = self.pipes.pop(stream_id, None)
        if pipe is not None:
            pipe.closed = True
            self._crossing[stream_id] = None
            if len(self._crossing) > MAX_DRAINING:
                del self._crossing[next(iter(self._crossing))]
        return pipe

    def _send(self, *frames: bytes | memoryview) -> None:
        """Frames made here, after those h2 has made so far (the order is the wire's)."""
        earlier = self.conn.data_to_send()
        if earlier:
            self._out.append(earlier)
        self._out.extend(frames)
        self._flush_soon()

    def _flush_soon(self) -> None:
        """Send what there is to send once this turn of the event loop is over: all the
        frames that turn made leave together."""
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        earlier = self.conn.data_to_send()
        if earlier:
            self._out.append(earlier)
        if not self._out:
            return
        data = b"".join(self._out)
        self._out.clear()
        # Message boundaries mean nothing, so cut freely: a message stays well under any
        # WebSocket size limit however many streams were pumped at once.
        for start in range(0, len(data), MAX_MESSAGE):
            self._write(data[start : start + MAX_MESSAGE])

    async def _heartbeat(self) -> None:
        pace = self._heartbeat_pace
        while True:
            await asyncio.sleep(pace.every)
            if time.monotonic() - self._last_pong > pace.dead_after:
                self.close(f"no heartbeat for {pace.dead_after:g} s")
                return
            with contextlib.suppress(h2.exceptions.ProtocolError):
                self.conn.ping(b"sandbar!")
                self._flush_soon()

    # Ending.

    def close(self, reason: str, code: int = h2.errors.ErrorCodes.NO_ERROR) -> None:
        """End the tunnel: every stream fails with ``reason``; the GOAWAY says ``code``."""
        if self.closed.done():
            return
        self.closed.set_result(reason)
        with contextlib.suppress(h2.exceptions.ProtocolError):
            self.conn.close_connection(error_code=code)
            self._flush()
        pipes, self.pipes = self.pipes, {}
        for pipe in pipes.values():
            pipe.closed = True
            pipe.on_reset(reason)
        if self._heartbeats is not asyncio.current_task():
            self._heartbeats.cancel()
