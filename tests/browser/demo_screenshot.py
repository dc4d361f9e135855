"""Make docs/demo.png: alice's view of the browser demo, mid-conversation.

The script sets the scene itself, whatever ``make run`` provides: an SQLite
database with named people, a named group and a history reaching back to
yesterday (through the store, see :mod:`tests.browser.seed`); a server
(``--dev-auth --directory all``); bob and carol online; unread messages in
the group and from carol; alice's message read by bob as she watches, and bob
typing his answer.

Run from the checkout: ``.venv/bin/python -m tests.browser.demo_screenshot``
(needs Debian's chromium and playwright, as the browser tests do).
"""

from __future__ import annotations

import re
import sys
import tempfile
from pathlib import Path

from playwright.sync_api import expect, sync_playwright

from tests.browser.harness import CHROMIUM, CHROMIUM_ARGS, VIEWPORT, ChatSocket, seed
from tests.processes import ROOT, ServerProcess

MINUTE = 60
DAY = 24 * 3600

PEOPLE = [
    {"id": "alice", "name": "Alice Martin"},
    {"id": "bob", "name": "Bob Stone"},
    {"id": "carol", "name": "Carol Diaz"},
    {"id": "dave", "name": "Dave Kim"},
    {"id": "erin", "name": "Erin Wu"},
]
GROUPS = [
    {"id": "team", "name": "Platform team", "members": ["alice", "bob", "carol", "dave"]},
]


def direct(sender: str, to: str, text: str, ago: float, read: bool = True) -> dict:
    return {"from": sender, "to": to, "text": text, "ago": ago, "readBy": [to] if read else []}


def group(sender: str, text: str, ago: float, read_by: list[str]) -> dict:
    return {"from": sender, "to": "team", "isGroup": True, "text": text, "ago": ago,
            "readBy": read_by}  # fmt: skip


HISTORY = [
    direct("erin", "alice", "Welcome aboard! Ping me if the VPN acts up.", DAY + 5 * 3600),
    direct("bob", "alice", "Can you review the cursor PR before you leave?", DAY + 2 * 3600),
    direct("alice", "bob", "Done: two small comments, otherwise good to go.", DAY + 3600),
    direct("alice", "dave", "Thanks for the index fix!", 3 * 3600),
    group("dave", "Stand-up moves to 10:15 tomorrow.", 40 * MINUTE, ["alice", "bob", "carol"]),
    direct("bob", "alice", "Morning! Did the deploy go out?", 30 * MINUTE),
    direct("alice", "bob", "Yes, twenty minutes ago. Metrics look calm so far.", 28 * MINUTE),
    direct("bob", "alice", "Nice. Any errors in the logs?", 25 * MINUTE),
    direct(
        "alice",
        "bob",
        "Two storage timeouts during the migration.\nNone since, and p99 is back to 1.5 ms.",
        24 * MINUTE,
    ),
    group("carol", "The new dashboard is up.", 12 * MINUTE, ["bob"]),
    group("bob", "Looks great. Can we add the reconnect rate?", 9 * MINUTE, ["carol"]),
    direct("carol", "alice", "Lunch at 12:30?", 6 * MINUTE, read=False),
    group("carol", "Who takes the on-call handover tonight?", 3 * MINUTE, []),
]


def main(output: Path) -> None:
    with tempfile.TemporaryDirectory() as directory:
        cwd = Path(directory)
        database = cwd / "chat.sqlite3"
        seed(database, {"users": PEOPLE, "groups": GROUPS, "messages": HISTORY})
        server = ServerProcess.twistd(
            "--dev-auth", "--directory", "all", "--storage", f"sqlite:{database}", cwd=cwd
        )
        try:
            with ChatSocket(server, "bob") as bob, ChatSocket(server, "carol"):
                shoot(server, bob, output)
        finally:
            server.stop()


def shoot(server: ServerProcess, bob: ChatSocket, output: Path) -> None:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport=VIEWPORT)
        page.goto(f"{server.http_url}/")
        page.get_by_label("Your name").fill("alice")
        page.get_by_role("button", name="Sign in").click()
        expect(page.locator("#status")).to_have_attribute("data-state", "connected")
        conversations = page.locator("#conversations li")
        expect(conversations).to_have_count(5)
        expect(page.locator('#conversations li[data-key="g:team"] .badge')).to_have_text("3")
        page.locator('#conversations li[data-key="u:bob"] button').click()
        expect(page.locator("#messages .message")).to_have_count(6)
        online = re.compile(r"\bonline\b")
        for who in ("bob", "carol"):
            dot = page.locator(f'#conversations li[data-key="u:{who}"] .dot')
            expect(dot).to_have_class(online)

        box = page.get_by_role("textbox", name="Message", exact=True)
        box.fill("Great, I'll write it up for the team.")
        box.press("Enter")
        last = page.locator("#messages .message").last
        expect(last.locator(".receipt")).to_have_text("sent")
        # bob reads it and starts answering, as alice watches.
        bob.call("read", {"id": last.get_attribute("data-id")})
        expect(last.locator(".receipt")).to_have_text("✓ read")
        bob.call("typing", {"to": "alice"})
        expect(page.locator("#typing")).to_have_text("Bob Stone is typing…")
        box.fill("Thanks! Lunch with Carol at 12:30, coming?")
        box.blur()
        page.mouse.move(VIEWPORT["width"] - 1, VIEWPORT["height"] - 1)  # no hover
        page.screenshot(path=output)
        browser.close()


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "docs" / "demo.png")
