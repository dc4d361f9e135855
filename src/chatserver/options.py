"""Command-line options of ``twistd chatserver`` and ``python -m chatserver``."""

from __future__ import annotations

from twisted.python import usage

from chatserver.storage.loader import DEFAULT_STORAGE

DEFAULT_PORT = 8080
# Room for thousands of clients connecting at once (the OS caps it at somaxconn).
LISTEN_BACKLOG = 4096


class Options(usage.Options):
    """Options for running a chat server."""

    synopsis = "[options]"
    longdesc = "A WebSocket chat server speaking node-chat-server's protocol."

    optParameters = [
        ["port", "p", DEFAULT_PORT, "TCP port to listen on.", int],
        [
            "endpoint",
            "e",
            None,
            "Twisted server endpoint description, e.g. tcp:4001:interface=127.0.0.1 "
            "or ssl:4443:privateKey=key.pem:certKey=cert.pem (wins over --port).",
        ],
        [
            "storage",
            "s",
            DEFAULT_STORAGE,
            "memory, sqlite:PATH, mongodb://host:port/db, or package.module:name "
            "(a class or factory returning an IChatStorage provider).",
        ],
        ["actions", "a", None, "Custom actions: package.module:mapping."],
        [
            "open-actions",
            None,
            None,
            "Custom actions allowed before authorize: package.module:mapping.",
        ],
        ["max-history", None, 100, "Largest `limit` honoured by getMessages.", int],
    ]
    optFlags = [
        ["verbose", "v", "Log every request (action, user, outcome; never its content)."],
        [
            "dev-auth",
            None,
            "INSECURE: authorize anyone as the id or name they claim. For demos only.",
        ],
    ]

    def endpoint_description(self) -> str:
        """The endpoint to listen on, from ``--endpoint`` or ``--port``."""
        if self["endpoint"]:
            return self["endpoint"]
        return f"tcp:{self['port']}:backlog={LISTEN_BACKLOG}"

    def postOptions(self) -> None:
        if not 0 <= self["port"] <= 65535:
            raise usage.UsageError("--port must be between 0 and 65535")
        if self["max-history"] < 1:
            raise usage.UsageError("--max-history must be at least 1")
