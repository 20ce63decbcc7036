"""The live queue page at /ui, in a real browser (headless Chromium, Debian's, driven by Playwright): a job
submitted through the API appears in the queue, moves to running and leaves; behind API keys the page
loads without one and asks for an admin key; the fair-share chart draws each tenant; `ui.enabled: false`
turns both routes off."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect

from tests.api.helpers import HANG, admit, state_of, wait_for
from tests.fakes.servers import REPO, LoopbackServer

WAIT_MS = 5_000  # the page gets a snapshot every 0.2 s: anything it shows, it shows well within this
SCREENSHOT = REPO / "test-artifacts" / "queue-page.png"
POOL = {
    "id": "default", "engine": "mock", "models": ["mock"], "replicas": [{"id": "r0"}], "slots": 1,
    "options": {"tokens_per_s": 20},
}  # fmt: skip
KEYS = {"ops": "ops-admin-key-01234567", "acme": "acme-client-key-012345", "beta": "beta-client-key-012345"}
AUTH = {"keys": [
    {"key": KEYS["ops"], "tenant": "ops", "role": "admin"},
    {"key": KEYS["acme"], "tenant": "acme"},
    {"key": KEYS["beta"], "tenant": "beta"},
]}  # fmt: skip


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    opened = context.new_page()
    opened.set_default_timeout(WAIT_MS)
    yield opened
    context.close()


def serve(make_server: Callable[..., LoopbackServer], **overrides: Any) -> LoopbackServer:
    return make_server(pools=[POOL], ui={"interval_s": 0.2}, **overrides)


def http(server: LoopbackServer, key: str | None = None) -> httpx.Client:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.Client(base_url=server.base_url, headers=headers, timeout=10)


def cancel(client: httpx.Client, job_id: str) -> None:
    response = client.post(f"/v1/tasks/{job_id}/cancel")
    assert response.status_code == 204, response.text


def sign_in(page: Page, key: str) -> None:
    """What an operator does when the page asks: paste the key, press Enter."""
    expect(page.locator("#auth")).to_be_visible()
    page.fill("#key", key)
    page.press("#key", "Enter")


def test_a_submitted_job_appears_moves_and_leaves(
    page: Page, make_server: Callable[..., LoopbackServer]
) -> None:
    server = serve(make_server)
    with http(server) as api:
        version = api.get("/v1/pools").json()["pools"][0]["engine_version"]
        page.goto(f"{server.base_url}/ui")
        expect(page.locator("#status")).to_have_text("live")
        expect(page.locator("#queue")).to_contain_text("No jobs waiting.")
        expect(page.locator("#running")).to_contain_text("No jobs running.")
        replica = page.locator('#pools tr[data-pool-id="default"][data-replica-id="r0"]')
        expect(replica.locator("td.slots")).to_have_text("0/1")
        expect(replica.locator("td.engine")).to_have_text(f"mock {version}")
        expect(replica.locator("td.breaker")).to_have_text("closed")

        a = admit(api, prompt=HANG, max_tokens=4000)
        b = admit(api, prompt=HANG, max_tokens=4000, priority="batch")
        a_running = page.locator(f'#running tr[data-job-id="{a}"]')
        b_queued = page.locator(f'#queue tr[data-job-id="{b}"]')
        b_running = page.locator(f'#running tr[data-job-id="{b}"]')
        expect(a_running).to_be_visible()
        expect(a_running.locator("td.where")).to_have_text("default / r0")
        expect(a_running.locator("td").first).to_have_attribute("title", a)
        expect(b_queued.locator("td.pos")).to_have_text("0")
        expect(b_queued.locator("td.class")).to_have_text("batch")
        expect(b_queued.locator("td.start")).to_have_text(re.compile("^(\u2013|in .+)$"))
        expect(page.locator('#queue tr[data-tenant="default"] td.batch')).to_have_text("1")
        expect(page.locator(f'#queue tr[data-job-id="{a}"]')).to_have_count(0)
        expect(replica.locator("td.slots")).to_have_text("1/1")
        SCREENSHOT.parent.mkdir(exist_ok=True)
        page.screenshot(path=str(SCREENSHOT), full_page=True)
        assert SCREENSHOT.stat().st_size > 20_000  # a drawn page, not a blank one

        cancel(api, a)
        expect(b_running).to_be_visible()
        expect(b_queued).to_have_count(0)
        expect(a_running).to_have_count(0)
        expect(page.locator("#queue")).to_contain_text("No jobs waiting.")

        cancel(api, b)
        expect(b_running).to_have_count(0)
        expect(page.locator("tr[data-job-id]")).to_have_count(0)
        expect(page.locator("#running")).to_contain_text("No jobs running.")
        expect(replica.locator("td.slots")).to_have_text("0/1")


def test_behind_api_keys_the_page_loads_and_asks_for_an_admin_key(
    page: Page, make_server: Callable[..., LoopbackServer]
) -> None:
    server = serve(make_server, auth=AUTH)
    with http(server) as anonymous, http(server, KEYS["acme"]) as client:
        assert anonymous.get("/ui").status_code == 200  # the page holds no data: it loads without a key
        assert anonymous.get("/ui/events").status_code == 401
        assert client.get("/ui/events").status_code == 403
    page.goto(f"{server.base_url}/ui")
    expect(page.locator("#status")).to_have_text("key needed")
    expect(page.locator("#auth-msg")).to_contain_text("missing API key")
    sign_in(page, KEYS["acme"])  # a client key: refused, with the server's reason
    expect(page.locator("#status")).to_have_text("key refused")
    expect(page.locator("#auth-msg")).to_contain_text("needs an 'admin' key")
    sign_in(page, KEYS["ops"])
    expect(page.locator("#status")).to_have_text("live")
    expect(page.locator("#auth")).to_be_hidden()
    expect(page.locator('#pools tr[data-replica-id="r0"] td.slots')).to_have_text("0/1")
    page.reload()  # the key is kept for the tab's session
    expect(page.locator("#status")).to_have_text("live")
    page.click("#forget")
    expect(page.locator("#status")).to_have_text("key needed")


def test_the_shares_chart_draws_each_tenant_against_its_weight(
    page: Page, make_server: Callable[..., LoopbackServer]
) -> None:
    server = serve(make_server, auth=AUTH, tenants=[{"id": "acme", "weight": 3}, {"id": "beta", "weight": 1}])
    with http(server, KEYS["acme"]) as acme, http(server, KEYS["beta"]) as beta:
        jobs = [(client, admit(client, max_tokens=3)) for client in (acme, beta)]
        wait_for(lambda: all(state_of(client, job) == "succeeded" for client, job in jobs))
    page.goto(f"{server.base_url}/ui")
    sign_in(page, KEYS["ops"])
    shares = page.locator("#shares")
    for tenant, weight, entitled in (("acme", "3", "75 %"), ("beta", "1", "25 %")):
        row = shares.locator(f'tbody tr[data-tenant="{tenant}"]')
        expect(row.locator("td.weight")).to_have_text(weight)
        expect(row.locator("td.entitled")).to_have_text(entitled)
        expect(shares.locator(f'svg rect[data-tenant="{tenant}"]')).not_to_have_count(0)
    assert float(shares.locator("svg").get_attribute("data-max") or 0) > 0
    expect(shares.locator(".legend")).to_contain_text("acme")
    expect(shares.locator("figcaption")).to_contain_text("slot-seconds")


def test_ui_enabled_false_turns_the_page_and_its_stream_off(
    make_server: Callable[..., LoopbackServer],
) -> None:
    server = make_server(ui={"enabled": False})
    with http(server) as anonymous:
        for path in ("/ui", "/ui/events"):
            response = anonymous.get(path)
            assert response.status_code == 404, path
            assert response.headers["content-type"] == "application/json"
            assert response.json()["code"] == "NOT_FOUND"
            assert "ui.enabled" in response.json()["message"]
