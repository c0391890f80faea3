"""What crosses the proxy in each direction, header by header.

Toward the agent: hop-by-hop headers (RFC 9110 7.6.1, and any the client's ``Connection``
names) go, as do Sandbar's own cookies and credentials and any forwarding headers the
client made up; the agent's own credential and fresh ``X-Forwarded-*`` are added. Toward
the browser: hop-by-hop headers go, and a cookie the agent sets stays on its own host
(no ``Domain``) and may not take one of Sandbar's names, read as a browser reads it
(RFC 6265bis 5.7: a pair without a name is sent as its bare value, so ``=sandbar_session=x``
would reach the API as ``sandbar_session=x``). ``Connection`` never names away a message's
framing (``Content-Length``) or ``Host``: only true hop-by-hop headers go with it."""

from __future__ import annotations

import re

HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)
# Never forwarded to the agent: Sandbar's credentials, and what only we may say.
_DROPPED = HOP_BY_HOP | {
    b"close",  # (not a header: a Connection token, listed so the common case adds none)
    b"authorization",
    b"expect",
    b"forwarded",
    b"x-forwarded-for",
    b"x-forwarded-proto",
    b"x-forwarded-host",
    b"x-forwarded-port",
    b"x-real-ip",
}
_HOP_BY_HOP_AND_CLOSE = HOP_BY_HOP | {b"close"}
# What a Connection header cannot take away (RFC 9110 7.6.1: it names hop-by-hop fields).
_NOT_HOP_BY_HOP = frozenset({b"content-length", b"host"})
OWN_COOKIE_PREFIX = b"sandbar_"
# A Set-Cookie string with one of these (controls but HTAB) is ignored by browsers.
_COOKIE_CTL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
_UPGRADE = [(b"connection", b"upgrade"), (b"upgrade", b"websocket")]

Headers = list[tuple[bytes, bytes]]
# Each name's first value, made as the head is parsed: a lookup instead of a scan.
Index = dict[bytes, bytes]


def _drop(base: frozenset[bytes], headers: Headers) -> frozenset[bytes]:
    """``base``, plus any header the message's ``Connection`` names (usually none but
    hop-by-hop ones already in ``base``, so no new set is made)."""
    named = _named_by_connection(headers)
    return base if named <= base else base | named


def _named_by_connection(headers: Headers) -> frozenset[bytes]:
    names = [v for n, v in headers if n == b"connection"]
    if not names:
        return frozenset()
    named = frozenset(t.strip().lower() for v in names for t in v.split(b",") if t.strip())
    return named - _NOT_HOP_BY_HOP


def is_own_cookie(name: bytes) -> bool:
    """Whether a cookie of this name is (or would be read as) one of Sandbar's: any
    case, behind any ``__Host-``/``__Secure-`` style prefix (over https Sandbar's own
    are named "__Host-sandbar_...": see gate.grant_cookie_name)."""
    name = name.strip().lower()
    while name.startswith(b"__"):  # __host-, __secure-, __host-http-, ...
        dash = name.find(b"-")
        if dash < 0:
            break
        name = name[dash + 1 :]
    return name.startswith(OWN_COOKIE_PREFIX)


def strip_own_cookies(value: bytes) -> bytes:
    """A ``Cookie`` header without Sandbar's cookies."""
    kept = [c for c in value.split(b";") if not is_own_cookie(c.partition(b"=")[0])]
    return b";".join(kept).strip()


def cookie(headers: Headers, name: bytes) -> str | None:
    prefix = name + b"="
    for n, v in headers:
        if n == b"cookie":
            for part in v.split(b";"):
                part = part.strip()
                if part.startswith(prefix):
                    return part[len(prefix) :].decode("latin-1")
    return None


def bearer(index: Index) -> bytes | None:
    """The token of an ``Authorization: Bearer`` header, if there is one."""
    auth = index.get(b"authorization")
    if auth and auth[:7].lower() == b"bearer ":
        return auth[7:].strip()
    return None


def header(headers: Headers, name: bytes) -> bytes | None:
    for n, v in headers:
        if n == name:
            return v
    return None


def to_agent(
    headers: Headers,
    index: Index,
    *,
    credential: tuple[bytes, bytes],
    client: bytes,
    proto: bytes,
    host: bytes,
    upgrade: bool = False,
    trusted: bool = False,
) -> Headers:
    """The request headers the agent sees. A WebSocket handshake keeps its own
    (``Sec-WebSocket-*``, ``Origin``) and asks the agent to upgrade. The forwarding
    headers of a ``trusted`` client (Sandbar's own front proxy) are kept and extended;
    anyone else's are replaced."""
    if trusted:
        forwarded = index.get(b"x-forwarded-for")
        client = forwarded + b", " + client if forwarded else client
        proto = index.get(b"x-forwarded-proto") or proto
        host = index.get(b"x-forwarded-host") or host
    drop = _drop(_DROPPED, headers) if b"connection" in index else _DROPPED
    out: Headers = []
    for name, value in headers:
        if name in drop:
            continue
        if name == b"cookie":
            value = strip_own_cookies(value)
            if not value:
                continue
        out.append((name, value))
    out.append(credential)
    if upgrade:
        out += _UPGRADE
    out.append((b"x-forwarded-for", client))
    out.append((b"x-forwarded-proto", proto))
    out.append((b"x-forwarded-host", host))
    return out


def _host_only(set_cookie: bytes) -> bytes | None:
    """A ``Set-Cookie`` value pinned to the agent's own host, or None to drop it: parsed
    as RFC 6265bis 5.7 says browsers parse it, its ``Domain`` attributes (the only one
    that widens where it goes) removed however they are spelled."""
    if _COOKIE_CTL.search(set_cookie):
        return None  # (a browser ignores it whole)
    pair, _, attributes = set_cookie.partition(b";")
    name, equals, _ = pair.partition(b"=")
    if not equals or not name.strip() or is_own_cookie(name):
        return None  # nameless: a browser would send its value as a name=value of its own
    if not attributes:
        return set_cookie
    kept = [a for a in attributes.split(b";") if a.partition(b"=")[0].strip().lower() != b"domain"]
    return b";".join([pair, *kept])


def to_browser(headers: Headers, index: Index, upgrade: bool = False) -> Headers:
    """The response headers the browser sees (an accepted upgrade says so again)."""
    drop = _HOP_BY_HOP_AND_CLOSE
    if b"connection" in index:
        drop = _drop(drop, headers)
    out: Headers = list(_UPGRADE) if upgrade else []
    for name, value in headers:
        if name in drop:
            continue
        if name == b"set-cookie":
            pinned = _host_only(value)
            if pinned is None:
                continue
            value = pinned
        out.append((name, value))
    return out
