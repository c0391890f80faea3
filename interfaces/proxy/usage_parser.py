"""Token usage read from an Anthropic Messages API answer: pure functions of its bytes, and
``UsageTap``, which applies them to an answer as it passes through the proxy.

A plain answer is one JSON body with ``usage``; a streamed one is a server-sent event
stream whose ``message_start`` carries the input side and whose ``message_delta`` events
carry the output tokens so far (running totals: the largest seen is kept). The parsing is
apart from the relaying so that it can be tested alone, over every way the network may
cut a stream (tests/test_usage_parser.py), and so the exchange reads as relaying.

Hand-written for speed rather than with an SSE library: the proxy sees every byte of every
answer on its event loop, so only whole lines that mention ``usage`` (two events of an
answer's dozens) are decoded as JSON, and a line is never copied twice. Whatever the tap
does costs every proxied call (bench/bench_anthropic.py: about 140 us of Sandbar's CPU a
call, all told)."""

from __future__ import annotations

import contextlib
from typing import Any

import orjson

Counts = dict[str, int]

NAMES = ("input_tokens", "output_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")
MAX_USAGE_JSON = 4 * 1024 * 1024  # a plain answer is parsed for its usage up to this size


def take(counts: Counts, usage: Any) -> None:
    """Add a ``usage`` object's counts to ``counts``: each the largest seen (counts in a
    stream are running totals); anything but a count that is a non-negative int is
    ignored."""
    if not isinstance(usage, dict):
        return
    for name in NAMES:
        value = usage.get(name)
        if isinstance(value, int) and value >= 0:
            counts[name] = max(counts.get(name, 0), value)


def event_usage(data: bytes) -> Any:
    """The ``usage`` object of one event's data (a ``message_start`` or a
    ``message_delta``), else None."""
    try:
        event = orjson.loads(data)
    except ValueError:
        return None
    if not isinstance(event, dict):
        return None
    kind = event.get("type")
    if kind == "message_start" and isinstance(event.get("message"), dict):
        return event["message"].get("usage")
    if kind == "message_delta":
        return event.get("usage")
    return None


def take_lines(counts: Counts, lines: bytes) -> None:
    """Add the usage of whole event-stream lines (``\\n``-separated, without the last
    line's end) to ``counts``."""
    if b"usage" not in lines:
        return
    for line in lines.split(b"\n"):
        if line.startswith(b"data:") and b"usage" in line:
            take(counts, event_usage(line[5:].strip()))


def stream_usage(stream: bytes) -> Counts:
    """The usage of a whole event stream, as the tap reads it in whatever pieces (a last
    line with no end is not read: it may be cut short)."""
    counts: Counts = {}
    end = stream.rfind(b"\n")
    if end >= 0:
        take_lines(counts, stream[:end])
    return counts


def body_usage(body: bytes) -> Counts:
    """The usage of a whole JSON answer (none if it is over ``MAX_USAGE_JSON``)."""
    counts: Counts = {}
    if len(body) <= MAX_USAGE_JSON:
        with contextlib.suppress(ValueError):
            answer = orjson.loads(body)
            if isinstance(answer, dict):
                take(counts, answer.get("usage"))
    return counts


class UsageTap:
    """Reads usage from an answer as it passes (``feed`` each piece, then ``finish``):
    an event stream line by line, keeping only a part line; a JSON answer whole, up to
    ``MAX_USAGE_JSON``. Anything else is not read."""

    def __init__(self, content_type: bytes) -> None:
        self.streaming = content_type.startswith(b"text/event-stream")
        self.json = content_type.startswith(b"application/json")
        self._buffer = bytearray()
        self._too_big = False
        self.counts: Counts = {}

    def feed(self, chunk: bytes) -> None:
        if self.streaming:
            self._buffer += chunk
            end = self._buffer.rfind(b"\n")
            if end < 0:
                if len(self._buffer) > MAX_USAGE_JSON:
                    self._buffer.clear()  # no line is this long: not an event stream
                return
            lines = bytes(self._buffer[:end])
            del self._buffer[: end + 1]
            if b"usage" in lines:  # (most pieces do not: no call for them)
                take_lines(self.counts, lines)
        elif self.json and not self._too_big:
            self._buffer += chunk
            if len(self._buffer) > MAX_USAGE_JSON:
                self._too_big = True
                self._buffer.clear()

    def finish(self) -> Counts:
        """The counts read (the answer has ended)."""
        if self.json and not self._too_big and self._buffer:
            for name, value in body_usage(bytes(self._buffer)).items():
                self.counts[name] = max(self.counts.get(name, 0), value)
        return self.counts
