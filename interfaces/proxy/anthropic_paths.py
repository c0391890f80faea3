"""Which Anthropic API calls a sandbox may make through the proxy.

Every workspace's sandboxes share Sandbar's one real key, so the proxy forwards only what
an agent needs and what is counted per workspace: the Messages API and the model list.
Anything else (files, batches, the admin API) would reach other workspaces' data, or
escape the daily limits. An operator may allow more with
``SANDBAR_ANTHROPIC_EXTRA_PATHS``: comma-separated ``METHOD /path`` entries, where a
segment ``*`` stands for one path segment (an id)."""

from __future__ import annotations

import re

DEFAULT = "POST /v1/messages, POST /v1/messages/count_tokens, GET /v1/models, GET /v1/models/*"
SETTING = "SANDBAR_ANTHROPIC_EXTRA_PATHS"
# One segment a ``*`` matches: an id, never "." or "..", never an escape.
_SEGMENT = re.compile(rb"[A-Za-z0-9][A-Za-z0-9._:@~-]{0,255}")
_ENTRY = re.compile(r"(GET|POST|PUT|PATCH|DELETE) (/[A-Za-z0-9._~*/-]*)")


class Endpoints:
    """The calls allowed: ``DEFAULT`` and the operator's ``extra``."""

    def __init__(self, extra: str = "") -> None:
        self._exact: set[tuple[bytes, bytes]] = set()
        self._patterns: list[tuple[bytes, list[bytes]]] = []
        for entry in (DEFAULT + "," + extra).split(","):
            entry = " ".join(entry.split())
            if not entry:
                continue
            match = _ENTRY.fullmatch(entry)
            segments = entry.split(" ", 1)[1].split("/")[1:]
            odd = any(s in ("", ".", "..") or ("*" in s and s != "*") for s in segments)
            if match is None or odd:
                raise ValueError(
                    f"{SETTING}: {entry!r} is not like 'POST /v1/messages/batches' "
                    "(a method, then a path; '*' for one segment)"
                )
            method, path = match.group(1).encode(), match.group(2).encode()
            if b"*" in path:
                self._patterns.append((method, path.split(b"/")))
            else:
                self._exact.add((method, path))

    def allows(self, method: bytes, target: bytes) -> bool:
        """Whether ``method`` on ``target`` (the API's path and query) may be sent on."""
        path = target.partition(b"?")[0] if b"?" in target else target
        if (method, path) in self._exact:
            return True
        if not self._patterns:
            return False
        segments = path.split(b"/")
        for allowed_method, pattern in self._patterns:
            if (
                allowed_method == method
                and len(pattern) == len(segments)
                and all(
                    p == s or (p == b"*" and _SEGMENT.fullmatch(s) is not None)
                    for p, s in zip(pattern, segments, strict=True)
                )
            ):
                return True
        return False
