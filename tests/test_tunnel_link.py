"""The tunnel's framing (HTTP/2 streams in WebSocket messages), as properties: whatever
the payloads and however the byte stream is cut into messages, every stream's bytes
arrive whole and in order both ways; and bytes that are not the protocol close the tunnel
with a reason instead of raising."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Awaitable, Callable

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from interfaces.tunnel.link import (
    CALM_BURST,
    CONTINUATION,
    DATA,
    FRAMES_PER_TURN,
    HEADERS,
    RST_STREAM,
    WINDOW,
    Heartbeat,
    Link,
    Pipe,
    frame_head,
    window_update,
)


class Collect(Pipe):
    """Keeps what arrives; acknowledges it at once or only when told (a slow reader)."""

    def __init__(self, link: Link, stream_id: int, echo: bool = False) -> None:
        super().__init__(link, stream_id)
        self.received = bytearray()
        self.ended = asyncio.get_running_loop().create_future()
        self.echo = echo
        if echo:  # the agent's side answers the CONNECT first, as a real agent does
            link.respond(stream_id, 200)

    def on_data(self, data: bytes, flow_length: int) -> None:
        self.received += data
        if self.echo:
            self.write(data)
        self.ack(flow_length)

    def on_end(self) -> None:
        if self.echo:
            self.end()
        if not self.ended.done():
            self.ended.set_result(None)

    def on_reset(self, reason: str) -> None:
        if not self.ended.done():
            self.ended.set_exception(ConnectionError(reason))
            self.ended.exception()  # not every test awaits it: no "never retrieved" noise


def cutter(cuts: list[int]) -> Callable[[bytes], list[bytes]]:
    """Cut each message at the given proportions (as a WebSocket may deliver it)."""

    def cut(data: bytes) -> list[bytes]:
        points = sorted({min(len(data), c % (len(data) + 1)) for c in cuts})
        pieces, start = [], 0
        for p in [*points, len(data)]:
            if p > start:
                pieces.append(data[start:p])
                start = p
        return pieces

    return cut


def later(receive: Callable[[], Callable[[bytes], None]], cut: Callable[[bytes], list[bytes]]):
    """A link's ``write`` into the other link: delivered on a later turn of the loop, as
    a socket would, cut into pieces."""
    loop = asyncio.get_running_loop()

    def write(data: bytes) -> None:
        for piece in cut(data):
            loop.call_soon(lambda piece=piece: receive()(piece))

    return write


def whole(data: bytes) -> list[bytes]:
    return [data]


async def echo_pair(cut: Callable[[bytes], list[bytes]]) -> tuple[Link, Link]:
    server: Link | None = None
    client: Link | None = None
    to_agent = later(lambda: server.receive, cut)  # type: ignore[union-attr]
    to_sandbar = later(lambda: client.receive, cut)  # type: ignore[union-attr]

    client = Link(to_agent, client_side=True)
    server = Link(
        to_sandbar,
        client_side=False,
        on_request=lambda stream_id, _: Collect(server, stream_id, echo=True),  # type: ignore[arg-type]
    )
    return client, server


@st.composite
def payload(draw: st.DrawFn, most: int) -> bytes:
    """Bytes of any length up to ``most`` (the lengths that matter are large: a frame,
    a window and more, which ``st.binary`` alone almost never draws), of random content
    with a drawn pattern repeated to length."""
    size = draw(st.one_of(st.integers(0, 100), st.integers(0, most)))
    pattern = draw(st.binary(min_size=1, max_size=64))
    return (pattern * (size // len(pattern) + 1))[:size]


payloads = st.lists(payload(3 * WINDOW), min_size=1, max_size=4)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(payloads=payloads, cuts=st.lists(st.integers(min_value=0, max_value=10**6), max_size=6))
def test_every_stream_arrives_whole_both_ways(payloads: list[bytes], cuts: list[int]) -> None:
    async def run() -> None:
        client, server = await echo_pair(cutter(cuts))
        pipes = []
        for payload in payloads:
            pipe = client.open(lambda stream_id: Collect(client, stream_id))
            assert isinstance(pipe, Collect)
            # Written in pieces, as a proxy writes what it reads.
            for i in range(0, len(payload), 9_000):
                pipe.write(payload[i : i + 9_000])
            pipe.end()
            pipes.append(pipe)
        await asyncio.wait_for(asyncio.gather(*(p.ended for p in pipes)), 20)
        for pipe, payload in zip(pipes, payloads, strict=True):
            assert bytes(pipe.received) == payload
        client.close("done")
        server.close("done")

    asyncio.run(run())


def test_a_slow_reader_holds_back_its_stream_only() -> None:
    """A stream whose reader takes nothing stops at its window; another stream flows."""

    async def run() -> None:
        class Lazy(Collect):
            def on_data(self, data: bytes, flow_length: int) -> None:
                self.received += data  # never acknowledged: the window stays used

        server: Link | None = None
        client: Link | None = None
        lazy: list[Lazy] = []
        others: list[Collect] = []

        to_agent = later(lambda: server.receive, whole)  # type: ignore[union-attr]
        to_sandbar = later(lambda: client.receive, whole)  # type: ignore[union-attr]

        stalled = 24  # more windows than the old 16 MiB connection window held

        def accept(stream_id: int) -> Pipe:
            assert server is not None
            if len(lazy) < stalled:
                lazy.append(Lazy(server, stream_id))
                return lazy[-1]
            others.append(Collect(server, stream_id))
            return others[-1]

        client = Link(to_agent, client_side=True)
        server = Link(to_sandbar, client_side=False, on_request=lambda sid, _: accept(sid))
        await asyncio.sleep(0.05)  # settings exchanged
        slows = [client.open(lambda sid: Collect(client, sid)) for _ in range(stalled)]
        for slow in slows:
            slow.write(b"s" * (2 * WINDOW))
        await asyncio.sleep(0.2)
        fast = client.open(lambda sid: Collect(client, sid))
        fast.write(b"f" * (2 * WINDOW))
        fast.end()
        await asyncio.sleep(0.1)
        await asyncio.wait_for(others[0].ended, 10)  # the other stream went through whole
        assert bytes(others[0].received) == b"f" * (2 * WINDOW)
        for stalled_pipe, slow in zip(lazy, slows, strict=True):
            assert len(stalled_pipe.received) <= WINDOW  # held at its window, nothing lost
            assert slow.pending >= WINDOW  # the rest waits on the sending side
        client.close("done")
        server.close("done")

    asyncio.run(run())


@settings(max_examples=60, deadline=None)
@given(garbage=st.binary(min_size=1, max_size=2_000))
def test_bytes_that_are_not_the_protocol_close_the_tunnel_with_a_reason(garbage: bytes) -> None:
    async def run() -> None:
        sent: list[bytes] = []

        def send(data: bytes) -> None:
            sent.append(data)

        server = Link(send, client_side=False, on_request=lambda *_: None)
        server.receive(garbage)  # must not raise
        if server.closed.done():
            assert "protocol" in server.closed.result()
        server.close("done")

    asyncio.run(run())


def test_many_busy_streams_never_make_an_oversized_message() -> None:
    """32 downloads at once, each more than its window: the bytes queued for the
    WebSocket go out in messages of at most MAX_MESSAGE (a receiver caps message size:
    uvicorn at 16 MiB), and every stream arrives whole."""

    async def run() -> None:
        sizes: list[int] = []
        server: Link | None = None
        client: Link | None = None

        to_agent = later(lambda: server.receive, whole)  # type: ignore[union-attr]
        deliver = later(lambda: client.receive, whole)  # type: ignore[union-attr]

        def to_sandbar(data: bytes) -> None:
            sizes.append(len(data))
            deliver(data)

        def serve(stream_id: int) -> Pipe:
            assert server is not None
            pipe = Collect(server, stream_id, echo=False)
            server.respond(stream_id, 200)
            pipe.write(b"d" * (2 * WINDOW))
            pipe.end()
            return pipe

        client = Link(to_agent, client_side=True)
        server = Link(to_sandbar, client_side=False, on_request=lambda sid, _: serve(sid))
        await asyncio.sleep(0.05)
        readers = [client.open(lambda sid: Collect(client, sid)) for _ in range(32)]
        for reader in readers:
            reader.end()
        await asyncio.wait_for(asyncio.gather(*(r.ended for r in readers)), 30)
        assert all(len(r.received) == 2 * WINDOW for r in readers)
        assert max(sizes) <= 1024 * 1024  # (uvicorn refuses messages over 16 MiB)
        assert sum(sizes) > 32 * 2 * WINDOW
        client.close("done")
        server.close("done")

    asyncio.run(run())


class PlainPeer:
    """The other end played by h2 itself, untouched: it checks every window and frame
    the link sends, pads what it sends when told, and echoes what it receives."""

    def __init__(self, client_side: bool, padding: int = 0) -> None:
        config = h2.config.H2Configuration(client_side=client_side, header_encoding=None)
        self.conn = h2.connection.H2Connection(config=config)
        self.conn.initiate_connection()
        self.padding = padding
        self.link: Link | None = None
        self.received: dict[int, bytearray] = {}
        self.ended: set[int] = set()
        self.pending: dict[int, bytearray] = {}
        # What h2 refused of the link's frames, or the GOAWAY's code: ends a wait at once.
        self.failed: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    async def wait(self, *waits: Awaitable[object], timeout: float = 20) -> None:
        """Wait for ``waits``; fail with h2's complaint as soon as it has one."""
        everything = asyncio.ensure_future(asyncio.gather(*waits))
        done, _ = await asyncio.wait(
            [everything, self.failed], timeout=timeout, return_when=asyncio.FIRST_COMPLETED
        )
        assert not self.failed.done(), self.failed.result()
        assert everything in done, "timed out"
        everything.result()

    def receive(self, data: bytes) -> None:
        try:
            events = self.conn.receive_data(data)
        except h2.exceptions.ProtocolError as e:
            if not self.failed.done():
                self.failed.set_result(f"h2 refused the link's frames: {e!r}")
            return
        for event in events:
            if isinstance(event, h2.events.ConnectionTerminated) and not self.failed.done():
                self.failed.set_result(f"GOAWAY {event.error_code!r}")
            if isinstance(event, h2.events.RequestReceived):
                self.conn.send_headers(event.stream_id, [(b":status", b"200")])
                self.received[event.stream_id] = bytearray()
            elif isinstance(event, h2.events.ResponseReceived):
                self.received.setdefault(event.stream_id, bytearray())
            elif isinstance(event, h2.events.DataReceived):
                self.received[event.stream_id] += event.data
                self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                if not self.conn.config.client_side:
                    self.pending.setdefault(event.stream_id, bytearray()).extend(event.data)
            elif isinstance(event, h2.events.StreamEnded):
                self.ended.add(event.stream_id)
        self.send_pending()

    def send_pending(self) -> None:
        for stream_id, data in list(self.pending.items()):
            while data:
                room = min(self.conn.local_flow_control_window(stream_id), 8_000)
                if room <= self.padding:
                    break
                size = min(room - self.padding, len(data))
                self.conn.send_data(stream_id, bytes(data[:size]), pad_length=self.padding or None)
                del data[:size]
            if not data and stream_id in self.ended:
                self.conn.end_stream(stream_id)
                del self.pending[stream_id]
        self.flush()

    def flush(self) -> None:
        out = self.conn.data_to_send()
        if out and self.link is not None:
            asyncio.get_running_loop().call_soon(self.link.receive, out)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    payloads=st.lists(payload(300_000), min_size=1, max_size=4),
    padding=st.integers(min_value=0, max_value=255),
)
def test_the_link_speaks_http2_with_h2_itself(payloads: list[bytes], padding: int) -> None:
    """Sandbar's end against an agent that is plain h2 (padding its DATA frames, checking
    every window and frame; it keeps HTTP/2's default 64 KiB window and 16 KiB frames,
    which the link's own end raises): each stream echoes whole, written in pieces larger
    than a frame, over several of those windows."""

    async def run() -> None:
        loop = asyncio.get_running_loop()
        agent = PlainPeer(client_side=False, padding=padding)
        link = Link(lambda data: loop.call_soon(agent.receive, data), client_side=True)
        agent.link = link
        agent.flush()
        pipes = []
        for payload in payloads:
            pipe = link.open(lambda stream_id: Collect(link, stream_id))
            for i in range(0, len(payload), 50_000):
                pipe.write(payload[i : i + 50_000])
            pipe.end()
            pipes.append(pipe)
        await agent.wait(*(p.ended for p in pipes))
        for pipe, payload in zip(pipes, payloads, strict=True):
            assert bytes(pipe.received) == payload
            assert bytes(agent.received[pipe.stream_id]) == payload
        assert not link.closed.done()
        link.close("done")

    asyncio.run(run())


def test_h2_itself_speaks_with_the_agents_end() -> None:
    """The agent's end against a Sandbar that is plain h2: streams echo whole."""

    async def run() -> None:
        loop = asyncio.get_running_loop()
        sandbar = PlainPeer(client_side=True)
        agent = Link(
            lambda data: loop.call_soon(sandbar.receive, data),
            client_side=False,
            on_request=lambda stream_id, _: Collect(agent, stream_id, echo=True),
        )
        sandbar.link = agent
        payload = bytes(range(256)) * 9_000  # more than two windows
        stream_id = sandbar.conn.get_next_available_stream_id()
        sandbar.conn.send_headers(stream_id, [(b":method", b"CONNECT"), (b":authority", b"a")])
        sandbar.pending[stream_id] = bytearray(payload)
        sandbar.ended.add(stream_id)  # (so that send_pending ends the stream after it)
        sandbar.send_pending()
        for _ in range(2000):
            await asyncio.sleep(0.002)
            sandbar.send_pending()
            if len(sandbar.received.get(stream_id, b"")) == len(payload):
                break
        assert bytes(sandbar.received[stream_id]) == payload
        assert not agent.closed.done()
        agent.close("done")

    asyncio.run(run())


def test_a_peer_that_overruns_a_window_closes_the_tunnel() -> None:
    """DATA beyond what the link's windows allow: the tunnel closes with the reason and
    a GOAWAY that says FLOW_CONTROL_ERROR (the memory a stream may hold stays bounded by
    its window)."""

    async def run() -> None:
        agent, link = await plain_agent()

        class Lazy(Collect):
            def on_data(self, data: bytes, flow_length: int) -> None:
                self.received += data  # never acknowledged

        pipe = link.open(lambda stream_id: Lazy(link, stream_id))
        await asyncio.sleep(0.05)  # the answer's HEADERS came
        chunk = b"x" * 60_000
        for _ in range(WINDOW // len(chunk) + 2):  # past the stream's window, unasked
            link.receive(frame_head(len(chunk), DATA, 0, pipe.stream_id) + chunk)
        assert link.closed.done()
        assert "window" in link.closed.result()
        assert len(pipe.received) <= WINDOW
        assert await goaway(agent) == h2.errors.ErrorCodes.FLOW_CONTROL_ERROR

    asyncio.run(run())


async def plain_agent() -> tuple[PlainPeer, Link]:
    """Sandbar's end and a plain h2 agent, SETTINGS exchanged."""
    loop = asyncio.get_running_loop()
    agent = PlainPeer(client_side=False)
    link = Link(lambda data: loop.call_soon(agent.receive, data), client_side=True)
    agent.link = link
    agent.flush()
    await asyncio.sleep(0.05)
    return agent, link


async def goaway(agent: PlainPeer) -> h2.errors.ErrorCodes:
    """The error code of the GOAWAY the agent got."""
    reason = await asyncio.wait_for(agent.failed, 5)
    assert reason.startswith("GOAWAY"), reason
    return next(code for code in h2.errors.ErrorCodes if repr(code) in reason)


@settings(max_examples=30, deadline=None)
@given(stream_id=st.integers(min_value=0, max_value=5), zero=st.booleans())
def test_a_bad_window_update_closes_the_tunnel(stream_id: int, zero: bool) -> None:
    """A WINDOW_UPDATE of 0 (PROTOCOL_ERROR), or one past 2^31-1 (FLOW_CONTROL_ERROR), for
    the connection or an open stream; or any for a stream never opened (PROTOCOL_ERROR):
    the tunnel closes with a reason, and its GOAWAY says which (RFC 9113, 5.1 and 6.9).
    One for a stream that was open and is closed now is ignored (it crossed the end)."""

    async def run() -> None:
        agent, link = await plain_agent()
        pipe = link.open(lambda sid: Collect(link, sid))  # stream 1
        closed = link.open(lambda sid: Collect(link, sid))  # stream 3, then reset
        await asyncio.sleep(0.05)
        closed.reset()
        await asyncio.sleep(0.05)
        link.receive(window_update(stream_id, 0 if zero else 2**31 - 1))
        if stream_id == closed.stream_id and not zero:
            assert not link.closed.done()
            link.receive(window_update(pipe.stream_id, 1))  # (still usable)
            assert not link.closed.done()
            link.close("done")
            return
        assert link.closed.done()
        assert "protocol" in link.closed.result()
        code = await goaway(agent)
        if stream_id in (0, pipe.stream_id) and not zero:
            assert code == h2.errors.ErrorCodes.FLOW_CONTROL_ERROR
        else:
            assert code == h2.errors.ErrorCodes.PROTOCOL_ERROR

    asyncio.run(run())


def test_a_settings_change_past_the_largest_window_closes_the_tunnel() -> None:
    """A new INITIAL_WINDOW_SIZE that takes an open stream's window past 2^31-1 is a
    FLOW_CONTROL_ERROR (RFC 9113, 6.9.2), which h2 cannot see here: the link keeps the
    windows."""

    async def run() -> None:
        agent, link = await plain_agent()
        link.open(lambda sid: Collect(link, sid))
        await asyncio.sleep(0.05)
        agent.conn.increment_flow_control_window(2**31 - 1 - 65_535, stream_id=1)
        agent.flush()  # the stream's window is as large as can be
        await asyncio.sleep(0.05)
        assert not link.closed.done()
        # A SETTINGS frame h2 would not send (its own window would pass the limit).
        setting = struct.pack(">HI", h2.settings.SettingCodes.INITIAL_WINDOW_SIZE, 65_536)
        link.receive(frame_head(len(setting), 0x4, 0, 0) + setting)
        assert await goaway(agent) == h2.errors.ErrorCodes.FLOW_CONTROL_ERROR
        assert "past 2^31-1" in link.closed.result()

    asyncio.run(run())


@settings(max_examples=20, deadline=None)
@given(kind=st.sampled_from([DATA, 0x8]), stream_id=st.sampled_from([0, 1]))
def test_data_or_window_updates_out_of_place_close_the_tunnel(kind: int, stream_id: int) -> None:
    """DATA or WINDOW_UPDATE before the peer's first SETTINGS, or between a HEADERS
    without END_HEADERS and its CONTINUATION, is a protocol error (RFC 9113, 3.4 and
    6.10), even though h2 never sees those frames."""

    async def run() -> None:
        sent: list[bytes] = []
        agent = Link(sent.append, client_side=False, on_request=lambda *_: None)
        body = window_update(0, 1)[9:] if kind == 0x8 else b"x"
        frame = frame_head(len(body), kind, 0, stream_id) + body
        preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
        agent.receive(preface + frame)  # instead of the SETTINGS
        assert agent.closed.done() and "protocol" in agent.closed.result()

        sandbar = PlainPeer(client_side=True)
        agent = Link(
            lambda data: asyncio.get_running_loop().call_soon(sandbar.receive, data),
            client_side=False,
            on_request=lambda sid, _: Collect(agent, sid, echo=True),
        )
        sandbar.link = agent
        sandbar.flush()
        await asyncio.sleep(0.05)
        # A HEADERS frame without END_HEADERS (an empty block fragment is enough to
        # open it), then the frame, then the CONTINUATION.
        agent.receive(frame_head(0, HEADERS, 0, 1) + frame + frame_head(0, CONTINUATION, 0x4, 1))
        assert agent.closed.done() and "protocol" in agent.closed.result()
        assert await goaway(sandbar) == h2.errors.ErrorCodes.PROTOCOL_ERROR

    asyncio.run(run())


def test_a_turn_of_the_loop_reads_a_bounded_number_of_frames() -> None:
    """One message of tiny DATA frames (a 4 MiB message holds 400k of them, each work
    for the proxy): a turn of the event loop reads FRAMES_PER_TURN of them and says the
    rest waits (the socket's reading pauses); later turns read the rest, in order, and
    say when nothing waits. Other tunnels and connections get their turns between."""

    async def run() -> None:
        loop = asyncio.get_running_loop()
        agent = PlainPeer(client_side=False)
        backlog: list[bool] = []
        link = Link(
            lambda data: loop.call_soon(agent.receive, data),
            client_side=True,
            on_backlog=backlog.append,
        )
        agent.link = link
        agent.flush()
        await asyncio.sleep(0.05)
        pipe = link.open(lambda sid: Collect(link, sid))
        await asyncio.sleep(0.05)  # the answer's HEADERS came
        count = FRAMES_PER_TURN * 10
        payload = bytes(i % 251 for i in range(count))
        link.receive(b"".join(frame_head(1, DATA, 0, pipe.stream_id) + bytes([b]) for b in payload))
        assert len(pipe.received) == FRAMES_PER_TURN and backlog == [True]

        async def all_read() -> None:
            while len(pipe.received) < count:
                await asyncio.sleep(0)

        await asyncio.wait_for(all_read(), 10)
        assert bytes(pipe.received) == payload and backlog == [True, False]
        assert not link.closed.done()
        link.close("done")

    asyncio.run(run())


def test_frames_that_cross_a_streams_end_are_not_control_frames() -> None:
    """A WINDOW_UPDATE or RST_STREAM of the peer's that crosses a stream's end, and DATA
    already on its way when this end cancelled a stream, are expected: more of them than
    the budget of control frames allows at once leave the tunnel up. The same frames
    again for those streams are control frames: past the budget, ENHANCE_YOUR_CALM."""

    async def run() -> None:
        agent, link = await plain_agent()
        loop = asyncio.get_running_loop()
        for i in range(2 * CALM_BURST):
            pipe = link.open(lambda sid: Collect(link, sid))
            while not pipe.heard:  # the agent's answer
                await asyncio.sleep(0)
            if i % 2:  # cancelled here, while the agent sends
                pipe.reset()
                link.receive(frame_head(1, DATA, 0, pipe.stream_id) + b"x")
            else:  # ended both ways
                pipe.end()
                deadline = loop.time() + 5
                while pipe.stream_id in link.pipes:
                    assert loop.time() < deadline
                    await asyncio.sleep(0)
            link.receive(window_update(pipe.stream_id, 65_536))
            link.receive(frame_head(4, RST_STREAM, 0, pipe.stream_id) + bytes(4))
        assert not link.closed.done(), link.closed.result()
        for _ in range(CALM_BURST):
            link.receive(window_update(pipe.stream_id, 65_536))
        assert "too many control frames" in link.closed.result()
        assert await goaway(agent) == h2.errors.ErrorCodes.ENHANCE_YOUR_CALM

    asyncio.run(run())


def test_a_link_finds_by_its_heartbeat_a_peer_that_stopped_answering() -> None:
    """A peer that answers PINGs keeps the link up through many heartbeats; once it stops
    answering, the link ends after ``dead_after``. Each end is given its heartbeat (the
    settings, the agent's environment), so that this takes a fraction of a second."""

    async def run() -> None:
        loop = asyncio.get_running_loop()
        heartbeat = Heartbeat(every=0.05, dead_after=0.2)
        pings, silent, answered = 0, False, asyncio.Event()
        agent: Link | None = None

        def to_agent(data: bytes) -> None:
            nonlocal pings
            pings += data.count(b"sandbar!")  # (the PINGs' payload)
            if pings >= 4 * heartbeat.dead_after / heartbeat.every:
                answered.set()
            if not silent:
                loop.call_soon(agent.receive, data)  # type: ignore[union-attr]

        link = Link(to_agent, client_side=True, heartbeat=heartbeat)
        agent = Link(lambda data: loop.call_soon(link.receive, data), client_side=False)
        await asyncio.wait_for(answered.wait(), 30)
        assert not link.closed.done(), link.closed.result()  # four times dead_after, answered
        silent = True
        assert await asyncio.wait_for(link.closed, 30) == "no heartbeat for 0.2 s"
        agent.close("done")

    asyncio.run(run())


def test_a_heartbeat_that_cannot_work_is_refused() -> None:
    for every, dead_after in [(0.0, 1.0), (-1.0, 1.0), (2.0, 1.0), (float("nan"), 1.0)]:
        with pytest.raises(ValueError, match="heartbeat"):
            Heartbeat(every, dead_after)
