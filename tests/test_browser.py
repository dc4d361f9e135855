"""The browser demo in real headless Chromium, against the server run as ``twistd``.

Two people chat both ways, see each other's messages appear live and their read
receipts, the server restarts on the same port and both pages carry on by
themselves. Also: signing in with a token, older history loaded by scrolling up,
errors in words, and /health, /ready and /metrics over HTTP.
"""

from __future__ import annotations

import json
import os
import re
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.browser.harness import (
    CHROMIUM_ARGS,
    VIEWPORT,
    ChatSocket,
    find_chromium,
)
from tests.processes import ROOT, ServerProcess, admin

try:
    from playwright.sync_api import Browser, Page, expect, sync_playwright
except ImportError:  # pragma: no cover - depends on the environment
    if os.environ.get("CI"):
        raise
    pytest.skip("playwright is not installed: pip install -e '.[test]'", allow_module_level=True)

ARTIFACTS = ROOT / "test-artifacts"
TIMEOUT_MS = 10_000
# Reconnection waits up to ~5 s between attempts, and a restart takes a moment.
RECONNECT_TIMEOUT_MS = 20_000

expect.set_options(timeout=TIMEOUT_MS)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    executable, why = find_chromium()
    if executable is None:
        if os.environ.get("CI"):
            pytest.fail(why)
        pytest.skip(why)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(executable), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def servers() -> Iterator[list[ServerProcess]]:
    """Servers started by the test, all stopped at teardown."""
    started: list[ServerProcess] = []
    yield started
    for server in started:
        server.stop()


def start_server(servers: list, cwd: Path, *options: str, port: int = 0) -> ServerProcess:
    server = ServerProcess.twistd(
        "--storage", f"sqlite:{cwd / 'chat.sqlite3'}", *options, cwd=cwd, port=port
    )
    servers.append(server)
    return server


class Person:
    """One browser context on the demo page: what a person sees and does."""

    def __init__(self, browser: Browser, server: ServerProcess, name: str) -> None:
        self.name = name
        self.context = browser.new_context(viewport=VIEWPORT)
        self.context.set_default_timeout(TIMEOUT_MS)
        self.page: Page = self.context.new_page()
        self.errors: list[str] = []
        self.page.on("pageerror", lambda error: self.errors.append(str(error)))
        self.page.goto(f"{server.http_url}/")

    @property
    def status(self):
        return self.page.locator("#status")

    def sign_in(self) -> None:
        self.page.get_by_label("Your name").fill(self.name)
        self.page.get_by_role("button", name="Sign in").click()
        expect(self.status).to_have_attribute("data-state", "connected")
        expect(self.page.locator("#me-name")).to_have_text(self.name)

    def contact(self, name: str):
        return self.page.get_by_role("navigation").get_by_role("button", name=name)

    def open(self, name: str) -> None:
        self.contact(name).click()
        expect(self.page.locator("#conversation-title")).to_contain_text(name)

    def open_by_id(self, user_id: str) -> None:
        self.page.get_by_label("Talk to someone by id").fill(user_id)
        self.page.get_by_role("button", name="Open", exact=True).click()
        expect(self.page.locator("#conversation-title")).to_have_text(user_id)

    def say(self, text: str) -> None:
        box = self.page.get_by_role("textbox", name="Message", exact=True)
        box.fill(text)
        box.press("Enter")

    def message(self, text: str):
        return self.page.locator("#messages .message", has_text=text)

    def screenshot(self, name: str) -> None:
        ARTIFACTS.mkdir(exist_ok=True)
        self.page.screenshot(path=ARTIFACTS / name)


@pytest.fixture
def people(browser, request) -> Iterator[Callable[..., Person]]:
    """Open the demo page for someone; at teardown, keep a screenshot of every
    page as it was last (test-artifacts/TEST-NAME.png) and check that no
    page had a JavaScript error."""
    opened: list[Person] = []

    def open_page(server: ServerProcess, name: str) -> Person:
        person = Person(browser, server, name)
        opened.append(person)
        return person

    yield open_page
    for person in opened:
        person.screenshot(f"{request.node.name}-{person.name}.png")
        person.context.close()
    assert {p.name: p.errors for p in opened if p.errors} == {}


def test_two_people_chat_live_and_survive_a_server_restart(people, servers, tmp_path):
    storage = f"sqlite:{tmp_path / 'chat.sqlite3'}"
    admin("groups", "add", "team", "alice", "bob", "--storage", storage, cwd=tmp_path)
    server = start_server(servers, tmp_path, "--dev-auth")
    # bob first, so that alice finds him online in her list.
    bob = people(server, "bob")
    bob.sign_in()
    alice = people(server, "alice")
    alice.sign_in()
    expect(alice.contact("bob").locator(".dot.online")).to_have_count(1)

    # alice → bob: bob, in no conversation yet, gets an unread count, then reads it.
    alice.open("bob")
    alice.say("Hi Bob! Lunch at noon?")
    expect(alice.message("Hi Bob!").locator(".receipt")).to_have_text("sent")
    expect(bob.contact("alice").locator(".badge")).to_have_text("1")
    bob.open("alice")
    expect(bob.message("Hi Bob!")).to_be_visible()
    expect(bob.contact("alice").locator(".badge")).to_have_count(0)
    expect(alice.message("Hi Bob!").locator(".receipt")).to_have_text("✓ read")

    # bob → alice, live in alice's open conversation.
    bob.say("Sure, see you there — at the café")
    expect(alice.message("see you there")).to_have_class(re.compile(r"\btheirs\b"))
    expect(bob.message("see you there").locator(".receipt")).to_have_text("✓ read")

    # A group: alice posts, bob reads, alice sees "read by 1".
    alice.open("team")
    alice.say("Stand-up moved to 10:15")
    expect(bob.contact("team").locator(".badge")).to_have_text("1")
    bob.open("team")
    expect(bob.message("Stand-up moved").locator(".from")).to_have_text("alice")
    expect(alice.message("Stand-up moved").locator(".receipt")).to_have_text("read by 1")

    alice.open("bob")
    bob.open("alice")
    expect(alice.message("see you there")).to_be_visible()
    alice.screenshot("browser-conversation.png")

    # The server restarts on the same port; both pages come back by themselves.
    port = server.port
    server.stop()
    for person in (alice, bob):
        expect(person.status).to_have_attribute("data-state", "reconnecting")
        expect(person.status).to_have_text("Reconnecting…")
    # Written while the server is down: kept, and sent once it is back.
    alice.say("Sent while the server was down")
    expect(alice.message("while the server was down").locator(".receipt")).to_have_text("sending…")
    start_server(servers, tmp_path, "--dev-auth", port=port)
    for person in (alice, bob):
        expect(person.status).to_have_attribute(
            "data-state", "connected", timeout=RECONNECT_TIMEOUT_MS
        )
    # History survived in SQLite, with its receipts.
    expect(alice.message("Hi Bob!").locator(".receipt")).to_have_text("✓ read")
    expect(bob.message("Hi Bob!")).to_be_visible()
    expect(bob.message("while the server was down")).to_have_count(1)
    expect(alice.message("while the server was down").locator(".receipt")).to_have_text("✓ read")
    # And new messages go through both ways.
    bob.say("Back after the restart")
    expect(alice.message("Back after the restart")).to_be_visible()
    alice.say("Welcome back")
    expect(bob.message("Welcome back")).to_be_visible()
    expect(alice.message("Welcome back")).to_have_count(1)


def test_sign_in_with_a_token(people, servers, tmp_path):
    storage = f"sqlite:{tmp_path / 'chat.sqlite3'}"
    token = admin("users", "add", "carol", "--storage", storage, cwd=tmp_path).strip()
    server = start_server(servers, tmp_path)  # no --dev-auth: tokens only
    carol = people(server, "carol")
    page = carol.page
    expect(page.get_by_label("Your token")).to_be_visible()
    expect(page.get_by_label("Your name")).to_be_hidden()
    page.get_by_label("Your token").fill("not-a-token")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert")).to_have_text("Sign-in failed — check your name or token")
    page.get_by_label("Your token").fill(token)
    page.get_by_role("button", name="Sign in").click()
    expect(carol.status).to_have_attribute("data-state", "connected")
    expect(page.locator("#me-name")).to_have_text("carol")
    # Remembered for this tab: a reload signs in again by itself.
    page.reload()
    expect(carol.status).to_have_attribute("data-state", "connected")
    expect(page.locator("#me-name")).to_have_text("carol")


def test_older_messages_load_when_scrolling_up(people, servers, tmp_path):
    server = start_server(servers, tmp_path, "--dev-auth")
    with ChatSocket(server, "carol") as carol:
        for number in range(1, 46):
            carol.call("create", {"to": "dave", "text": f"Message number {number}"})
    dave = people(server, "dave")
    dave.sign_in()
    # carol is offline, and with --dev-auth unknown to the store: dave opens her by id.
    dave.open_by_id("carol")
    texts = dave.page.locator("#messages .message .text")
    older = dave.page.get_by_role("button", name="Load older messages")
    expect(texts).to_have_count(30)
    expect(texts.first).to_have_text("Message number 16")
    expect(texts.last).to_have_text("Message number 45")
    expect(older).to_be_visible()
    dave.page.locator("#scroller").evaluate("scroller => { scroller.scrollTop = 0; }")
    expect(texts).to_have_count(45)
    expect(texts.first).to_have_text("Message number 1")
    expect(texts.nth(15)).to_have_text("Message number 16")
    expect(older).to_be_hidden()


def test_errors_are_shown_in_words(people, servers, tmp_path):
    # Room for signing in and opening a conversation, then about one request a minute.
    server = start_server(servers, tmp_path, "--dev-auth", "--rate", "0.02", "--burst", "6")
    erin = people(server, "erin")
    erin.sign_in()
    erin.open_by_id("frank")
    for number in range(1, 6):
        erin.say(f"Hello {number}")
    expect(erin.page.get_by_role("alert")).to_have_text("You are sending too fast — slow down")
    refused = erin.page.locator("#messages .message").filter(has_text="not sent")
    expect(refused.first).to_be_visible()
    expect(refused.first.get_by_role("button", name="Retry")).to_be_visible()


def get(server: ServerProcess, path: str) -> tuple[int, str, str]:
    """GET ``path``: status, Content-Type and body (an HTTP error is an answer too)."""
    try:
        with urllib.request.urlopen(server.http_url + path, timeout=10) as response:
            return response.status, response.headers["Content-Type"], response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.headers["Content-Type"], error.read().decode()


def metric(text: str, name: str) -> float:
    """The sum of a metric's samples over all their labels (0 before any)."""
    assert f"# TYPE {name} " in text, f"no {name} in /metrics:\n{text}"
    samples = re.findall(rf"^{name}(?:\{{[^}}]*\}})? (\S+)$", text, flags=re.MULTILINE)
    return sum(float(value) for value in samples)


def test_health_ready_and_metrics_over_http(servers, tmp_path):
    server = start_server(servers, tmp_path, "--dev-auth")
    status, content_type, body = get(server, "/health")
    assert status == 200 and content_type.startswith("application/json")
    assert json.loads(body) == {"status": "ok"}
    status, content_type, body = get(server, "/ready")
    assert status == 200 and content_type.startswith("application/json")
    assert json.loads(body)["storage"] == "ok"
    status, content_type, before = get(server, "/metrics")
    assert status == 200 and content_type.startswith("text/plain")
    assert "# TYPE chat_messages_stored_total counter" in before
    status, content_type, page = get(server, "/")
    assert status == 200 and content_type.startswith("text/html") and "app.js" in page

    with ChatSocket(server, "alice") as alice:
        _, _, during = get(server, "/metrics")
        assert metric(during, "chat_connections_authorized") == 1
        alice.call("create", {"to": "bob", "text": "counted"})
        alice.call("create", {"to": "bob", "text": "counted too"})

    _, _, after = get(server, "/metrics")
    stored = "chat_messages_stored_total"
    assert metric(after, stored) == metric(before, stored) + 2
    assert metric(after, "chat_requests_total") >= metric(before, "chat_requests_total") + 3
