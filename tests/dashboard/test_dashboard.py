"""The dashboard in a real browser (Debian's Chromium, driven by Playwright), on a real
orchestrator and application over HTTP. Screenshots of each step go to
``<tmp_path>/screenshots`` (printed at the end of each test)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from dispatch import Status
from dispatch.orchestrator._storage import CANCELLED, DONE, RUNNING, WAITING

from . import workload
from .conftest import KEY, Live

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

pytestmark = pytest.mark.timeout(180)


class Steps:
    """Numbered screenshots of a test's steps."""

    def __init__(self, page: Page, directory: Path) -> None:
        self.page = page
        self.directory = directory
        self.count = 0
        directory.mkdir(parents=True, exist_ok=True)

    def shot(self, name: str) -> None:
        self.count += 1
        self.page.screenshot(path=self.directory / f"{self.count:02d}-{name}.png", full_page=True)


@pytest.fixture
def page(browser: Browser, tmp_path: Path) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1360, "height": 900})
    context.set_default_timeout(15_000)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    # A CSP violation or a script error shows on the console (a 401 or 409 page too: not those).
    page.on(
        "console",
        lambda m: (
            errors.append(m.text)
            if m.type == "error" and not m.text.startswith("Failed to load resource")
            else None
        ),
    )
    external: list[str] = []
    page.on(
        "request",
        lambda r: external.append(r.url) if not r.url.startswith("http://127.0.0.1") else None,
    )
    try:
        yield page
    finally:
        context.close()
        print(f"screenshots: {tmp_path / 'screenshots'}")
    assert not external, f"the dashboard loaded something from elsewhere: {external}"
    assert not errors, f"errors in the browser: {errors}"


def log_in(page: Page, live: Live) -> None:
    page.goto(f"{live.url}/dashboard/")
    page.fill('input[name="api_key"]', KEY)
    page.click('button:text("Log in")')
    page.wait_for_url(f"{live.url}/dashboard/")


def test_the_dashboard_in_a_browser(page: Page, live: Live, tmp_path: Path) -> None:
    from playwright.sync_api import expect

    steps = Steps(page, tmp_path / "screenshots")
    failing = live.dispatch("reconcile", "acct-7")
    waiter = live.dispatch("patient", "the nightly batch")
    adds = [live.dispatch("add", i, i) for i in range(3)]
    fan = live.dispatch("fan", 3)
    for call_id in (failing, fan, *adds):
        live.until(call_id, lambda record: record.state == DONE)
    waiting = live.until(waiter, lambda record: record.state == WAITING and bool(record.children))
    [slow] = waiting.children
    live.until(slow, lambda record: record.state == RUNNING)
    assert live.get(failing).status == Status.TEMPORARY_ERROR.value

    # Logging in: the root leads to the dashboard, which asks for the key.
    page.goto(f"{live.url}/")
    expect(page).to_have_url(re.compile(r"/dashboard/login\?next="))
    expect(page.locator("h1")).to_have_text("dispatch")
    steps.shot("login")
    page.fill('input[name="api_key"]', "not-the-key")
    page.click('button:text("Log in")')
    expect(page.locator("#login-error")).to_contain_text("not this orchestrator's API key")
    steps.shot("wrong-key")
    assert page.context.cookies() == []
    page.fill('input[name="api_key"]', KEY)
    page.click('button:text("Log in")')
    page.wait_for_url(f"{live.url}/dashboard/")
    [cookie] = page.context.cookies()
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["path"] == "/dashboard"
    assert KEY not in cookie["value"]

    # The calls, newest first, with the counts per state.
    rows = page.locator("#calls tbody tr")
    expect(rows.first).to_have_attribute("data-id", re.compile(".+"))
    for call_id in (failing, waiter, slow, fan, *adds):
        expect(page.locator(f'tr[data-id="{call_id}"]')).to_be_visible()
    expect(page.locator('#counts b[data-state="waiting"]')).to_have_text("1")
    expect(page.locator('#counts b[data-state="running"]')).to_have_text("1")
    steps.shot("calls")

    # Filtered by function, then by status: failed.
    page.fill('input[name="function"]', "reconcile")
    page.click('button:text("Filter")')
    expect(page).to_have_url(re.compile(r"function=reconcile"))
    expect(rows).to_have_count(1)
    expect(rows.first).to_have_attribute("data-id", failing)
    steps.shot("filter-function")
    page.fill('input[name="function"]', "")
    page.select_option('select[name="status"]', "failed")
    page.click('button:text("Filter")')
    expect(page).to_have_url(re.compile(r"status=failed"))
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text("temporary_error")
    steps.shot("filter-failed")

    # The failed call: its error, message and traceback; its attempts.
    page.click(f'tr[data-id="{failing}"] a')
    expect(page).to_have_url(f"{live.url}/dashboard/calls/{failing}")
    error = page.locator("#error")
    expect(error.locator(".error-type")).to_have_text(re.compile(r"LedgerMismatch$"))
    expect(error.locator(".error-message")).to_have_text(workload.FAILURE_MESSAGE)
    traceback = page.locator("#traceback")
    expect(traceback).to_contain_text("Traceback (most recent call last)")
    expect(traceback).to_contain_text("raise LedgerMismatch")
    expect(traceback).to_contain_text("workload.py")
    expect(page.locator("#attempts tr.attempt")).to_have_count(3)
    expect(page.locator("#input")).to_contain_text("'acct-7'")
    steps.shot("failed-call")

    # The waiting coroutine: where it waits (when its endpoint described it), its child.
    page.goto(f"{live.url}/dashboard/calls/{waiter}")
    expect(page.locator("h1 .badge").first).to_have_text("waiting")
    if live.get(waiter).frames is not None:
        where = page.locator("#where")
        expect(where).to_contain_text("Where is it waiting?")
        expect(where.locator(".frame-function").first).to_have_text("patient")
        expect(where).to_contain_text("workload.py:")
        expect(where.locator(".locals")).to_contain_text("'the nightly batch'")
    expect(page.locator("#tree")).to_contain_text("slow")
    steps.shot("waiting-coroutine")

    # Cancel the running call, from its page.
    page.click(f'#tree a[href$="/calls/{slow}"]')
    expect(page).to_have_url(f"{live.url}/dashboard/calls/{slow}")
    expect(page.locator("h1 .badge").first).to_have_text("running")
    page.once("dialog", lambda dialog: dialog.accept())
    page.click("#cancel")
    expect(page).to_have_url(re.compile(rf"/dashboard/calls/{slow}\?done=cancelled"))
    expect(page.locator(".notice")).to_contain_text("Cancelled 1 call")
    expect(page.locator("h1 .badge").first).to_have_text("done")
    expect(page.locator("h1 .badge").nth(1)).to_have_text("cancelled")
    assert live.get(slow).status == CANCELLED
    steps.shot("cancelled")

    # Retry the failed call: a new call's page.
    page.goto(f"{live.url}/dashboard/calls/{failing}")
    page.click("#retry")
    expect(page).to_have_url(re.compile(r"/dashboard/calls/[0-9a-f]+\?done=retried"))
    new = page.url.split("/calls/")[1].split("?")[0]
    assert new != failing
    expect(page.locator(".notice")).to_contain_text(f"This call retries {failing}")
    expect(page.locator("h1 .function")).to_have_text("reconcile")
    assert live.get(new).function == "reconcile"
    # It fails again, and its page shows so by itself.
    expect(page.locator("h1 .badge").nth(1)).to_have_text("temporary_error", timeout=20_000)
    steps.shot("retried")


def test_the_list_updates_itself(page: Page, live: Live, tmp_path: Path) -> None:
    from playwright.sync_api import expect

    steps = Steps(page, tmp_path / "screenshots")
    log_in(page, live)
    page.goto(f"{live.url}/dashboard/?function=add")
    expect(page.locator("#calls")).to_be_visible()
    page.evaluate("window.notReloaded = true")
    done_before = int(page.locator('#counts b[data-state="done"]').inner_text().replace(",", ""))
    steps.shot("before")
    new = live.dispatch("add", 40, 2)
    other = live.dispatch("slow", 0.0)  # not an add: filtered out
    live.until(new, lambda record: record.state == DONE)
    live.until(other, lambda record: record.state == DONE)
    row = page.locator(f'tr[data-id="{new}"]')
    expect(row).to_be_visible(timeout=10_000)
    expect(row.locator(".st-ok")).to_have_text("ok")
    expect(page.locator("#calls tbody tr").first).to_have_attribute("data-id", new)
    expect(page.locator(f'tr[data-id="{other}"]')).to_have_count(0)
    assert page.evaluate("window.notReloaded") is True
    assert page.url.endswith("?function=add")
    expect(page.locator('#counts b[data-state="done"]')).not_to_have_text(str(done_before))
    expect(page.locator("#updated")).to_contain_text("updated")
    steps.shot("after")
