"""The console and the API docs as files: served by Sandbar itself at `/` and `/docs`,
every asset from its own origin (no other host named anywhere, so they work offline),
no inline script, and a Content-Security-Policy that forbids inline scripts and framing.
tests/test_console_browser.py drives the pages in Chromium."""

from __future__ import annotations

import re

import httpx

from interfaces.web.console import STATIC

# What a page loads: scripts, stylesheets, icons (links to pages are not assets).
ASSET = re.compile(r"""<(?:script|link)\b[^>]*(?:src|href)="([^"]+)\"""")


def _policy(r: httpx.Response) -> dict[str, str]:
    """The Content-Security-Policy's directives, by name."""
    parts = [p.strip() for p in r.headers["content-security-policy"].split(";")]
    return {name: value for name, _, value in (p.partition(" ") for p in parts if p)}


def test_the_console_and_the_docs_are_served_with_their_assets(server: str) -> None:
    for path in ("/", "/docs"):
        r = httpx.get(f"{server}{path}")
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
        policy = _policy(r)
        assert policy["script-src"] == "'self'", policy  # no inline script, no other host
        assert policy["frame-ancestors"] == "'none'" and policy["default-src"] == "'none'"
        assert r.headers["x-frame-options"] == "DENY"
        assert r.headers["x-content-type-options"] == "nosniff"
        for asset in ASSET.findall(r.text):
            assert asset.startswith("/assets/"), asset
            got = httpx.get(f"{server}{asset}")
            assert got.status_code == 200, asset
            assert "content-security-policy" in got.headers
    # The API's answers are left as they were.
    assert "content-security-policy" not in httpx.get(f"{server}/api/auth/providers").headers
    assert httpx.get(f"{server}/assets/nothing.js").status_code == 404


def test_no_page_has_an_inline_script_or_names_another_host() -> None:
    for path in STATIC.rglob("*"):
        if path.is_dir():
            continue
        text = path.read_text()
        if path.suffix == ".html":
            for tag in re.findall(r"<script\b[^>]*>", text):
                assert 'src="/assets/' in tag, (path.name, tag)
            assert re.search(r"<script\b[^>]*>[^<]", text) is None, path.name
            assert not re.search(r"\son\w+=", text), path.name  # (no inline handlers)
            assert "style=" not in text, path.name
        # No address of another host: every fetch and asset is this origin's.
        for url in re.findall(r"https?://[^\s\"'`)]+", text):
            assert url.startswith("http://www.w3.org/2000/svg"), (path.name, url)
