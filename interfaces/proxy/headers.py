"""What crosses the proxy in each direction, header by header.

Toward the agent: hop-by-hop headers (RFC 9110 7.6.1, and any the client's ``Connection``
names) go, as do Sandbar's own cookies and credentials and any forwarding headers the
client made up; the agent's own credential and fresh ``X-Forwarded-*`` are added. Toward
the browser: hop-by-hop headers go, and a cookie the agent sets stays on its own host
(no ``Domain``) and may not take one of Sandbar's names."""

from __future__ import annotations

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
OWN_COOKIE_PREFIX = b"sandbar_"
# Over https Sandbar's cookies are named "__Host-sandbar_..." (see gate.grant_cookie_name).
_OWN_COOKIES = (OWN_COOKIE_PREFIX, b"__host-" + OWN_COOKIE_PREFIX, b"__secure-" + OWN_COOKIE_PREFIX)
_UPGRADE = [(b"connection", b"upgrade"), (b"upgrade", b"websocket")]

Headers = list[tuple[bytes, bytes]]


def _drop(base: frozenset[bytes], headers: Headers) -> frozenset[bytes]:
    """``base``, plus any header the message's ``Connection`` names (usually none but
    hop-by-hop ones already in ``base``, so no new set is made)."""
    named = _named_by_connection(headers)
    return base if named <= base else base | named


def _named_by_connection(headers: Headers) -> frozenset[bytes]:
    names = [v for n, v in headers if n == b"connection"]
    if not names:
        return frozenset()
    return frozenset(t.strip().lower() for v in names for t in v.split(b",") if t.strip())


def strip_own_cookies(value: bytes) -> bytes:
    """A ``Cookie`` header without Sandbar's cookies."""
    kept = [c for c in value.split(b";") if not c.strip().lower().startswith(_OWN_COOKIES)]
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


def bearer(headers: Headers) -> bytes | None:
    """The token of an ``Authorization: Bearer`` header, if there is one."""
    auth = header(headers, b"authorization")
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
        forwarded = header(headers, b"x-forwarded-for")
        client = forwarded + b", " + client if forwarded else client
        proto = header(headers, b"x-forwarded-proto") or proto
        host = header(headers, b"x-forwarded-host") or host
    drop = _drop(_DROPPED, headers)
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
    """A ``Set-Cookie`` value pinned to the agent's own host, or None to drop it."""
    name = set_cookie.split(b"=", 1)[0].strip()
    if name.lower().startswith(_OWN_COOKIES):
        return None
    parts = [p for p in set_cookie.split(b";") if not p.strip().lower().startswith(b"domain=")]
    return b";".join(parts)


def to_browser(headers: Headers, upgrade: bool = False) -> Headers:
    """The response headers the browser sees (an accepted upgrade says so again)."""
    drop = _drop(_HOP_BY_HOP_AND_CLOSE, headers)
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
