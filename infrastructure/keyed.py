"""Keyed digests: what Sandbar stores in place of a token, code or ticket. An HMAC under
the server key, so a copy of the database yields nothing to try offline."""

from __future__ import annotations

import hashlib
import hmac


def keyed_digest(key: bytes, value: str, purpose: bytes = b"") -> bytes:
    """HMAC-SHA256 of ``purpose + value``; the purpose keeps digests of different kinds
    of secret apart."""
    return hmac.new(key, purpose + value.encode(), hashlib.sha256).digest()
