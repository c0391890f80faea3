"""The console's live status with a real container worker: a cloud sandbox made in the
browser goes creating -> running on the page as the worker starts its container, then
pausing -> paused and resuming -> running, with no reload (tests/test_console_browser.py
drives the same page with events written in-process). The tiny image: its container
starts in a fraction of a second, so the test costs little more than the browser."""

from __future__ import annotations

import re
import uuid
from pathlib import Path

from tests.conftest import PASSWORD, ServerProcess
from tests.test_console_browser import LIVE, WIDE, Person, status_of

# Every text the page's live region says, in order (the page announces each status a
# sandbox reaches through the event stream).
HEARD = """() => {
    window.heard = [];
    new MutationObserver(() => window.heard.push(document.getElementById('announce').textContent))
        .observe(document.getElementById('announce'), {childList: true, characterData: true,
                                                       subtree: true});
    window.stillTheSamePage = true;
}"""


def test_a_cloud_sandbox_goes_creating_to_running_live(
    shared_server: ServerProcess, chromium_path: str, tmp_path: Path
) -> None:
    from playwright.sync_api import expect, sync_playwright

    origin = f"http://localhost:{shared_server.port}"
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=chromium_path, args=["--no-sandbox"], chromium_sandbox=False
        )
        try:
            context = browser.new_context(
                base_url=origin, viewport={"width": WIDE, "height": 900}, locale="en-GB"
            )
            context.set_default_timeout(LIVE)
            person = Person("live", context.new_page(), origin, tmp_path, axe="")
            person.watch()
            page = person.page
            page.goto("/#/signup")
            page.get_by_label("Username").fill(f"live-{uuid.uuid4().hex[:8]}")
            page.get_by_label("Password").fill(PASSWORD)
            page.get_by_role("button", name="Create account").click()
            page.get_by_label("New workspace").fill("Cloud")
            page.get_by_role("button", name="Create").click()
            page.get_by_role("heading", name="Cloud").wait_for()
            expect(page.locator(".live-state")).to_have_text("Live")
            page.evaluate(HEARD)

            page.get_by_label("Name").fill("box")
            page.get_by_role("button", name="Create sandbox").click()
            badge = status_of(page, "box")
            expect(badge).to_have_text(re.compile("^(creating|running)$"))
            expect(badge).to_have_text("running", timeout=90_000)  # the worker started it
            row = page.locator("li.row-item", has_text="box")
            row.get_by_role("button", name="Pause").click()
            expect(badge).to_have_text("paused")
            row.get_by_role("button", name="Resume").click()
            expect(badge).to_have_text("running", timeout=90_000)

            heard = page.evaluate("() => window.heard")
            # The worker's outcomes, in order, as the stream brought them (the page's own
            # requests' answers may add "box is pausing." and the like between them).
            said = iter(heard)
            for outcome in ("box is running.", "box is paused.", "box is running."):
                assert outcome in said, heard
            assert page.evaluate("() => window.stillTheSamePage === true")  # (no reload)
            page.screenshot(path=tmp_path / "live.png")
        finally:
            browser.close()
    person.no_problems()
