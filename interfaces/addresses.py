"""Where things are, as a browser sees them: the API host, each sandbox's host, and the
``next`` targets a redirect may carry. One place for both the API and the proxy."""

from __future__ import annotations

import re
from urllib.parse import quote
from uuid import UUID

from infrastructure.settings import Settings

_LABEL = re.compile(r"(oc|claw)-([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})")
_DEFAULT_PORTS = {"http": "80", "https": "443"}
MAX_NEXT = 2048
# What percent-encoding a target leaves as it is: its own escapes and the URL's delimiters.
_TARGET_SAFE = "/?&=%:@!$'()*+,;~[]#"


def split_host(host: str) -> tuple[str, str]:
    """``Host`` header -> (lower-case name, port or "")."""
    host = host.strip().lower()
    if host.endswith("]") or ":" not in host:  # bare IPv6 literal or no port
        return host, ""
    name, _, port = host.rpartition(":")
    return name, port


class Addresses:
    def __init__(self, settings: Settings) -> None:
        self.scheme = settings.public_scheme
        self.base = settings.base_domain
        self._public_url = settings.public_url
        self._suffix = "." + self.base

    def port_suffix(self, host: str) -> str:
        """ ":port" as the caller reached us, or "" for the scheme's default port."""
        port = split_host(host)[1]
        return f":{port}" if port.isdigit() and port != _DEFAULT_PORTS.get(self.scheme) else ""

    def sandbox_origin(self, label: str, host: str) -> str:
        return f"{self.scheme}://{label}{self._suffix}{self.port_suffix(host)}"

    def api_origin(self, host: str) -> str:
        return self._public_url or f"{self.scheme}://{self.base}{self.port_suffix(host)}"

    def is_sandbox_host(self, host: str) -> bool:
        """Whether ``host`` is a subdomain of the base domain (the proxy's, valid or not)."""
        return split_host(host)[0].endswith(self._suffix)

    def sandbox_of(self, host: str) -> tuple[str, UUID] | None:
        """(label, sandbox id) for ``oc-{id}`` / ``claw-{id}`` under the base domain."""
        name = split_host(host)[0]
        if not name.endswith(self._suffix):
            return None
        label = name[: -len(self._suffix)]
        match = _LABEL.fullmatch(label)
        return (label, UUID(match.group(2))) if match else None


def safe_next(target: str | None) -> str | None:
    """``target`` if it is a path on the same host (no scheme, no ``//host``, no
    backslashes or control characters), else None. "/" when absent."""
    if not target:
        return "/"
    if (
        len(target) > MAX_NEXT
        or not target.startswith("/")
        or target.startswith("//")
        or "\\" in target
        or any(ord(c) < 0x21 or ord(c) == 0x7F for c in target)
    ):
        return None
    return target


def encoded_next(target: str) -> str:
    """A ``safe_next`` target as a ``Location`` header carries it: ASCII, anything else
    percent-encoded as UTF-8 (a header cannot hold U+2028, say)."""
    return quote(target, safe=_TARGET_SAFE)
