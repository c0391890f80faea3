"""The tunnel's framing (HTTP/2 streams in WebSocket messages), as properties: whatever
the payloads and however the byte stream is cut into messages, every stream's bytes
arrive whole and in order both ways; and bytes that are not the protocol close the tunnel
with a reason instead of raising."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from interfaces.tunnel.link import WINDOW, Link, Pipe


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


payloads = st.lists(st.binary(min_size=0, max_size=70_000), min_size=1, max_size=8)


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
