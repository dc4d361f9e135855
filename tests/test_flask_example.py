"""examples/flask_app.py against a real chat server process: a Flask backend
mints its signed-in user's JWT, the user signs in to the chat with it, and the
backend posts a message and a push through the HTTP server API."""

from __future__ import annotations

import secrets

import pytest_twisted
from examples.flask_app import create_app, mint_chat_token

from chatserver.client import connect
from tests.processes import ServerProcess


@pytest_twisted.ensureDeferred
async def test_the_flask_backend_signs_users_in_and_posts_to_them(tmp_path):
    secret, key = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    (tmp_path / "jwt.secret").write_text(secret + "\n")
    (tmp_path / "api.key").write_text(key + "\n")
    server = ServerProcess.twistd(
        "--storage",
        "memory",
        "--jwt-key",
        "jwt.secret",
        "--jwt-audience",
        "chat",
        "--jwt-issuer",
        "shop",
        "--api-key-file",
        "api.key",
        cwd=tmp_path,
    )
    app = create_app(
        {"CHAT_JWT_SECRET": secret, "CHAT_API_KEY": key, "CHAT_API_URL": server.http_url}
    )
    browser = app.test_client()
    try:
        assert browser.get("/chat-token").status_code == 401
        assert browser.get("/login?user=alice").status_code == 200
        token = browser.get("/chat-token").get_json()["token"]
        alice = await connect(server.url)
        user = await alice.authorize(token=token)
        assert (user["id"], user["name"]) == ("alice", "Alice")

        shipped = browser.post("/orders/42/ship")
        assert shipped.status_code == 200, shipped.get_data(as_text=True)
        message = await alice.next_push("chatMessage")
        assert (message["from"], message["text"]) == ("shop", "Your order 42 has shipped.")
        assert message["_id"] == shipped.get_json()["message"]
        assert await alice.next_push("notification") == {"order": "42", "status": "shipped"}
        history = await alice.get_messages(**{"with": "shop"})
        assert [m["_id"] for m in history] == [message["_id"]]
        # Shipping again is a retry: the same message, not a second one.
        assert browser.post("/orders/42/ship").get_json()["message"] == message["_id"]
        alice.sendClose()
        await alice.closed
    finally:
        server.stop()


def test_minted_tokens_carry_what_the_server_checks():
    import jwt

    token = mint_chat_token("alice", "Alice", b"x" * 32)
    claims = jwt.decode(token, b"x" * 32, algorithms=["HS256"], audience="chat", issuer="shop")
    assert claims["sub"] == "alice" and claims["exp"] - claims["iat"] == 600
