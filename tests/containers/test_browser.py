"""A real headless Chromium (Debian's, driven by Playwright) signs in to Sandbar, creates an
opencode sandbox and opens it at ``oc-{id}.localhost``: the ticket flow takes it through
the API host and back, opencode's web app renders and talks to opencode through the
proxy, and each cookie stays on its own host."""

from __future__ import annotations

import json
from urllib.parse import parse_qs, urlsplit

from tests.conftest import PASSWORD, ServerProcess, register
from tests.containers.conftest import wait_for

FETCH_JSON = """async ([method, path, body]) => {
    const r = await fetch(path, {
        method,
        headers: {'content-type': 'application/json'},
        body: body === null ? undefined : JSON.stringify(body),
    });
    return {status: r.status, body: await r.text()};
}"""


def test_opening_opencode_in_a_real_browser(
    opencode_server: ServerProcess, chromium_path: str
) -> None:
    from playwright.sync_api import expect, sync_playwright

    port = opencode_server.port
    api = f"http://localhost:{port}"  # as a browser names Sandbar: its cookies are for it
    user = register(opencode_server.url, "browser")  # signed in again in the browser

    with sync_playwright() as p:
        chromium = p.chromium.launch(
            executable_path=chromium_path, args=["--no-sandbox"], chromium_sandbox=False
        )
        try:
            context = chromium.new_context()
            page = context.new_page()

            def call(method: str, path: str, body: object = None) -> dict:
                return page.evaluate(FETCH_JSON, [method, path, body])

            page.goto(f"{api}/healthz")
            signed_in = call(
                "POST", "/api/auth/login", {"username": user.username, "password": PASSWORD}
            )
            assert signed_in["status"] == 200, signed_in
            made = call("POST", "/api/workspaces", {"name": "in the browser"})
            assert made["status"] == 201, made
            workspace_id = json.loads(made["body"])["id"]
            made = call(
                "POST",
                f"/api/workspaces/{workspace_id}/sandboxes",
                {"name": "box", "type": "opencode"},
            )
            assert made["status"] == 201, made
            sandbox = json.loads(made["body"])
            sid = sandbox["id"]
            sandbox_host = f"oc-{sid}.localhost:{port}"
            assert sandbox["url"] == f"http://{sandbox_host}/"
            body = wait_for(user.client, sid, "running", "failed", timeout=180)
            assert body["status"] == "running", body

            sent = []
            page.on("request", lambda r: sent.append(r))
            responses = []
            page.on("response", lambda r: responses.append(r))
            with page.expect_response(
                lambda r: urlsplit(r.url)[1:3] == (sandbox_host, "/global/health"), timeout=60_000
            ) as first_health:
                page.goto(sandbox["url"])
            page.wait_for_url(sandbox["url"])

            # The way there: the sandbox host, the API host's /open, the ticket, back.
            navigations = [
                urlsplit(r.url)
                for r in sent
                if r.is_navigation_request() and r.frame == page.main_frame
            ]
            assert [(u.netloc, u.path) for u in navigations] == [
                (sandbox_host, "/"),
                (f"localhost:{port}", f"/api/sandboxes/{sid}/open"),
                (sandbox_host, "/_sandbar/ticket"),
                (sandbox_host, "/"),
            ]
            assert parse_qs(navigations[1].query) == {"next": ["/"]}
            ticket = parse_qs(navigations[2].query)
            assert ticket["next"] == ["/"] and len(ticket["ticket"][0]) > 20

            # opencode's web app rendered, and reached opencode through the proxy.
            assert page.title() == "OpenCode"
            expect(page.get_by_text("Create a session to get started")).to_be_visible(
                timeout=30_000
            )
            health = first_health.value
            assert health.status == 200, health.text()
            assert health.json()["healthy"] is True
            for r in responses:  # everything the app asked its server for was answered
                if urlsplit(r.url).netloc == sandbox_host and r.status not in (200, 302):
                    raise AssertionError(f"{r.url}: {r.status}")
            same_origin = call("GET", "/global/health")
            assert same_origin["status"] == 200, same_origin
            assert '"healthy":true' in same_origin["body"]

            # Cookies: the session for the API host only, the grant for the sandbox host
            # only, neither readable by scripts; the session never went to the sandbox.
            cookies = context.cookies()
            sessions = [c for c in cookies if c["name"] == "sandbar_session"]
            grants = [c for c in cookies if c["name"] == "sandbar_sandbox"]
            assert [c["domain"] for c in sessions] == ["localhost"], cookies
            assert [c["domain"] for c in grants] == [f"oc-{sid}.localhost"], cookies
            assert sessions[0]["httpOnly"] and grants[0]["httpOnly"]
            assert grants[0]["value"].startswith("sbx_")
            assert "sandbar_" not in page.evaluate("document.cookie")
            to_sandbox = [r for r in sent if urlsplit(r.url).netloc == sandbox_host]
            assert len(to_sandbox) > 4
            sent_cookies = [r.all_headers().get("cookie") or "" for r in to_sandbox]
            assert not any("sandbar_session" in c for c in sent_cookies), sent_cookies
            assert sum(f"sandbar_sandbox={grants[0]['value']}" in c for c in sent_cookies) > 3
        finally:
            chromium.close()
            user.client.close()
