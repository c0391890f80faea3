"""The web console in a real browser (Debian's Chromium, driven by Playwright): two people,
an owner and a developer, each in a browser context of their own, through every page; a
change one makes seen by the other with no reload; the code-to-agent flow with a real
`sandbar agent connect`, and Open on its sandbox: a new tab through the ticket flow to the
small web site the agent serves, on the sandbox's own host; the account's linked
providers; the history's "as it was at".

Every test fails on a script error or a console error in any of its tabs (but the
browser's own line for an API refusal, which the page shows in words), on any request
from any tab to a host other than this Sandbar's (its sandbox subdomains are its own),
and on any serious accessibility violation that axe-core finds on a page. Each page is
photographed at 1440 and 390 px wide into a folder the run prints at its end
(SANDBAR_SCREENSHOTS chooses it)."""

from __future__ import annotations

import os
import re
import subprocess
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit
from uuid import UUID

import psycopg
import pytest

from domain.base import acting_as
from domain.sandboxes import Sandbox
from domain.users import User, link_identity
from interfaces.bootstrap import Sandbar
from tests.conftest import PASSWORD, ROOT, record
from tests.test_tunnel import AgentProcess, agent_cli

WIDE, NARROW = 1440, 390
LIVE = 20_000  # ms: how long a live change may take to show on a loaded machine
# The browser's own console line for an answer >= 400: the page shows the API's refusal
# in words (that is a feature under test), so these lines alone are not errors.
REFUSAL = re.compile(r"^Failed to load resource: the server responded with a status of 4\d\d")


@pytest.fixture(scope="session")
def axe_source() -> str:
    """axe-core, installed from npm by scripts/axe.sh."""
    found = subprocess.run(
        [str(ROOT / "scripts/axe.sh")], capture_output=True, text=True, timeout=600
    )
    assert found.returncode == 0, found.stderr
    return Path(found.stdout.strip()).read_text()


@pytest.fixture(scope="session")
def screenshots(request: pytest.FixtureRequest) -> Iterator[Path]:
    """Where the pages' pictures go; printed at the end of the run."""
    chosen = os.environ.get("SANDBAR_SCREENSHOTS")
    folder = Path(chosen) if chosen else ROOT / ".cache" / "screenshots" / uuid.uuid4().hex[:8]
    folder.mkdir(parents=True, exist_ok=True)
    yield folder
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    shots = len(list(folder.glob("*.png")))
    line = f"console screenshots ({shots}): {folder}"
    if reporter is not None:
        reporter.write_line(line)
    else:
        print(line)


@dataclass
class Person:
    """One person's browser context and page, and what went wrong in it."""

    name: str
    page: Any
    origin: str
    shots: Path
    axe: str
    problems: list[str] = field(default_factory=list)
    requests: list[Any] = field(default_factory=list)
    username: str = ""

    def watch(self) -> None:
        """Every page of the person's context, the first and any tab opened from it."""
        context, host = self.page.context, urlsplit(self.origin).netloc

        def console(message: Any) -> None:
            if message.type == "error" and not REFUSAL.match(message.text):
                self.problems.append(f"console error: {message.text}")

        def request(req: Any) -> None:
            self.requests.append(req)
            where = urlsplit(req.url)
            ours = where.netloc == host or where.netloc.endswith(f".{host}")
            if where.scheme not in ("data", "blob", "about") and not ours:
                self.problems.append(f"request to another host: {req.url}")

        def page(opened: Any) -> None:
            opened.on("console", console)
            opened.on("pageerror", lambda error: self.problems.append(f"script error: {error}"))

        context.on("request", request)
        context.on("page", page)
        page(self.page)

    def check(self, name: str) -> None:
        """The page as it stands: no serious accessibility violation, nothing wider than
        a phone at 390 px, and photographed at both widths."""
        page = self.page
        if not page.evaluate("() => typeof window.axe === 'object'"):
            page.evaluate(self.axe)  # (over the DevTools protocol: the page's CSP stays)
        found = page.evaluate(
            "async () => (await axe.run(document, {resultTypes: ['violations']})).violations"
            ".map(v => ({id: v.id, impact: v.impact, help: v.help,"
            " nodes: v.nodes.slice(0, 3).map(n => n.target.join(' '))}))"
        )
        serious = [v for v in found if v["impact"] in ("serious", "critical")]
        assert not serious, f"{name}: {serious}"
        for width in (WIDE, NARROW):
            page.set_viewport_size({"width": width, "height": 900})
            page.screenshot(path=self.shots / f"{name}-{width}.png", full_page=True)
            wide = page.evaluate("() => document.documentElement.scrollWidth")
            assert wide <= width + 1, f"{name} at {width} px is {wide} px wide"
        page.set_viewport_size({"width": WIDE, "height": 900})

    def no_problems(self) -> None:
        assert not self.problems, f"{self.name}: {self.problems}"


@pytest.fixture
def people(
    server: str, chromium_path: str, axe_source: str, screenshots: Path
) -> Iterator[Callable[[str], Person]]:
    """People, each in a browser context of their own, at ``localhost`` (so that the
    sandbox hosts are its subdomains, as in a real install)."""
    from playwright.sync_api import sync_playwright

    origin = server.replace("127.0.0.1", "localhost")
    made: list[Person] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=chromium_path, args=["--no-sandbox"], chromium_sandbox=False
        )

        def make(name: str) -> Person:
            context = browser.new_context(
                base_url=origin, viewport={"width": WIDE, "height": 900}, locale="en-GB"
            )
            context.set_default_timeout(LIVE)
            person = Person(name, context.new_page(), origin, screenshots, axe_source)
            person.watch()
            made.append(person)
            return person

        try:
            yield make
            for person in made:
                person.no_problems()
        finally:
            browser.close()


def sign_up(person: Person) -> None:
    page = person.page
    page.goto("/")
    page.wait_for_url("**/#/signin")
    page.get_by_role("heading", name="Sign in to Sandbar").wait_for()
    person.check("sign-in")
    page.get_by_role("link", name="Create an account").click()
    page.get_by_role("heading", name="Create a Sandbar account").wait_for()
    person.check("sign-up")
    person.username = f"{person.name}-{uuid.uuid4().hex[:8]}"
    page.get_by_label("Username").fill(person.username)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Create account").click()
    page.get_by_role("heading", name="Workspaces").wait_for()


def status_of(page: Any, name: str) -> Any:
    row = page.locator("li.row-item", has=page.locator("strong", has_text=re.compile(f"^{name}$")))
    return row.get_by_test_id("status")


def test_an_owner_and_a_developer_through_every_page(
    people: Callable[[str], Person], sandbar: Sandbar
) -> None:
    from playwright.sync_api import expect

    owner, dev = people("owner"), people("dev")
    sign_up(owner)
    sign_up(dev)
    o, d = owner.page, dev.page

    # Workspaces: create one; the list shows the role and the counts.
    o.get_by_label("New workspace").fill("Team")
    o.get_by_role("button", name="Create").click()
    o.get_by_role("heading", name="Team").wait_for()
    wid = o.url.split("/w/")[1].split("/")[0]
    expect(o.locator(".live-state")).to_have_text("Live")

    # Sandboxes: the owner makes two.
    for name in ("alpha", "beta"):
        o.get_by_label("Name").fill(name)
        o.get_by_role("button", name="Create sandbox").click()
        expect(status_of(o, name)).to_have_text("creating")
    owner.check("sandboxes")

    # Members: add the developer; a refusal is shown in words.
    o.get_by_role("link", name="Members").click()
    o.get_by_role("heading", name="Members", exact=True).wait_for()
    o.get_by_label("Username").fill(dev.username)
    o.get_by_label("Role", exact=True).select_option("developer")
    o.get_by_role("button", name="Add member").click()
    expect(o.locator(f"li[data-user='{dev.username}']")).to_be_visible()
    o.get_by_label("Username").fill(dev.username)
    o.get_by_role("button", name="Add member").click()
    expect(o.get_by_role("alert").filter(has_text="Not now")).to_be_visible()
    o.get_by_label("Username").fill("nobody-by-this-name")
    o.get_by_role("button", name="Add member").click()
    expect(o.get_by_role("alert").filter(has_text="Not found")).to_be_visible()
    owner.check("members")

    # The developer's list shows the workspace, their role and its counts.
    d.get_by_role("link", name="Workspaces").click()
    d.reload()
    card = d.locator(".card", has_text="Team")
    expect(card).to_contain_text("developer")
    expect(card).to_contain_text("2 members, 2 sandboxes")
    expect(card.get_by_role("button", name="Delete…")).to_have_count(0)  # (not offered)
    dev.check("workspaces")
    card.get_by_role("link", name="Team").click()
    expect(status_of(d, "alpha")).to_have_text("creating")
    d.evaluate("() => { window.stillTheSamePage = true; }")

    # Live: what the worker reports and what the owner does shows on the developer's page.
    boxes = {b["name"]: b["id"] for b in _sandboxes(o, wid)}
    record(sandbar, UUID(boxes["alpha"]), lambda s: s.record_started("127.0.0.1:9"))
    expect(status_of(d, "alpha")).to_have_text("running")
    o.get_by_role("link", name="Sandboxes").click()
    o.locator("li.row-item", has_text="beta").get_by_role("button", name="Delete beta").click()
    o.get_by_role("dialog").get_by_role("button", name="Delete").click()
    expect(d.locator("li.row-item", has_text="beta")).to_have_count(0)
    # ... and the developer's own action on the owner's.
    d.locator("li.row-item", has_text="alpha").get_by_role("button", name="Pause").click()
    expect(status_of(o, "alpha")).to_have_text("pausing")
    record(sandbar, UUID(boxes["alpha"]), Sandbox.record_paused)
    expect(status_of(d, "alpha")).to_have_text("paused")
    d.locator("li.row-item", has_text="alpha").get_by_role("button", name="Resume").click()
    expect(status_of(o, "alpha")).to_have_text("resuming")
    record(sandbar, UUID(boxes["alpha"]), lambda s: s.record_failed("the image would not start"))
    expect(d.locator("li.row-item", has_text="alpha")).to_contain_text("the image would not start")
    expect(
        d.locator("li.row-item", has_text="alpha").get_by_role("button", name="Retry")
    ).to_be_visible()
    assert d.evaluate("() => window.stillTheSamePage === true")  # (never reloaded)
    dev.check("sandboxes-developer")

    # Usage and limits: a chart; the owner sets limits, the developer is not offered to.
    _some_usage(sandbar, wid, boxes["alpha"])
    o.get_by_role("link", name="Usage and limits").click()
    expect(o.locator("svg.chart")).to_have_count(2)
    expect(o.locator("svg.chart rect")).to_have_count(8)  # (four days, two charts)
    o.get_by_role("spinbutton", name="Requests a day").fill("1000")
    o.get_by_role("button", name="Save limits").click()
    expect(o.get_by_text("In force: requests a day, 1,000;")).to_be_visible()
    owner.check("usage")
    d.get_by_role("link", name="Usage and limits").click()
    expect(d.locator("svg.chart")).to_have_count(2)
    expect(d.get_by_role("button", name="Save limits")).to_have_count(0)

    # Local agents: the code and its command.
    o.get_by_role("link", name="Local agents").click()
    o.get_by_role("button", name="Make a one-time code").click()
    expect(o.get_by_test_id("command")).to_contain_text("sandbar agent register --server")
    owner.check("agents")

    # History: newest first, by person, and the workspace as it was at a moment.
    o.get_by_role("link", name="History").click()
    log = o.get_by_role("list", name="History, newest first")
    expect(log.locator("li").first).to_contain_text("set the daily limits")
    o.get_by_label("Person").select_option(label=dev.username)
    expect(log.locator("li")).to_have_count(3)  # added; paused; resumed alpha
    o.get_by_label("Person").select_option(label="anyone")
    made_beta = log.locator("li", has_text="created a sandbox: beta")
    made_beta.get_by_role("button").click()
    then = o.locator(".as-at")
    expect(then).to_contain_text("Sandboxes (2)")
    expect(then).to_contain_text("Members (1)")  # (the developer came later)
    owner.check("history")
    o.get_by_role("link", name="Sandboxes").click()

    # Roles change live: demoted to guest, the developer is no longer offered actions.
    d.get_by_role("link", name="Sandboxes").click()
    expect(d.get_by_role("button", name="Create sandbox")).to_be_visible()
    o.get_by_role("link", name="Members").click()
    o.get_by_label(f"Role of {dev.username}").select_option("guest")
    expect(d.locator(".heading .badge")).to_have_text("guest")
    expect(d.get_by_role("button", name="Create sandbox")).to_have_count(0)
    # Removed, they see so, and get no more events.
    o.get_by_role("button", name=f"Remove {dev.username}").click()
    o.get_by_role("dialog").get_by_role("button", name="Remove").click()
    expect(d.get_by_text("You are no longer a member")).to_be_visible()
    expect(d.locator(".live-state")).to_have_text("Stopped")

    # Account: who they are, and the provider accounts linked to it (one linked here as
    # the GitHub sign-in would; tests/test_sign_in.py links one through a provider).
    o.get_by_role("link", name=owner.username).click()
    o.get_by_role("heading", name="Your account").wait_for()
    expect(o.locator(".facts")).to_contain_text(owner.username)
    expect(o.get_by_text("No provider's account is linked to this one.")).to_be_visible()
    _link(sandbar, o.evaluate("async () => (await fetch('/api/auth/me')).json()")["id"])
    o.reload()
    linked = o.get_by_role("list", name="Linked providers")
    expect(linked.locator("li[data-provider='github']")).to_contain_text("GitHub")
    expect(linked.locator("li[data-provider='github'] time")).to_be_visible()
    owner.check("account")

    # Deleting a workspace, after a confirmation that names what goes.
    o.get_by_role("link", name="Workspaces").click()
    o.get_by_label("New workspace").fill("Doomed")
    o.get_by_role("button", name="Create").click()
    o.get_by_role("heading", name="Doomed").wait_for()
    o.get_by_role("link", name="Workspaces").click()
    doomed = o.locator(".card", has_text="Doomed")
    doomed.get_by_role("button", name="Delete…").click()
    dialog = o.get_by_role("dialog")
    expect(dialog).to_contain_text("the workspace Doomed, its 0 sandboxes")
    owner.check("workspaces-delete")
    dialog.get_by_role("button", name="Delete Doomed").click()
    expect(o.locator(".card", has_text="Doomed")).to_have_count(0)
    owner.check("workspaces")

    # Signing out.
    o.get_by_role("button", name="Sign out").click()
    o.get_by_role("heading", name="Sign in to Sandbar").wait_for()


def _link(sandbar: Sandbar, user_id: str) -> None:
    """Link a GitHub account to the user, as signing in with GitHub to link does."""
    user = sandbar.log.find(UUID(user_id), User)
    assert user is not None
    with acting_as(user.id):
        index = link_identity(user, "github", f"gh-{uuid.uuid4().hex[:8]}")
    sandbar.log.save(user, index)


def _some_usage(sandbar: Sandbar, wid: str, sandbox_id: str) -> None:
    """Requests through the Anthropic proxy on a few past days, as its store keeps them."""
    with psycopg.connect(sandbar.settings.database_url) as conn:
        for back, requests in ((0, 12), (1, 30), (3, 7), (9, 21)):
            conn.execute(
                "INSERT INTO sandbar_usage (day, workspace_id, sandbox_id, requests,"
                " input_tokens, output_tokens)"
                " VALUES ((now() AT TIME ZONE 'UTC')::date - %s, %s, %s, %s, %s, %s)",
                (back, wid, sandbox_id, requests, requests * 900, requests * 300),
            )


def _sandboxes(page: Any, wid: str) -> list[dict[str, Any]]:
    return page.evaluate(
        "async (wid) => (await fetch(`/api/workspaces/${wid}/sandboxes`)).json()", wid
    )


class SiteHandler(SimpleHTTPRequestHandler):
    """A static site's files, each request's path and headers noted in ``seen``."""

    seen: list[tuple[str, dict[str, str]]]

    def do_GET(self) -> None:  # (http.server's name)
        self.seen.append((self.path, dict(self.headers.items())))
        super().do_GET()

    def log_message(self, format: str, *args: Any) -> None:  # (quiet)
        pass


@pytest.fixture
def sandbox_site(tmp_path: Path) -> Iterator[tuple[int, str, list[tuple[str, dict[str, str]]]]]:
    """A small real web site on loopback for a local agent to serve: a page naming a
    token of its own, with a stylesheet. Yields (port, token, what reached it)."""
    token = uuid.uuid4().hex[:12]
    root = tmp_path / "site"
    root.mkdir()
    (root / "index.html").write_text(
        "<!doctype html><html lang=en><head><title>The laptop's site</title>"
        '<link rel="icon" href="data:,"><link rel="stylesheet" href="/site.css"></head>'
        f"<body><h1>Served by the laptop</h1><p id=token>{token}</p></body></html>"
    )
    (root / "site.css").write_text("h1 { color: rgb(1, 2, 3); }\n")
    seen: list[tuple[str, dict[str, str]]] = []
    handler = type("Site", (SiteHandler,), {"seen": seen})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), partial(handler, directory=str(root)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield httpd.server_address[1], token, seen
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=10)


def test_a_code_becomes_a_local_agent_that_goes_online_and_offline_live(
    people: Callable[[str], Person],
    sandbox_site: tuple[int, str, list[tuple[str, dict[str, str]]]],
    tmp_path: Path,
) -> None:
    """... and, online, Open takes a new tab through the ticket flow to the site the agent
    serves, on the sandbox's own host."""
    from playwright.sync_api import expect

    owner = people("agents")
    sign_up(owner)
    page = owner.page
    page.get_by_label("New workspace").fill("Laptops")
    page.get_by_role("button", name="Create").click()
    page.get_by_role("heading", name="Laptops").wait_for()
    page.get_by_role("link", name="Local agents").click()
    page.get_by_role("button", name="Make a one-time code").click()
    command = page.get_by_test_id("command").inner_text()
    words = command.split()
    assert words[:3] == ["sandbar", "agent", "register"], command
    server = words[words.index("--server") + 1]
    code = words[words.index("--code") + 1]
    assert server == owner.origin
    config = tmp_path / "agent.json"
    port, token, seen = sandbox_site
    done = agent_cli(
        config, "register", "--server", server, "--code", code,
        "--name", "laptop", "--target", f"http://127.0.0.1:{port}",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    expect(status_of(page, "laptop")).to_have_text("offline")  # (appeared, no reload)
    sandbox_id = page.locator("li.row-item", has_text="laptop").get_attribute("data-id")
    assert sandbox_id
    agent = AgentProcess(config, sandbox_id)
    try:
        expect(status_of(page, "laptop")).to_have_text("online")
        owner.check("agents-online")
        _open_the_site(owner, sandbox_id, token, seen)
    finally:
        agent.stop()
    expect(status_of(page, "laptop")).to_have_text("offline")


def _open_the_site(
    person: Person, sandbox_id: str, token: str, seen: list[tuple[str, dict[str, str]]]
) -> None:
    """Open, on the sandboxes page: a new tab goes to the API host's /open, takes a
    ticket to the sandbox's host, and lands on the agent's site there."""
    from playwright.sync_api import expect

    page, api_host = person.page, urlsplit(person.origin).netloc
    sandbox_host = f"oc-{sandbox_id}.{api_host}"
    page.get_by_role("link", name="Sandboxes").click()
    expect(status_of(page, "laptop")).to_have_text("running")
    before = len(person.requests)
    with page.context.expect_page() as opened:
        page.get_by_role("link", name="Open laptop in a new tab").click()
    tab = opened.value
    tab.wait_for_url(f"http://{sandbox_host}/")
    expect(tab.locator("#token")).to_have_text(token)
    expect(tab).to_have_title("The laptop's site")
    # The site's stylesheet came too, on the same grant.
    expect(tab.get_by_role("heading", name="Served by the laptop")).to_have_css(
        "color", "rgb(1, 2, 3)"
    )
    # The way there: the API host's /open, the ticket on the sandbox's host, the page.
    navigations = [
        urlsplit(r.url)
        for r in person.requests[before:]
        if r.is_navigation_request() and r.frame.page == tab
    ]
    assert [(u.netloc, u.path) for u in navigations] == [
        (api_host, f"/api/sandboxes/{sandbox_id}/open"),
        (sandbox_host, "/_sandbar/ticket"),
        (sandbox_host, "/"),
    ], navigations
    ticket = parse_qs(navigations[1].query)
    assert ticket["next"] == ["/"] and len(ticket["ticket"][0]) > 20
    # What reached the site: the page and its stylesheet, and no Sandbar credential.
    paths = [path for path, _ in seen]
    assert paths[:2] == ["/", "/site.css"], paths
    for _, headers in seen:
        cookies = {k.lower(): v for k, v in headers.items()}.get("cookie", "")
        assert "sandbar_" not in cookies and "sbx_" not in cookies, headers
    tab.screenshot(path=person.shots / f"sandbox-opened-{WIDE}.png")
    tab.close()


def test_the_api_docs_work_offline(people: Callable[[str], Person]) -> None:
    """Swagger UI from Sandbar's own files: it renders with no other host reached."""
    from playwright.sync_api import expect

    reader = people("docs")
    page = reader.page
    page.goto("/docs")
    expect(page.locator(".swagger-ui .info .title")).to_contain_text("Sandbar")
    expect(page.get_by_text("/api/workspaces/{workspace_id}/history").first).to_be_visible()
    for width in (WIDE, NARROW):
        page.set_viewport_size({"width": width, "height": 900})
        page.screenshot(path=reader.shots / f"docs-{width}.png")
