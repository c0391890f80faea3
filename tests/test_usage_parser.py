"""The usage parser (interfaces/proxy/usage_parser.py) alone: the tokens an answer says it
used, read from its bytes however the network cuts them. No server, no database."""

from __future__ import annotations

import itertools
import json
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from interfaces.proxy.usage_parser import (
    MAX_USAGE_JSON,
    NAMES,
    UsageTap,
    body_usage,
    stream_usage,
)

# A count as an answer may give it: a real one, or something to be ignored. (Finite
# floats: json.dumps writes an infinite one as "Infinity", which is not JSON, and a
# message that is not JSON is rightly read as nothing; the garbage test covers those.)
count = st.one_of(
    st.integers(min_value=0, max_value=10**9),
    st.integers(min_value=-(2**63), max_value=-1),
    st.text(max_size=3),
    st.none(),
    st.floats(allow_nan=False, allow_infinity=False),
)
usage = st.dictionaries(st.sampled_from(NAMES), count, max_size=len(NAMES))
event = st.one_of(
    st.builds(
        lambda u: ("message_start", {"type": "message_start", "message": {"usage": u}}), usage
    ),
    st.builds(lambda u: ("message_delta", {"type": "message_delta", "usage": u}), usage),
    st.just(("ping", {"type": "ping"})),
    # Mentions usage, counts nothing.
    st.builds(
        lambda u: ("content_block_delta", {"type": "content_block_delta", "usage": u}), usage
    ),
    st.builds(
        lambda t: ("content_block_delta", {"type": "content_block_delta", "delta": {"text": t}}),
        st.sampled_from(["usage", "data: usage", '{"usage": 1}', "plain"]),
    ),
)


def expected(events: list[tuple[str, dict[str, Any]]]) -> dict[str, int]:
    """What the answer used: per count, the largest valid one of message_start and the
    message_deltas (counts in a stream are running totals)."""
    counts: dict[str, int] = {}
    for _, data in events:
        if data["type"] == "message_start":
            found = data["message"]["usage"]
        elif data["type"] == "message_delta":
            found = data["usage"]
        else:
            continue
        for name, value in found.items():
            if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
                counts[name] = max(counts.get(name, 0), value)
    return counts


def sse(events: list[tuple[str, dict[str, Any]]], newline: bytes) -> bytes:
    return b"".join(
        b"event: %s%sdata: %s%s%s"
        % (name.encode(), newline, json.dumps(data).encode(), newline, newline)
        for name, data in events
    )


def cut(data: bytes, cuts: list[int]) -> list[bytes]:
    bounds = [0, *sorted(min(c, len(data)) for c in cuts), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


@given(
    events=st.lists(event, max_size=12),
    newline=st.sampled_from([b"\n", b"\r\n"]),
    cuts=st.lists(st.integers(min_value=0, max_value=4000), max_size=20),
)
def test_a_stream_gives_its_usage_however_it_is_cut(
    events: list[tuple[str, dict[str, Any]]], newline: bytes, cuts: list[int]
) -> None:
    stream = sse(events, newline)
    assert stream_usage(stream) == expected(events)
    tap = UsageTap(b"text/event-stream; charset=utf-8")
    for piece in cut(stream, cuts):
        tap.feed(piece)
    assert tap.finish() == expected(events)


@given(data=st.binary(max_size=300), cuts=st.lists(st.integers(0, 300), max_size=10))
def test_any_bytes_as_a_stream_read_whole_or_in_pieces_agree(data: bytes, cuts: list[int]) -> None:
    """Whatever comes (garbage, half events, stray "usage"), the pieces never change the
    result, and nothing raises."""
    tap = UsageTap(b"text/event-stream")
    for piece in cut(data, cuts):
        tap.feed(piece)
    assert tap.finish() == stream_usage(data)


def test_a_stream_cut_before_its_last_line_ends_does_not_read_that_line() -> None:
    line = b'data: {"type": "message_delta", "usage": {"output_tokens": 5}}'
    assert stream_usage(line) == {}
    assert stream_usage(line + b"\n") == {"output_tokens": 5}
    tap = UsageTap(b"text/event-stream")
    tap.feed(line)
    assert tap.finish() == {}


@given(
    found=usage,
    extra=st.dictionaries(st.text(max_size=5), st.integers(), max_size=3),
    cuts=st.lists(st.integers(0, 2000), max_size=10),
)
def test_a_json_answer_gives_its_usage_however_it_is_cut(
    found: dict[str, Any], extra: dict[str, int], cuts: list[int]
) -> None:
    body = json.dumps({**extra, "type": "message", "usage": found}).encode()
    want = expected([("message_start", {"type": "message_start", "message": {"usage": found}})])
    assert body_usage(body) == want
    tap = UsageTap(b"application/json")
    for piece in cut(body, cuts):
        tap.feed(piece)
    assert tap.finish() == want


def test_a_json_answer_over_the_limit_is_not_read() -> None:
    body = b'{"usage": {"input_tokens": 3}, "pad": "' + b"x" * MAX_USAGE_JSON + b'"}'
    assert body_usage(body) == {}
    tap = UsageTap(b"application/json")
    for piece in cut(body, list(range(0, len(body), 65536))):
        tap.feed(piece)
    assert tap.finish() == {}


def test_what_is_neither_json_nor_an_event_stream_is_not_read() -> None:
    for content_type in (b"", b"text/plain", b"text/html"):
        tap = UsageTap(content_type)
        tap.feed(b'{"usage": {"input_tokens": 3}}\n')
        tap.feed(b'data: {"type": "message_delta", "usage": {"output_tokens": 4}}\n')
        assert tap.finish() == {}


def test_a_json_answer_that_is_not_an_object_or_not_json_gives_nothing() -> None:
    for body in (b"[1, 2]", b'"usage"', b"{", b"", b'{"usage": [1]}'):
        assert body_usage(body) == {}
