"""The browser demo in real headless Chromium, against the server run as ``twistd``.

People chat both ways and see messages, read receipts, presence and typing
live; the conversation list keeps unread counts (and the tab's title their
total, and a desktop notification comes while the page is hidden); messages
stand in the server's order in every window, whatever order they arrive in;
a page that was cut off catches up with cursors once it is back; the open
conversation survives a reload; the page works on a phone-sized screen.
Also: signing in with a token, older history loaded by scrolling up, errors
in words, and /health, /ready and /metrics over HTTP.

Every wait is on what the page shows (Playwright's ``expect`` retries until
its timeout); none is a sleep.
"""

from __future__ import annotations

import json
import os
import re
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from chatserver.server import PRESENCE_GRACE
from tests.browser.harness import (
    CHROMIUM_ARGS,
    VIEWPORT,
    ChatSocket,
    Relay,
    find_chromium,
    seed,
)
from tests.processes import ROOT, ServerProcess, admin, make_group

try:
    from playwright.sync_api import Browser, Page, expect, sync_playwright
except ImportError:  # pragma: no cover - depends on the environment
    if os.environ.get("CI"):
        raise
    pytest.skip("playwright is not installed: pip install -e '.[test]'", allow_module_level=True)

# `-m "not browser"` leaves these out (the runs on the other Pythons: README "Tests").
pytestmark = pytest.mark.browser

ARTIFACTS = ROOT / "test-artifacts"
TIMEOUT_MS = 10_000
# Reconnection waits up to ~5 s between attempts, and a restart takes a moment.
RECONNECT_TIMEOUT_MS = 20_000
# What the issue promises for presence: within a second of arriving, and of
# the grace that spares watchers a reload's offline-online flicker.
PRESENCE_MS = 1_000
OFFLINE_MS = PRESENCE_MS + int(PRESENCE_GRACE * 1000)
TITLE = "chatserver demo"
# A phone: its size, and a touch screen rather than a mouse.
PHONE = {"viewport": {"width": 390, "height": 740}, "has_touch": True, "is_mobile": True}

expect.set_options(timeout=TIMEOUT_MS)

# Stands in for the browser's Notification API and page visibility, which a
# headless browser cannot show or change: notifications are recorded, and
# the test hides and shows the page.
BROWSER_STAND_INS = """
window.notifications = [];
window.Notification = class {
  constructor(title, options) { window.notifications.push({ title, ...options }); }
  static get permission() { return "granted"; }
  static requestPermission() { return Promise.resolve("granted"); }
};
let hidden = false;
Object.defineProperty(Document.prototype, "visibilityState", {
  configurable: true, get: () => (hidden ? "hidden" : "visible"),
});
Object.defineProperty(Document.prototype, "hidden", { configurable: true, get: () => hidden });
window.setHidden = (value) => {
  hidden = value;
  document.dispatchEvent(new Event("visibilitychange"));
};
"""


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

    def __init__(
        self,
        browser: Browser,
        server: ServerProcess,
        name: str,
        *,
        device: dict | None = None,
        relay: bool = False,
        stand_ins: bool = False,
    ) -> None:
        self.name = name
        self.context = browser.new_context(**(device or {"viewport": VIEWPORT}), timezone_id="UTC")
        self.context.set_default_timeout(TIMEOUT_MS)
        if stand_ins:
            self.context.add_init_script(BROWSER_STAND_INS)
        self.page: Page = self.context.new_page()
        self.relay = Relay(self.page) if relay else None
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

    def conversation(self, key: str):
        """The conversation list's entry for ``u:<user>`` or ``g:<group>``."""
        return self.page.locator(f'#conversations li[data-key="{key}"]')

    def open(self, key: str) -> None:
        button = self.conversation(key).locator("button.conv")
        button.click()
        # (On a phone the list is hidden by now, but still says which is open.)
        expect(button).to_have_attribute("aria-current", "true")

    def start(self, name: str) -> None:
        """Open a conversation from "New chat" (the directory)."""
        self.page.get_by_role("button", name="New chat").click()
        panel = self.page.get_by_role("region", name="New chat")
        # Named "bob (online)": the name, then the presence words.
        panel.get_by_role("button", name=re.compile(rf"^{re.escape(name)}\b")).click()
        expect(self.title).to_contain_text(name)

    def open_by_id(self, user_id: str) -> None:
        self.page.get_by_role("button", name="New chat").click()
        self.page.get_by_label("Talk to someone by id").fill(user_id)
        self.page.get_by_role("button", name="Open", exact=True).click()
        expect(self.title).to_have_text(user_id)

    @property
    def title(self):
        return self.page.locator("#conversation-title")

    @property
    def box(self):
        return self.page.get_by_role("textbox", name="Message", exact=True)

    def say(self, text: str) -> None:
        self.box.fill(text)
        self.box.press("Enter")

    def message(self, text: str):
        return self.page.locator("#messages .message", has_text=text)

    @property
    def texts(self):
        return self.page.locator("#messages .message .text")

    @property
    def typing(self):
        return self.page.locator("#typing")

    def screenshot(self, name: str) -> None:
        ARTIFACTS.mkdir(exist_ok=True)
        self.page.screenshot(path=ARTIFACTS / name)


@pytest.fixture
def people(browser, servers, request) -> Iterator[Callable[..., Person]]:
    """Open the demo page for someone; at teardown (before the servers stop),
    keep a screenshot of every page as it was last
    (test-artifacts/TEST-NAME.png) and check that no page had a JavaScript
    error."""
    opened: list[Person] = []

    def open_page(server: ServerProcess, name: str, **options: object) -> Person:
        person = Person(browser, server, name, **options)
        opened.append(person)
        return person

    yield open_page
    for person in opened:
        person.screenshot(f"{request.node.name}-{person.name}.png")
        person.context.close()
    assert {p.name: p.errors for p in opened if p.errors} == {}


def test_two_people_chat_live_and_survive_a_server_restart(people, servers, tmp_path):
    storage = f"sqlite:{tmp_path / 'chat.sqlite3'}"
    make_group(storage, "team", "alice", "bob", cwd=tmp_path)
    server = start_server(servers, tmp_path, "--dev-auth")
    bob = people(server, "bob")
    bob.sign_in()
    alice = people(server, "alice")
    alice.sign_in()

    # alice → bob: bob, in no conversation yet, gets it in his list, unread.
    alice.start("bob")
    alice.say("Hi Bob! Lunch at noon?")
    expect(alice.message("Hi Bob!").locator(".receipt")).to_have_text("sent")
    expect(bob.conversation("u:alice").locator(".badge")).to_have_text("1")
    expect(bob.conversation("u:alice").locator(".preview")).to_have_text("Hi Bob! Lunch at noon?")
    bob.open("u:alice")
    expect(bob.message("Hi Bob!")).to_be_visible()
    expect(bob.conversation("u:alice").locator(".badge")).to_have_count(0)
    expect(alice.message("Hi Bob!").locator(".receipt")).to_have_text("✓ read")

    # bob → alice, live in alice's open conversation.
    bob.say("Sure, see you there — at the café")
    expect(alice.message("see you there")).to_have_class(re.compile(r"\btheirs\b"))
    expect(bob.message("see you there").locator(".receipt")).to_have_text("✓ read")
    expect(alice.conversation("u:bob").locator(".preview")).to_have_text(
        "Sure, see you there — at the café"
    )

    # A group: alice posts, bob reads, alice sees "read by 1".
    alice.start("team")
    alice.say("Stand-up moved to 10:15")
    expect(bob.conversation("g:team").locator(".badge")).to_have_text("1")
    expect(bob.conversation("g:team").locator(".preview")).to_have_text(
        "alice: Stand-up moved to 10:15"
    )
    bob.open("g:team")
    expect(bob.message("Stand-up moved").locator(".from")).to_have_text("alice")
    expect(alice.message("Stand-up moved").locator(".receipt")).to_have_text("read by 1")
    # Most recent first.
    expect(alice.page.locator("#conversations li")).to_have_count(2)
    expect(alice.page.locator("#conversations li").first).to_have_attribute("data-key", "g:team")

    alice.open("u:bob")
    bob.open("u:alice")
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


def test_presence_dots_change_within_a_second(people, servers, tmp_path):
    server = start_server(servers, tmp_path, "--dev-auth")
    with ChatSocket(server, "bob") as bob:
        bob.call("create", {"to": "alice", "text": "Ping me when you are in"})
    alice = people(server, "alice")
    alice.sign_in()
    dot = alice.conversation("u:bob").locator(".dot")
    words = alice.conversation("u:bob").locator(".presence")
    online = re.compile(r"\bonline\b")
    expect(dot).not_to_have_class(online)
    expect(words).to_have_text("(offline)")
    alice.open("u:bob")
    header = alice.page.locator("#conversation-presence")
    expect(header).to_have_text("offline")

    for _ in range(2):  # arriving and leaving, twice
        bob = ChatSocket(server, "bob")  # authorized when this returns
        expect(dot).to_have_class(online, timeout=PRESENCE_MS)
        expect(words).to_have_text("(online)", timeout=PRESENCE_MS)
        expect(header).to_have_text("online", timeout=PRESENCE_MS)
        bob.close()  # closed when this returns
        expect(dot).not_to_have_class(online, timeout=OFFLINE_MS)
        expect(words).to_have_text("(offline)", timeout=OFFLINE_MS)
        expect(header).to_have_text("offline", timeout=OFFLINE_MS)

    # The same live dots in "New chat", for people without a conversation yet.
    make_group(f"sqlite:{tmp_path / 'chat.sqlite3'}", "team", "alice", "carol", cwd=tmp_path)
    alice.page.get_by_role("button", name="New chat").click()
    carol = alice.page.get_by_role("region", name="New chat").get_by_role("button", name="carol")
    expect(carol).to_have_accessible_name("carol (offline)")
    with ChatSocket(server, "carol"):
        expect(carol.locator(".dot")).to_have_class(online, timeout=PRESENCE_MS)
        expect(carol).to_have_accessible_name("carol (online)", timeout=PRESENCE_MS)
    expect(carol.locator(".dot")).not_to_have_class(online, timeout=OFFLINE_MS)


def test_someone_is_typing(people, servers, tmp_path):
    storage = f"sqlite:{tmp_path / 'chat.sqlite3'}"
    make_group(storage, "team", "alice", "bob", "carol", cwd=tmp_path)
    server = start_server(servers, tmp_path, "--dev-auth")
    alice = people(server, "alice")
    alice.sign_in()
    bob = people(server, "bob")
    bob.sign_in()
    bob.start("alice")
    bob.say("Got a minute?")
    alice.open("u:bob")
    expect(alice.message("Got a minute?")).to_be_visible()

    bob.box.fill("Here is wh")
    expect(alice.typing).to_have_text("bob is typing…")
    expect(alice.conversation("u:bob").locator(".preview")).to_have_text("bob is typing…")
    expect(bob.typing).to_have_text("")  # not to oneself
    bob.box.press("End")
    bob.box.press_sequentially("at I found")
    bob.box.press("Enter")
    # The message replaces the indicator at once.
    expect(alice.message("Here is what I found")).to_be_visible()
    expect(alice.typing).to_have_text("")
    expect(alice.conversation("u:bob").locator(".preview")).to_have_text("Here is what I found")

    # Typing that stops without a message fades by itself.
    bob.box.fill("Never mind")
    expect(alice.typing).to_have_text("bob is typing…")
    expect(alice.typing).to_have_text("", timeout=TIMEOUT_MS)

    # In a group, the list says who; the open conversation too.
    with ChatSocket(server, "carol") as carol:
        carol.call("create", {"to": "team", "isGroup": True, "text": "Lunch?"})
        preview = alice.conversation("g:team").locator(".preview")
        expect(preview).to_have_text("carol: Lunch?")
        carol.call("typing", {"to": "team", "isGroup": True})
        expect(preview).to_have_text("carol is typing…")
        expect(alice.typing).to_have_text("")  # another conversation is open
        alice.open("g:team")
        expect(alice.typing).to_have_text("carol is typing…")
        carol.call("create", {"to": "team", "isGroup": True, "text": "12:30?"})
        expect(preview).to_have_text("carol: 12:30?")
        expect(alice.typing).to_have_text("")


def test_unread_counts_title_and_notifications(people, servers, tmp_path):
    storage = f"sqlite:{tmp_path / 'chat.sqlite3'}"
    make_group(storage, "team", "alice", "carol", "dave", cwd=tmp_path)
    server = start_server(servers, tmp_path, "--dev-auth")
    alice = people(server, "alice", stand_ins=True)
    alice.sign_in()
    expect(alice.page).to_have_title(TITLE)
    with ChatSocket(server, "carol") as carol, ChatSocket(server, "dave") as dave:
        carol.call("create", {"to": "alice", "text": "Are you there?"})
        carol.call("create", {"to": "alice", "text": "Call me"})
        dave.call("create", {"to": "team", "isGroup": True, "text": "Build is green"})
        expect(alice.conversation("u:carol").locator(".badge")).to_have_text("2")
        expect(alice.conversation("g:team").locator(".badge")).to_have_text("1")
        expect(alice.page).to_have_title(f"(3) {TITLE}")
        expect(alice.page.locator("#conversations li").first).to_have_attribute(
            "data-key", "g:team"
        )
        expect(alice.conversation("u:carol").locator(".preview")).to_have_text("Call me")

        # The counts are the server's: a reload shows them again.
        alice.page.reload()
        expect(alice.conversation("u:carol").locator(".badge")).to_have_text("2")
        expect(alice.page).to_have_title(f"(3) {TITLE}")

        # Reading carol's messages counts them down, here and on the server.
        alice.open("u:carol")
        expect(alice.conversation("u:carol").locator(".badge")).to_have_count(0)
        expect(alice.page).to_have_title(f"(1) {TITLE}")
        with ChatSocket(server, "alice") as other_tab:
            listed = other_tab.call("getConversations", {})["conversations"]
            assert {c["with"]: c["unread"] for c in listed} == {"carol": 0, "team": 1}

        # Hidden, the page notifies, and leaves what arrives unread until shown.
        assert alice.page.evaluate("window.notifications") == []
        alice.page.evaluate("setHidden(true)")
        carol.call("create", {"to": "alice", "text": "It's urgent"})
        dave.call("create", {"to": "team", "isGroup": True, "text": "Deploying now"})
        expect(alice.page).to_have_title(f"(3) {TITLE}")
        alice.page.wait_for_function("window.notifications.length === 2")
        assert alice.page.evaluate("window.notifications") == [
            {"title": "carol", "body": "It's urgent", "tag": "u:carol"},
            {"title": "dave in #team", "body": "Deploying now", "tag": "g:team"},
        ]
        alice.page.evaluate("setHidden(false)")
        expect(alice.page).to_have_title(f"(2) {TITLE}")
        expect(alice.conversation("g:team").locator(".badge")).to_have_text("2")
        # Nothing while the page is seen.
        carol.call("create", {"to": "alice", "text": "Thanks"})
        expect(alice.message("Thanks")).to_be_visible()
        expect(alice.page).to_have_title(f"(2) {TITLE}")
        assert len(alice.page.evaluate("window.notifications")) == 2


def test_catch_up_after_a_server_restart(people, servers, tmp_path):
    storage = f"sqlite:{tmp_path / 'chat.sqlite3'}"
    make_group(storage, "team", "alice", "bob", cwd=tmp_path)
    server = start_server(servers, tmp_path, "--dev-auth")
    with ChatSocket(server, "bob") as bob:
        bob.call("create", {"to": "alice", "text": "Before the restart"})
        bob.call("create", {"to": "team", "isGroup": True, "text": "Team, before"})
    alice = people(server, "alice", relay=True)
    alice.sign_in()
    alice.open("u:bob")
    alice.say("Mine, before")
    expect(alice.message("Mine, before").locator(".receipt")).to_have_text("sent")
    expect(alice.page).to_have_title(f"(1) {TITLE}")  # the team's

    port = server.port
    server.stop()
    expect(alice.status).to_have_text("Reconnecting…")
    alice.relay.cut = True  # alice's page cannot reach the new server yet
    alice.say("Written while away")
    server = start_server(servers, tmp_path, "--dev-auth", port=port)
    with ChatSocket(server, "bob") as bob:
        for n in range(1, 4):
            bob.call("create", {"to": "alice", "text": f"Missed {n}"})
        bob.call("create", {"to": "team", "isGroup": True, "text": "Team, missed"})
        mine = alice.message("Mine, before").get_attribute("data-id")
        assert mine
        bob.call("read", {"id": mine})
    expect(alice.status).to_have_text("Reconnecting…")
    assert alice.message("Missed").count() == 0

    alice.relay.cut = False
    del alice.relay.sent[:]
    expect(alice.status).to_have_attribute("data-state", "connected", timeout=RECONNECT_TIMEOUT_MS)
    expect(alice.texts).to_have_text(
        [
            "Before the restart",
            "Mine, before",
            "Missed 1",
            "Missed 2",
            "Missed 3",
            "Written while away",
        ]
    )
    # The receipt given while alice was away, and the other conversation's news.
    expect(alice.message("Mine, before").locator(".receipt")).to_have_text("✓ read")
    expect(alice.message("Written while away").locator(".receipt")).to_have_text("sent")
    expect(alice.conversation("g:team").locator(".badge")).to_have_text("2")
    expect(alice.conversation("g:team").locator(".preview")).to_have_text("bob: Team, missed")
    expect(alice.page).to_have_title(f"(2) {TITLE}")
    # The recipe: the conversation list, then what came after the last message held.
    requests = [(frame["type"], frame["data"]) for frame in alice.relay.sent]
    actions = [action for action, _ in requests]
    assert actions.index("getConversations") < actions.index("getMessages")
    assert ("getMessages", {"with": "bob", "limit": 30, "after": mine}) in requests
    # Sent once: the server holds one copy.
    with ChatSocket(server, "alice") as check:
        history = check.call("getMessages", {"with": "bob", "limit": 10})
        assert [m["text"] for m in history].count("Written while away") == 1


def test_messages_stand_in_the_servers_order_in_every_window(people, servers, tmp_path):
    storage = f"sqlite:{tmp_path / 'chat.sqlite3'}"
    make_group(storage, "team", "alice", "bob", "carol", cwd=tmp_path)
    server = start_server(servers, tmp_path, "--dev-auth")
    alice = people(server, "alice")
    alice.sign_in()
    bob = people(server, "bob", relay=True)
    bob.sign_in()
    alice.start("team")
    bob.start("team")

    # Arrival order is not the server's order: the push of alice's message
    # reaches bob's page only after carol's, stored later.
    bob.relay.hold(lambda f: f.get("type") == "chatMessage" and f["data"]["text"] == "First")
    alice.say("First")
    expect(alice.message("First").locator(".receipt")).to_have_text("sent")
    with ChatSocket(server, "carol") as carol:
        carol.call("create", {"to": "team", "isGroup": True, "text": "Second"})
        expect(bob.message("Second")).to_be_visible()
        assert [frame["type"] for frame in bob.relay.held] == ["chatMessage"]
        bob.relay.release()
        expect(bob.texts).to_have_text(["First", "Second"])
        expect(alice.texts).to_have_text(["First", "Second"])

        # Three people sending at once: both windows show one order, the server's.
        burst = """([who, count]) => {
          const box = document.getElementById("message-text");
          for (let n = 1; n <= count; n++) {
            box.value = `${who} ${n}`;
            document.getElementById("composer").requestSubmit();
          }
        }"""
        count = 8
        ids = [carol.send("create", {"to": "team", "isGroup": True, "text": "carol 0"})]
        alice.page.evaluate(burst, ["alice", count])
        bob.page.evaluate(burst, ["bob", count])
        ids += [
            carol.send("create", {"to": "team", "isGroup": True, "text": f"carol {n}"})
            for n in range(1, count)
        ]
        for request_id in ids:
            carol.wait(request_id)
        total = 2 + 3 * count
        for person in (alice, bob):
            expect(person.texts).to_have_count(total)
            expect(person.message("sending…")).to_have_count(0)
        stored = carol.call("getMessages", {"with": "team", "isGroup": True, "limit": total})
        order = [m["text"] for m in reversed(stored)]
        assert sorted(order) == sorted(alice.texts.all_inner_texts())
        expect(alice.texts).to_have_text(order)
        expect(bob.texts).to_have_text(order)
        # Ties on createdAt broken by insertion, the same way the server does.
        created = [m["createdAt"] for m in reversed(stored)]
        assert created == sorted(created)


def test_multiline_messages_date_separators_and_reload(people, servers, tmp_path):
    day = 24 * 3600
    seed(
        tmp_path / "chat.sqlite3",
        {
            "messages": [
                {"from": "bob", "to": "alice", "text": "Three days ago", "ago": 3 * day},
                {"from": "alice", "to": "bob", "text": "Yesterday, me", "ago": day + 60},
                {"from": "bob", "to": "alice", "text": "Yesterday, bob", "ago": day},
            ]
        },
    )
    server = start_server(servers, tmp_path, "--dev-auth")
    alice = people(server, "alice")
    alice.sign_in()
    alice.open("u:bob")
    alice.box.fill("First line")
    alice.box.press("Shift+Enter")
    alice.box.press_sequentially("second line")
    expect(alice.box).to_have_value("First line\nsecond line")
    alice.box.press("Enter")
    expect(alice.box).to_have_value("")
    expect(alice.texts).to_have_text(
        ["Three days ago", "Yesterday, me", "Yesterday, bob", "First line\nsecond line"]
    )
    days = alice.page.locator("#messages .day:visible")
    three_days_ago = time.strftime("%A", time.gmtime(time.time() - 3 * day))
    expect(days).to_have_text([re.compile(three_days_ago), "Yesterday", "Today"])
    # The separators stand right above the first message of each day.
    entries = alice.page.locator("#messages .entry")
    expect(entries.nth(1).locator(".day")).to_have_text("Yesterday")
    expect(entries.nth(2).locator(".day")).to_be_hidden()

    # A reload reopens the same conversation, from the URL.
    assert alice.page.url.endswith("#u/bob")
    alice.page.reload()
    expect(alice.status).to_have_attribute("data-state", "connected")
    expect(alice.title).to_have_text("bob")
    expect(alice.texts).to_have_count(4)
    expect(alice.texts.last).to_have_text("First line\nsecond line")
    expect(days).to_have_count(3)
    alice.say("Still here")
    expect(alice.message("Still here").locator(".receipt")).to_have_text("sent")


def test_a_phone_sized_screen(people, servers, tmp_path):
    server = start_server(servers, tmp_path, "--dev-auth")
    with ChatSocket(server, "bob") as bob:
        bob.call("create", {"to": "alice", "text": "Hello from bob " + "very long " * 12})
    alice = people(server, "alice", device=PHONE)
    alice.sign_in()
    sidebar = alice.page.get_by_role("navigation", name="Conversations")
    back = alice.page.get_by_role("button", name="Back to conversations")
    expect(sidebar).to_be_visible()
    expect(alice.box).to_be_hidden()  # one pane at a time
    alice.conversation("u:bob").locator("button.conv").tap()
    expect(sidebar).to_be_hidden()
    expect(alice.box).to_be_visible()
    expect(alice.message("Hello from bob")).to_be_visible()
    # A touch keyboard has no Shift+Enter: Enter is a new line, the button sends.
    alice.box.fill("Hi from my phone")
    alice.box.press("Enter")
    alice.box.press_sequentially("second line")
    alice.page.get_by_role("button", name="Send").tap()
    expect(alice.texts.last).to_have_text("Hi from my phone\nsecond line")
    expect(alice.message("Hi from my phone").locator(".receipt")).to_have_text("sent")
    fits = "document.documentElement.scrollWidth <= window.innerWidth"
    assert alice.page.evaluate(fits)
    # Back to the list, by the page's button and by the browser's.
    back.tap()
    expect(sidebar).to_be_visible()
    expect(alice.box).to_be_hidden()
    alice.open("u:bob")
    expect(alice.box).to_be_visible()
    alice.page.go_back()
    expect(sidebar).to_be_visible()
    assert alice.page.evaluate(fits)


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
    dave.open("u:carol")
    older = dave.page.get_by_role("button", name="Load older messages")
    expect(dave.texts).to_have_count(30)
    expect(dave.texts.first).to_have_text("Message number 16")
    expect(dave.texts.last).to_have_text("Message number 45")
    expect(older).to_be_visible()
    dave.page.locator("#scroller").evaluate("scroller => { scroller.scrollTop = 0; }")
    expect(dave.texts).to_have_count(45)
    expect(dave.texts.first).to_have_text("Message number 1")
    expect(dave.texts.nth(15)).to_have_text("Message number 16")
    expect(older).to_be_hidden()


def test_errors_are_shown_in_words(people, servers, tmp_path):
    # Room for signing in and opening a conversation, then about one request a minute.
    server = start_server(servers, tmp_path, "--dev-auth", "--rate", "0.02", "--burst", "10")
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
