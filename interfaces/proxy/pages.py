"""The proxy's own answers: a small HTML page for a browser, docs/api.md's JSON error shape
for anything else."""

from __future__ import annotations

import html

import orjson

Headers = list[tuple[bytes, bytes]]

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">{refresh}<title>{title}</title>
<style>body{{font:16px/1.5 system-ui,sans-serif;max-width:36em;margin:4em auto;color:#222}}
h1{{font-size:1.4em}}</style></head>
<body><h1>{title}</h1><p>{message}</p></body></html>
"""


def render(
    status: int,
    code: str,
    title: str,
    message: str,
    *,
    wants_html: bool,
    retry_after: int | None = None,
) -> tuple[bytes, Headers]:
    """Body and headers of an answer the proxy gives itself."""
    headers: Headers = [(b"cache-control", b"no-store")]
    if retry_after is not None:
        headers.append((b"retry-after", str(retry_after).encode()))
    if wants_html:
        refresh = f'<meta http-equiv="refresh" content="{retry_after}">' if retry_after else ""
        body = _PAGE.format(
            refresh=refresh, title=html.escape(title), message=html.escape(message)
        ).encode()
        headers.append((b"content-type", b"text/html; charset=utf-8"))
    else:
        body = orjson.dumps({"error": {"code": code, "message": message}})
        headers.append((b"content-type", b"application/json"))
    headers.append((b"content-length", str(len(body)).encode()))
    return body, headers
