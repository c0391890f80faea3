"""The internals of dependencies that Sandbar relies on, each checked on the real library.

Sandbar reaches past some libraries' documented surface: its front is a uvicorn protocol
class reading uvicorn's config and server state; its event store overrides eventsourcing's
recorder steps; the tunnel agent subclasses websockets' asyncio client and the tunnel
server its Sans-I/O protocol; the proxies drive httptools' parsers. pyproject.toml bounds
these versions, and the lock file pins them; when a bound is lifted, a test here fails,
naming the library and what changed, rather than the product breaking quietly."""

from __future__ import annotations

import asyncio
import functools
import inspect
import re
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar
from uuid import UUID, uuid4

import httptools
import psycopg
import pytest
import uvicorn
from eventsourcing.application import Application, ProcessingEvent
from eventsourcing.domain import Aggregate, event
from eventsourcing.persistence import Recording, StoredEvent, Tracking
from eventsourcing.postgres import (
    PostgresApplicationRecorder,
    PostgresDatastore,
    PostgresTrackingRecorder,
)
from psycopg.conninfo import conninfo_to_dict
from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.http11 import Request
from websockets.protocol import State
from websockets.server import ServerProtocol
from websockets.uri import parse_uri

from interfaces.proxy.front import FrontProtocol
from interfaces.tunnel.agent import TunnelClient

WAIT = 10.0  # seconds: the most any step here waits for the other side


def changed(library: str, what: str) -> str:
    return f"{library} changed: {what}; Sandbar depends on it (see this test's docstring)"


# uvicorn: interfaces/cli/main.py hands uvicorn a protocol factory (`http=`), and
# interfaces/proxy/front.py and api_exchange.py read what uvicorn passes it.


@dataclass
class Seen:
    """What uvicorn gave the protocol factory, and asked of the connection."""

    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    default_headers: Any = None
    shut_down: bool = False
    connections_after: int = -1


class Probe(asyncio.Protocol):
    """A protocol built as FrontProtocol is: joins uvicorn's connections and leaves them on
    ``shutdown``, as uvicorn's graceful shutdown asks."""

    def __init__(self, *args: Any, seen: Seen, made: asyncio.Future[None], **kwargs: Any) -> None:
        seen.args, seen.kwargs = args, kwargs
        self.seen = seen
        self.made = made
        self.state: Any = kwargs["server_state"]
        self.transport: asyncio.BaseTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.state.connections.add(self)
        self.made.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        self.state.connections.discard(self)

    def shutdown(self) -> None:
        self.seen.shut_down = True
        self.seen.default_headers = list(self.state.default_headers)
        assert self.transport is not None
        self.transport.close()


async def _app(scope: Any, receive: Any, send: Any) -> None:
    """An ASGI application that is never called (the probe answers nothing)."""


async def _serve_one_connection(seen: Seen) -> uvicorn.Config:
    made: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    config = uvicorn.Config(  # as interfaces/cli/main.py makes it
        _app,
        http=functools.partial(Probe, seen=seen, made=made),  # type: ignore[arg-type]
        log_level="warning",
        proxy_headers=False,
        server_header=False,
        lifespan="off",
    )
    server = uvicorn.Server(config)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    _, writer = await asyncio.open_connection(*sock.getsockname())
    try:
        await asyncio.wait_for(asyncio.shield(made), WAIT)
        server.should_exit = True
        await asyncio.wait_for(serving, WAIT)
        seen.connections_after = len(server.server_state.connections)
    finally:
        writer.close()
        sock.close()
    return config


@pytest.fixture(scope="module")
def uvicorn_run() -> tuple[uvicorn.Config, Seen]:
    """A real uvicorn server, given a protocol factory, served one connection and shut
    down gracefully."""
    seen = Seen()
    try:
        config = asyncio.run(_serve_one_connection(seen))
    except Exception as e:
        pytest.fail(changed("uvicorn", f"serving with a protocol factory failed: {e!r}"))
    return config, seen


def test_uvicorn_takes_a_protocol_factory_as_http(uvicorn_run: tuple[uvicorn.Config, Seen]) -> None:
    config, seen = uvicorn_run
    assert isinstance(config.http_protocol_class, functools.partial), changed(
        "uvicorn", "Config(http=<callable>) no longer uses the callable as the protocol class"
    )
    assert seen.kwargs, changed("uvicorn", "the http= protocol factory was never called")
    assert "sockets" in inspect.signature(uvicorn.Server.run).parameters, changed(
        "uvicorn", "Server.run() takes no sockets= (interfaces/cli/main.py listens itself)"
    )


def test_uvicorn_calls_the_factory_as_front_protocol_takes_it(
    uvicorn_run: tuple[uvicorn.Config, Seen],
) -> None:
    _, seen = uvicorn_run
    assert {"config", "server_state", "app_state"} <= set(seen.kwargs), changed(
        "uvicorn", f"the protocol factory is called with {sorted(seen.kwargs)}"
    )
    try:
        inspect.signature(FrontProtocol).bind(*seen.args, **seen.kwargs, proxy=None)
    except TypeError as e:
        pytest.fail(changed("uvicorn", f"FrontProtocol cannot take the factory's arguments: {e}"))
    assert isinstance(seen.kwargs["app_state"], dict), changed("uvicorn", "app_state")


def test_uvicorn_config_has_what_the_front_reads(uvicorn_run: tuple[uvicorn.Config, Seen]) -> None:
    config = uvicorn_run[1].kwargs["config"]
    assert callable(getattr(config, "loaded_app", None)), changed(
        "uvicorn", "Config.loaded_app (the ASGI application api_exchange.py calls)"
    )
    assert isinstance(getattr(config, "root_path", None), str), changed(
        "uvicorn", "Config.root_path (put in every API request's scope)"
    )
    keep_alive = getattr(config, "timeout_keep_alive", None)
    assert isinstance(keep_alive, int | float) and keep_alive > 0, changed(
        "uvicorn", "Config.timeout_keep_alive (the front's idle timeout)"
    )


def test_uvicorn_server_state_has_connections_and_tasks(
    uvicorn_run: tuple[uvicorn.Config, Seen],
) -> None:
    state = uvicorn_run[1].kwargs["server_state"]
    assert isinstance(getattr(state, "connections", None), set), changed(
        "uvicorn", "server_state.connections (the front and tunnels join it)"
    )
    assert isinstance(getattr(state, "tasks", None), set), changed(
        "uvicorn", "server_state.tasks (the API exchanges' tasks, awaited at shutdown)"
    )


def test_uvicorn_default_headers_carry_the_date(uvicorn_run: tuple[uvicorn.Config, Seen]) -> None:
    headers = uvicorn_run[1].default_headers
    assert isinstance(headers, list), changed("uvicorn", "server_state.default_headers")
    assert all(isinstance(n, bytes) and isinstance(v, bytes) for n, v in headers), changed(
        "uvicorn", f"server_state.default_headers holds {headers!r}, not (bytes, bytes) pairs"
    )
    assert b"date" in {n for n, _ in headers}, changed(
        "uvicorn", "server_state.default_headers no longer carries the Date header"
    )


def test_uvicorn_shutdown_asks_each_connection_to_shut_down(
    uvicorn_run: tuple[uvicorn.Config, Seen],
) -> None:
    seen = uvicorn_run[1]
    assert seen.shut_down, changed(
        "uvicorn", "a graceful shutdown no longer calls shutdown() on server_state.connections"
    )
    assert seen.connections_after == 0, changed("uvicorn", "connections left after shutdown")


# eventsourcing: application/eventlog.py overrides Application._record, and
# infrastructure/eventstore.py re-does PostgresApplicationRecorder.insert_events with its
# private steps; projections/view.py extends PostgresTrackingRecorder.


@pytest.fixture(scope="module")
def database(make_database: Callable[[], str]) -> str:
    return make_database()


def _settings(url: str) -> dict[str, str]:
    info = conninfo_to_dict(url)
    return {
        "POSTGRES_DBNAME": str(info.get("dbname")),
        "POSTGRES_HOST": str(info.get("host") or "127.0.0.1"),
        "POSTGRES_PORT": str(info.get("port") or "5432"),
        "POSTGRES_USER": str(info.get("user") or "postgres"),
        "POSTGRES_PASSWORD": str(info.get("password") or ""),
    }


@pytest.fixture(scope="module")
def datastore(database: str) -> Iterator[PostgresDatastore]:
    s = _settings(database)
    store = PostgresDatastore(
        s["POSTGRES_DBNAME"],
        s["POSTGRES_HOST"],
        s["POSTGRES_PORT"],
        s["POSTGRES_USER"],
        s["POSTGRES_PASSWORD"],
    )
    yield store
    store.close()


class Thing(Aggregate):
    @event("Made")
    def __init__(self, name: str) -> None:
        self.name = name


class KwargsRecorder(PostgresApplicationRecorder):
    """Chosen by APPLICATION_RECORDER_TOPIC, as ProjectingRecorder is."""

    calls: ClassVar[list[dict[str, Any]]] = []

    def insert_events(self, stored_events: Any, **kwargs: Any) -> Any:
        KwargsRecorder.calls.append(kwargs)
        return super().insert_events(stored_events, **kwargs)


class ProbeLog(Application[UUID]):
    name = "Probe"
    recorded: ClassVar[list[ProcessingEvent[UUID]]] = []

    def _record(self, processing_event: ProcessingEvent[UUID]) -> list[Recording[UUID]]:
        ProbeLog.recorded.append(processing_event)
        processing_event.saved_kwargs["projected_events"] = processing_event.events
        return super()._record(processing_event)


def test_eventsourcing_record_hands_its_kwargs_to_the_recorder(database: str) -> None:
    env = {
        **_settings(database),
        "PERSISTENCE_MODULE": "eventsourcing.postgres",
        "APPLICATION_RECORDER_TOPIC": f"{__name__}:KwargsRecorder",
        "CREATE_TABLE": "y",
    }
    app = ProbeLog(env=env)
    try:
        assert isinstance(app.recorder, KwargsRecorder), changed(
            "eventsourcing", "APPLICATION_RECORDER_TOPIC no longer picks the recorder class"
        )
        thing = Thing("one")
        app.save(thing, checks=["a check"])
    finally:
        app.close()
    assert ProbeLog.recorded, changed("eventsourcing", "Application.save no longer calls _record")
    processing = ProbeLog.recorded[-1]
    assert [e.originator_id for e in processing.events] == [thing.id], changed(
        "eventsourcing", "ProcessingEvent.events no longer holds the saved domain events"
    )
    kwargs = KwargsRecorder.calls[-1]
    assert kwargs.get("checks") == ["a check"], changed(
        "eventsourcing", "save(**kwargs) no longer reaches the recorder's insert_events"
    )
    assert kwargs.get("projected_events") == processing.events, changed(
        "eventsourcing", "_record's saved_kwargs no longer reach the recorder's insert_events"
    )


def test_eventsourcing_insert_events_has_the_steps_the_event_store_reproduces() -> None:
    source = inspect.getsource(PostgresApplicationRecorder.insert_events)
    steps = set(re.findall(r"self\.(_[a-z_]+)\(", source))
    expected = {"_insert_events", "_insert_stored_events", "_fetch_ids_after_insert_events"}
    assert steps == expected, changed(
        "eventsourcing",
        f"PostgresApplicationRecorder.insert_events now calls {sorted(steps)}, which"
        " infrastructure/eventstore.py's ProjectingRecorder.insert_events re-does",
    )
    assert "pass" in inspect.getsource(PostgresApplicationRecorder._insert_events), changed(
        "eventsourcing", "PostgresApplicationRecorder._insert_events (skipped by ours) does work"
    )
    db_functions = inspect.signature(PostgresDatastore).parameters["enable_db_functions"]
    assert db_functions.default is False, changed(
        "eventsourcing", "database functions (a path ProjectingRecorder has not) are the default"
    )


def test_eventsourcing_insert_stored_events_locks_notifies_and_gives_ids(
    database: str, datastore: PostgresDatastore
) -> None:
    recorder = PostgresApplicationRecorder(datastore, events_table_name="probe_events")
    recorder.create_table()
    events = [StoredEvent(uuid4(), 1, "probe", b"{}"), StoredEvent(uuid4(), 1, "probe", b"{}")]
    with psycopg.connect(database, autocommit=True) as watcher:
        watcher.execute(f'LISTEN "{recorder.channel_name}"')
        with (  # as ProjectingRecorder.insert_events calls them
            datastore.get_connection() as conn,
            conn.pipeline() as pipeline,
            conn.transaction(),
            conn.cursor() as curs,
        ):
            recorder._insert_stored_events(curs, events)
            pipeline.sync()
            ids = recorder._fetch_ids_after_insert_events(curs, events)
            locks = watcher.execute(
                "SELECT l.mode FROM pg_locks l JOIN pg_class c ON c.oid = l.relation"
                " WHERE c.relname = %s AND l.pid = %s",
                (recorder.events_table_name, conn.info.backend_pid),
            ).fetchall()
        heard = list(watcher.notifies(timeout=WAIT, stop_after=1))
    assert len(ids or ()) == 2 and all(isinstance(i, int) for i in ids or ()), changed(
        "eventsourcing", f"_fetch_ids_after_insert_events gave {ids!r}"
    )
    assert ("ExclusiveLock",) in locks, changed(
        "eventsourcing",
        "_insert_stored_events no longer locks the events table (saves and views rely on"
        " that lock to apply in log order)",
    )
    assert heard, changed("eventsourcing", "_insert_stored_events no longer NOTIFYs")
    assert datastore.schema == "public", changed("eventsourcing", "PostgresDatastore.schema")


def test_eventsourcing_tracking_recorder_internals(datastore: PostgresDatastore) -> None:
    recorder = PostgresTrackingRecorder(datastore, tracking_table_name="probe_tracking")
    assert isinstance(recorder.sql_create_statements, list), changed(
        "eventsourcing", "PostgresRecorder.sql_create_statements (the read model adds to it)"
    )
    recorder.create_table()
    with datastore.transaction(commit=True) as curs:
        recorder._insert_tracking(curs, Tracking("Probe", 5))
        # projections/view.py advances the tracking row with this statement.
        curs.execute(
            "INSERT INTO probe_tracking (application_name, notification_id) VALUES (%s, %s)"
            " ON CONFLICT (application_name) DO UPDATE SET notification_id ="
            " GREATEST(probe_tracking.notification_id, EXCLUDED.notification_id)",
            ("Probe", 7),
        )
        latest = recorder._max_tracking_id("Probe", curs)
    assert latest == 7, changed(
        "eventsourcing", f"the single-row tracking table or _max_tracking_id (gave {latest!r})"
    )


# websockets: interfaces/tunnel/agent.py's TunnelClient subclasses the asyncio client;
# interfaces/tunnel/server.py subclasses the Sans-I/O ServerProtocol.


class _Link:
    """The few calls TunnelClient makes on a tunnel link."""

    def __init__(self) -> None:
        self.received: asyncio.Queue[bytes] = asyncio.Queue()
        self.closed: list[str] = []

    def receive(self, data: bytes) -> None:
        self.received.put_nowait(data)

    def close(self, reason: str) -> None:
        self.closed.append(reason)


async def _echo_once(ws: ServerConnection) -> None:
    await ws.send(await ws.recv())  # the tunnel's messages are binary: echoed as such
    await ws.close()


async def _talk_through_tunnel_client() -> tuple[TunnelClient, bytes, bool]:
    async with serve(_echo_once, "127.0.0.1", 0, compression=None) as server:
        port = server.sockets[0].getsockname()[1]
        client = await connect(  # with the arguments interfaces/tunnel/agent.py passes
            f"ws://127.0.0.1:{port}/",
            additional_headers={"Authorization": "Bearer probe"},
            max_size=None,
            compression=None,
            ping_interval=None,
            open_timeout=WAIT,
            close_timeout=2.0,
            create_connection=TunnelClient,
        )
        assert isinstance(client, TunnelClient)
        link = _Link()
        client.attach(link)  # type: ignore[arg-type]
        client.hold_reading(True)
        client.hold_reading(False)
        client.write(b"ping through")
        echoed = await asyncio.wait_for(link.received.get(), WAIT)
        await asyncio.wait_for(client.ended, WAIT)
        paused = client.paused
        client.transport.abort()
        return client, echoed, isinstance(paused, bool)


def test_websockets_client_connection_as_the_tunnel_agent_extends_it() -> None:
    try:
        client, echoed, paused_is_bool = asyncio.run(_talk_through_tunnel_client())
    except (AttributeError, TypeError) as e:
        pytest.fail(changed("websockets", f"ClientConnection, as TunnelClient uses it: {e!r}"))
    assert issubclass(TunnelClient, ClientConnection)
    assert echoed == b"ping through", changed(
        "websockets",
        "ClientConnection.process_event no longer sees each data frame, or protocol."
        "send_binary with send_data() no longer sends one",
    )
    assert paused_is_bool, changed("websockets", "ClientConnection.paused")
    assert client.response is not None, changed("websockets", "ClientConnection.response")


class _NoPongs(ServerProtocol):
    """As interfaces/tunnel/server.py's _AgentSide: a frame not handed on is dropped."""

    seen: list[Opcode]

    def recv_frame(self, frame: Frame) -> None:
        self.seen.append(frame.opcode)
        if frame.opcode is not Opcode.PING:
            super().recv_frame(frame)


def test_websockets_server_protocol_frames_pass_through_recv_frame() -> None:
    server = _NoPongs(max_size=1024)
    server.seen = []
    client = ClientProtocol(parse_uri("ws://probe/"))
    client.send_request(client.connect())
    server.receive_data(b"".join(client.data_to_send()))
    [request] = server.events_received()
    assert isinstance(request, Request)
    server.send_response(server.accept(request))
    client.receive_data(b"".join(server.data_to_send()))
    client.events_received()
    assert server.state is State.OPEN and client.state is State.OPEN

    client.send_ping(b"p")
    client.send_binary(b"data")
    server.receive_data(b"".join(client.data_to_send()))
    events = server.events_received()
    assert server.seen == [Opcode.PING, Opcode.BINARY], changed(
        "websockets", "ServerProtocol no longer passes every frame through recv_frame"
    )
    assert [getattr(e, "opcode", e) for e in events] == [Opcode.BINARY], changed(
        "websockets", "a frame that recv_frame did not hand on is delivered all the same"
    )
    assert server.data_to_send() == [], changed(
        "websockets", "a PING that recv_frame did not hand on is answered all the same"
    )
    for name in ("close_expected", "receive_eof", "reject", "send_close"):
        assert callable(getattr(server, name, None)), changed("websockets", f"{name}()")


# httptools: interfaces/proxy/front.py and upstream.py drive its parsers.


class _Callbacks:
    def __init__(self) -> None:
        self.calls: list[Any] = []
        self.parser: Any = None
        self.at_head: tuple[Any, ...] = ()

    def on_message_begin(self) -> None:
        self.calls.append("begin")

    def on_url(self, url: bytes) -> None:
        self.calls.append(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self.calls.append((name, value))

    def on_headers_complete(self) -> None:
        p = self.parser
        if isinstance(p, httptools.HttpRequestParser):
            self.at_head = (p.get_http_version(), p.get_method(), p.should_keep_alive())
        else:
            self.at_head = (p.get_status_code(), p.should_keep_alive())
        self.at_head += (p.should_upgrade(),)

    def on_body(self, body: bytes) -> None:
        self.calls.append(body)

    def on_message_complete(self) -> None:
        self.calls.append("complete")


def test_httptools_request_parser_calls_back_and_answers() -> None:
    callbacks = _Callbacks()
    callbacks.parser = parser = httptools.HttpRequestParser(callbacks)
    parser.feed_data(b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nhi")
    expected = ["begin", b"/x", (b"Host", b"a"), (b"Content-Length", b"2"), b"hi", "complete"]
    assert callbacks.calls == expected, changed(
        "httptools", f"HttpRequestParser's callbacks: {callbacks.calls!r}"
    )
    assert callbacks.at_head == ("1.1", b"POST", True, False), changed(
        "httptools", f"HttpRequestParser's getters gave {callbacks.at_head!r}"
    )


def test_httptools_upgrade_gives_the_offset_of_what_follows() -> None:
    request = b"GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
    callbacks = _Callbacks()
    callbacks.parser = parser = httptools.HttpRequestParser(callbacks)
    with pytest.raises(httptools.HttpParserUpgrade) as raised:
        parser.feed_data(request + b"after")
    assert (request + b"after")[raised.value.args[0] :] == b"after", changed(
        "httptools", "HttpParserUpgrade.args[0] is not the offset past the head"
    )
    assert callbacks.at_head[-1] is True, changed("httptools", "should_upgrade()")

    answer = (
        b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
    )
    callbacks = _Callbacks()
    callbacks.parser = answers = httptools.HttpResponseParser(callbacks)
    with pytest.raises(httptools.HttpParserUpgrade) as raised:
        answers.feed_data(answer + b"after")
    assert (answer + b"after")[raised.value.args[0] :] == b"after", changed(
        "httptools", "HttpResponseParser's HttpParserUpgrade.args[0]"
    )
    assert callbacks.at_head[0] == 101, changed("httptools", "get_status_code()")


class _Refused(Exception):
    pass


class _Refusing(_Callbacks):
    def on_header(self, name: bytes, value: bytes) -> None:
        raise _Refused(431)


def test_httptools_error_carries_a_callbacks_exception_as_its_context() -> None:
    parser = httptools.HttpRequestParser(_Refusing())
    with pytest.raises(httptools.HttpParserError) as raised:
        parser.feed_data(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    assert isinstance(raised.value.__context__, _Refused), changed(
        "httptools", "an exception raised in a callback is no longer the error's __context__"
    )
    with pytest.raises(httptools.HttpParserError):
        httptools.HttpRequestParser(_Callbacks()).feed_data(b"NOT HTTP AT ALL\r\n\r\n")


# pytest: tests/conftest.py finds each test's tier through the fixtures pytest resolved.


def test_pytest_items_carry_the_fixtures_they_use(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    info = getattr(request.node, "_fixtureinfo", None)
    defs = getattr(info, "name2fixturedefs", None)
    assert defs is not None and "tmp_path" in defs, changed(
        "pytest", "Item._fixtureinfo.name2fixturedefs (tests/conftest.py's tiers read it)"
    )
    assert callable(defs["tmp_path"][-1].func), changed("pytest", "FixtureDef.func")
    assert request.node.get_closest_marker("unit"), "tests/conftest.py gave this test no tier"
