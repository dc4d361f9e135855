"""Make docs/demo.png: alice and bob chatting in the browser demo.

Run from the checkout: ``.venv/bin/python -m tests.browser.demo_screenshot``
(needs Debian's chromium and playwright, as the browser tests do).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from playwright.sync_api import expect, sync_playwright

from tests.browser.harness import (
    CHROMIUM,
    CHROMIUM_ARGS,
    VIEWPORT,
    ChatSocket,
)
from tests.processes import ROOT, ServerProcess, admin

CONVERSATION = [
    ("bob", "Morning! Did the deploy go out?"),
    ("alice", "Yes, at 9:40. Metrics look calm so far."),
    ("bob", "Nice. Any errors in the logs?"),
    ("alice", "Two storage timeouts during the migration, none since."),
    ("bob", "Good. I'll write it up for the team."),
    ("alice", "Thanks! I've put the dashboard link in #team."),
]


def main(output: Path) -> None:
    with tempfile.TemporaryDirectory() as directory:
        cwd = Path(directory)
        storage = f"sqlite:{cwd / 'chat.sqlite3'}"
        for name in ("alice", "bob", "carol", "dave"):
            admin("users", "add", name, "--storage", storage, cwd=cwd)
        admin("groups", "add", "team", "alice", "bob", "carol", "--storage", storage, cwd=cwd)
        server = ServerProcess.twistd("--dev-auth", "--storage", storage, cwd=cwd)
        try:
            people = {name: ChatSocket(server, name) for name in ("alice", "bob", "carol")}
            for sender, text in CONVERSATION[:-1]:
                other = "bob" if sender == "alice" else "alice"
                message = people[sender].call("create", {"to": other, "text": text})
                if sender == "alice":
                    people["bob"].call("read", {"id": message["_id"]})
            people["alice"].close()
            shoot(server, people, output)
            for socket in people.values():
                socket.close()
        finally:
            server.stop()


def shoot(server: ServerProcess, people: dict[str, ChatSocket], output: Path) -> None:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport=VIEWPORT)
        page.goto(f"{server.http_url}/")
        page.get_by_label("Your name").fill("alice")
        page.get_by_role("button", name="Sign in").click()
        expect(page.locator("#status")).to_have_attribute("data-state", "connected")
        page.get_by_role("navigation").get_by_role("button", name="bob").click()
        texts = page.locator("#messages .message .text")
        expect(texts).to_have_count(len(CONVERSATION) - 1)
        page.get_by_role("textbox", name="Message", exact=True).fill(CONVERSATION[-1][1])
        page.keyboard.press("Enter")
        last = page.locator("#messages .message").last
        expect(last.locator(".receipt")).to_have_text("sent")
        # bob reads it: alice's page shows the receipt.
        people["bob"].call("read", {"id": last.get_attribute("data-id")})
        expect(last.locator(".receipt")).to_have_text("✓ read")
        # carol writes in the group: alice sees it as unread there.
        people["carol"].call("create", {"to": "team", "isGroup": True, "text": "Link?"})
        expect(page.locator("#groups .badge")).to_have_text("1")
        page.get_by_role("textbox", name="Message", exact=True).fill("Great, see you at lunch")
        page.get_by_role("textbox", name="Message", exact=True).blur()
        page.screenshot(path=output)
        browser.close()


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "docs" / "demo.png")
