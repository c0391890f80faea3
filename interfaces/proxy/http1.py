"""HTTP/1.1 framing, written once for every part of Sandbar that speaks it by hand (the
front's answers, the API's, the proxies' requests to agents and to the Anthropic API)."""

from __future__ import annotations

import http

Headers = list[tuple[bytes, bytes]]

LAST_CHUNK = b"0\r\n\r\n"
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_STATUS_LINES = {
    s.value: b"HTTP/1.1 %d %s\r\n" % (s.value, s.phrase.encode()) for s in http.HTTPStatus
}


def status_line(status: int) -> bytes:
    return _STATUS_LINES.get(status) or b"HTTP/1.1 %d \r\n" % status


def response_head(status: int, *header_lists: Headers) -> bytes:
    """The status line and every header of ``header_lists``, in order, and the blank line."""
    parts = [status_line(status)]
    for headers in header_lists:
        for name, value in headers:
            parts += [name, b": ", value, b"\r\n"]
    parts.append(b"\r\n")
    return b"".join(parts)


def request_head(method: bytes, target: bytes, headers: Headers) -> bytes:
    parts = [method, b" ", target, b" HTTP/1.1\r\n"]
    for name, value in headers:
        parts += [name, b": ", value, b"\r\n"]
    parts.append(b"\r\n")
    return b"".join(parts)


def chunk(data: bytes) -> bytes:
    """One chunk of a chunked body (never the last: that is ``LAST_CHUNK``)."""
    return b"%x\r\n%b\r\n" % (len(data), data)
