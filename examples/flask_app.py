"""A Flask application that already signs its users in, adding chat to it.

The chat server trusts the application's sign-in: the application mints a
short JWT for its signed-in user, the browser hands it to the chat server, and
the application's backend posts to the chat through the HTTP server API,
without holding a WebSocket.

- ``GET /chat-token``: a JWT for the signed-in user (``sub``, ``name``,
  ``exp`` in 10 minutes, ``aud``, ``iss``). The browser authorizes with it,
  and fetches a fresh one before it expires (the chat server closes the
  connection with 4001 "token expired" at ``exp``)::

      const {token} = await (await fetch("/chat-token")).json();
      socket.send(JSON.stringify({type: "authorize", data: {token}, id: 1}));

- ``POST /orders/<order>/ship``: ships an order, and tells its buyer in the
  chat: a message from the user ``shop`` (stored, so it is in their history
  and conversation list), and a ``notification`` push.

Run it (one terminal each)::

    python3 -c "import secrets; print(secrets.token_urlsafe(32))" > jwt.secret
    python3 -c "import secrets; print(secrets.token_urlsafe(32))" > api.key
    twistd -n chatserver --port 4001 --jwt-key jwt.secret --jwt-audience chat \\
        --jwt-issuer shop --api-key-file api.key
    CHAT_JWT_SECRET_FILE=jwt.secret CHAT_API_KEY_FILE=api.key \\
        flask --app examples.flask_app run

Then ``curl -c jar 'localhost:5000/login?user=alice'``, ``curl -b jar
localhost:5000/chat-token`` and ``curl -b jar -X POST
localhost:5000/orders/42/ship``. The sign-in here is a stand-in for your own.
"""

from __future__ import annotations

import json
import os
import secrets
import time
import urllib.request
from pathlib import Path
from typing import Any

import jwt
from flask import Flask, abort, jsonify, request, session

#: The chat server checks these with --jwt-audience and --jwt-issuer.
AUDIENCE = "chat"
ISSUER = "shop"
#: Long enough to connect; short enough that a leaked token soon expires.
TOKEN_LIFETIME = 600

# A stand-in for the application's user table.
USERS = {"alice": "Alice", "bob": "Bob"}
ORDERS = {"42": "alice", "43": "bob"}


def mint_chat_token(
    user_id: str, name: str, secret: bytes, lifetime: float = TOKEN_LIFETIME
) -> str:
    """A JWT the chat server (``--jwt-key`` with this secret) accepts as
    ``user_id``; ``name`` is the display name others see."""
    now = int(time.time())
    claims = {
        "sub": user_id,
        "name": name,
        "aud": AUDIENCE,
        "iss": ISSUER,
        "iat": now,
        "exp": now + lifetime,
    }
    return jwt.encode(claims, secret, algorithm="HS256")


class ChatAPI:
    """The chat server's HTTP server API, through the standard library."""

    def __init__(self, url: str, key: str, timeout: float = 5.0) -> None:
        self.url = url.rstrip("/")
        self.key = key
        self.timeout = timeout

    def call(self, path: str, body: dict[str, Any]) -> Any:
        """POST ``body`` to ``/api/<path>``; the answer's JSON.

        :raise urllib.error.HTTPError: with the server's ``{"error",
            "message"}`` as its body, when the call is refused.
        """
        request = urllib.request.Request(
            f"{self.url}/api/{path}",
            data=json.dumps(body).encode(),
            headers={"Authorization": f"Bearer {self.key}", "Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=self.timeout) as response:
            return json.load(response)

    def post_message(self, sender: str, to: str, text: str, **fields: Any) -> dict[str, Any]:
        """Store a message from ``sender`` and push it, as their own would be."""
        return self.call("messages", {"from": sender, "to": to, "text": text, **fields})

    def send(self, event_type: str, data: Any, users: list[str]) -> int:
        """Push ``{"type": event_type, "data": data}`` to ``users``."""
        return int(
            self.call("send", {"type": event_type, "data": data, "users": users})["delivered"]
        )


def _read(path_variable: str) -> str:
    path = os.environ.get(path_variable)
    if not path:
        raise RuntimeError(f"set {path_variable} to the file the chat server reads")
    return Path(path).read_text().strip()


def create_app(config: dict[str, Any] | None = None) -> Flask:
    """The application. ``config`` (or the environment) gives
    ``CHAT_JWT_SECRET``, ``CHAT_API_KEY`` and ``CHAT_API_URL``."""
    app = Flask(__name__)
    app.config["SECRET_KEY"] = secrets.token_hex(16)
    app.config["CHAT_API_URL"] = os.environ.get("CHAT_API_URL", "http://127.0.0.1:4001")
    app.config.update(config or {})
    if "CHAT_JWT_SECRET" not in app.config:
        app.config["CHAT_JWT_SECRET"] = _read("CHAT_JWT_SECRET_FILE")
    if "CHAT_API_KEY" not in app.config:
        app.config["CHAT_API_KEY"] = _read("CHAT_API_KEY_FILE")
    chat = ChatAPI(app.config["CHAT_API_URL"], app.config["CHAT_API_KEY"])

    def signed_in() -> str:
        user_id = session.get("user_id")
        if user_id not in USERS:
            abort(401)
        return str(user_id)

    @app.get("/login")
    def login() -> Any:
        # Your application's real sign-in goes here.
        user_id = request.args.get("user", "")
        if user_id not in USERS:
            abort(403)
        session["user_id"] = user_id
        return jsonify({"user": user_id})

    @app.get("/chat-token")
    def chat_token() -> Any:
        user_id = signed_in()
        secret = app.config["CHAT_JWT_SECRET"].encode()
        return jsonify({"token": mint_chat_token(user_id, USERS[user_id], secret)})

    @app.post("/orders/<order>/ship")
    def ship(order: str) -> Any:
        signed_in()
        buyer = ORDERS.get(order)
        if buyer is None:
            abort(404)
        message = chat.post_message(
            "shop", buyer, f"Your order {order} has shipped.", clientMessageId=f"ship-{order}"
        )
        chat.send("notification", {"order": order, "status": "shipped"}, [buyer])
        return jsonify({"shipped": order, "message": message.get("_id", message.get("id"))})

    return app
