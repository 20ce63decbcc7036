"""A real browser's EventSource (headless Chromium, Debian's, driven by Playwright) reads a job's stream
to its terminal event, reconnects once as the HTML standard has it, gets 204 and stops for good; our
terminal `error` event reaches its `error` listener with data, its own connection errors without."""

from __future__ import annotations

from collections.abc import Callable

import httpx
from playwright.sync_api import Browser

from tests.fakes.servers import LoopbackServer

# Opens an EventSource and records what it sees until the browser closes it for good (readyState 2).
READ = """([url, seconds]) => new Promise((resolve) => {
  const seen = [];
  const source = new EventSource(url);
  source.onopen = () => seen.push("open");
  for (const name of ["started", "token", "metrics", "end"]) {
    source.addEventListener(name, (e) => seen.push(name));
  }
  source.addEventListener("error", (e) => {
    seen.push(e.data ? "error-event" : "connection-error:" + source.readyState);
    if (source.readyState === EventSource.CLOSED) resolve(seen);
  });
  setTimeout(() => {
    seen.push("still-open:" + source.readyState);
    source.close();
    resolve(seen);
  }, seconds * 1000);
})"""


def read_in_browser(browser: Browser, server: LoopbackServer, prompt: str) -> list[str]:
    with httpx.Client(base_url=server.base_url) as client:
        job = client.post("/v1/tasks", json={"model_ref": "mock", "prompt": prompt, "max_tokens": 3}).json()
    page = browser.new_page()
    try:
        page.goto(f"{server.base_url}/healthz")  # the stream's origin: EventSource needs no CORS then
        seen: list[str] = page.evaluate(READ, [job["sse_url"], 20])
    finally:
        page.close()
    return seen


def test_eventsource_reads_to_the_end_then_stops_reconnecting(
    browser: Browser, make_server: Callable[..., LoopbackServer]
) -> None:
    server = make_server()
    seen = read_in_browser(browser, server, "hello")
    assert seen[:2] == ["open", "started"] and seen.count("token") == 3 and "end" in seen
    # After `end` the server closes the stream; the browser reconnects with Last-Event-ID, gets 204
    # and closes for good: no second `open`, no event twice, no reconnect loop.
    assert seen[seen.index("end") + 1 :] == ["connection-error:0", "connection-error:2"], seen
    assert seen.count("open") == 1


def test_a_jobs_error_event_reaches_the_error_listener_with_data(
    browser: Browser, make_server: Callable[..., LoopbackServer]
) -> None:
    server = make_server()
    seen = read_in_browser(browser, server, "[[mock refuse]] no")
    assert "error-event" in seen, seen  # ours: it carries data, unlike the browser's own
    assert seen[-1] == "connection-error:2" and seen.count("open") == 1, seen
