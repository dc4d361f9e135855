"""Command-line options of ``twistd chatserver`` and ``python -m chatserver``."""

from __future__ import annotations

import sys
from dataclasses import fields
from typing import Any

from twisted.python import usage

from chatserver.limits import Limits
from chatserver.storage.loader import DEFAULT_STORAGE

DEFAULT_PORT = 8080
# Room for thousands of clients connecting at once (the OS caps it at somaxconn).
LISTEN_BACKLOG = 4096


LIMIT_HELP = {
    "max_frame_bytes": "Largest message a client may send; larger closes with 1009",
    "max_request_bytes": "Largest request answered; larger gets error tooLarge",
    "max_fragments": "Frames one message may be split into; more closes with 1009",
    "message_timeout": "Seconds a fragmented message may take to complete; longer closes with 1008",
    "authorize_timeout": "Seconds to authorize before the connection is closed with 1008",
    "rate": "Requests per second allowed per connection, sustained",
    "burst": "Requests a connection may send at once above --rate",
    "max_strikes": "Rate-limited requests after which the connection is closed",
    "max_in_flight": "Requests of one connection awaiting their reply; more get rateLimited",
    "max_connections": "Open connections in total; more are refused with HTTP 503",
    "max_pending_connections": "Connections not yet authorized; past it the oldest is closed",
    "max_connections_per_user": "Open connections per user; more are closed with 1008",
    "max_buffered_bytes": "Bytes queued for a client that stopped reading before it is dropped",
    "ping_interval": "Seconds between the server's pings",
    "ping_timeout": "Seconds to answer a ping before the connection is dropped",
    "http_head_timeout": "Seconds to send a whole HTTP request head",
    "max_http_body_bytes": "Largest HTTP request body; larger gets 413",
    "storage_timeout": "Seconds a storage call may take before the request fails",
    "shutdown_timeout": "Seconds a stopping server waits for requests and closes",
}


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
        [
            "redis",
            None,
            None,
            "Cluster mode: share pushes and presence with other nodes through this Redis, "
            "e.g. redis://127.0.0.1:6379/0 (add ?prefix=NAME to share one Redis "
            "between deployments).",
        ],
        [
            "workers",
            None,
            1,
            "Run this many server processes sharing --port (needs --redis).",
            int,
        ],
        [
            "directory",
            None,
            "contacts",
            "The getUsersAndGroups action: contacts (each user's contacts and groups), "
            "all (every user: for demos) or none.",
        ],
        [
            "allowed-origins",
            None,
            None,
            "Comma-separated origins whose web pages may connect, e.g. "
            "https://chat.example.com,https://*.example.com (default: any).",
        ],
        [
            "jwt-key",
            None,
            None,
            'Sign-in with JWTs ({"token": "<jwt>"}) checked with the key in this file: '
            "an HMAC secret (HS256) or a PEM public key (RS256, ES256/384/512, EdDSA). "
            "Replaces the storage's authorize; the storage keeps messages and groups.",
        ],
        ["jwt-audience", None, None, "The aud a JWT must carry (default: none)."],
        ["jwt-issuer", None, None, "The iss a JWT must carry (default: not checked)."],
        [
            "jwt-leeway",
            None,
            0.0,
            "Seconds of clock difference allowed on a JWT's nbf and iat.",
            float,
        ],
        [
            "api-key-file",
            None,
            None,
            "Serve the HTTP server API under /api to callers with a key from this file "
            "(one key per line, at least 32 characters each).",
        ],
    ]
    # One option per limit, named after it: --max-frame-bytes, --rate, ...
    optParameters += [
        [
            f.name.replace("_", "-"),
            None,
            f.default,
            LIMIT_HELP[f.name] + " (0: no limit).",
            type(f.default),
        ]
        for f in fields(Limits)
    ]
    optFlags = [
        ["verbose", "v", "Log every request (action, user, outcome; never its content)."],
        [
            "dev-auth",
            None,
            "INSECURE: authorize anyone as the id or name they claim. For demos only.",
        ],
        ["no-web", None, "Do not serve the web chat page (health and metrics stay)."],
        [
            "reuse-port",
            None,
            "Listen on --port with SO_REUSEPORT, beside other processes (as --workers does).",
        ],
    ]

    def parseOptions(self, options: list[str] | None = None) -> None:
        # Kept so that --workers can start its workers with the same options.
        self.argv = list(sys.argv[1:] if options is None else options)
        super().parseOptions(options)

    def endpoint_description(self) -> str:
        """The endpoint to listen on, from ``--endpoint`` or ``--port``."""
        if self["endpoint"]:
            return str(self["endpoint"])
        return f"tcp:{self['port']}:backlog={LISTEN_BACKLOG}"

    def postOptions(self) -> None:
        if not 0 <= self["port"] <= 65535:
            raise usage.UsageError("--port must be between 0 and 65535")
        if self["max-history"] < 1:
            raise usage.UsageError("--max-history must be at least 1")
        try:
            self.limits = Limits(**{f.name: self[f.name.replace("_", "-")] for f in fields(Limits)})
        except ValueError as e:
            raise usage.UsageError(str(e)) from e
        if self["workers"] < 1:
            raise usage.UsageError("--workers must be at least 1")
        if self["workers"] > 1 and not self["redis"]:
            raise usage.UsageError(
                "--workers needs --redis: workers reach each other's users through Redis"
            )
        if self["workers"] > 1 and self["storage"] == "memory":
            # Each worker would hold a store of its own: a message stored by
            # one would be missing from another's history.
            raise usage.UsageError(
                "--workers needs a store the workers share: use --storage sqlite:FILE or "
                "mongodb://..., not memory"
            )
        if (self["workers"] > 1 or self["reuse-port"]) and (self["endpoint"] or not self["port"]):
            raise usage.UsageError("--workers and --reuse-port need a fixed --port (no --endpoint)")
        if self["directory"] not in ("contacts", "all", "none"):
            raise usage.UsageError("--directory must be contacts, all or none")
        origins = self["allowed-origins"]
        self.allowed_origins = (
            [o.strip() for o in origins.split(",") if o.strip()] if origins else None
        )
        self.jwt_authorizer = self._jwt_authorizer()
        self.api_keys = self._api_keys()

    def _jwt_authorizer(self) -> Any:
        """The JWT authorizer ``--jwt-key`` asks for, or None.

        Key files are read here, while options are checked, so that a
        mistake stops start-up with one line (and before ``--workers``
        starts any worker).
        """
        path = self["jwt-key"]
        if path is None:
            for name in ("jwt-audience", "jwt-issuer", "jwt-leeway"):
                if self[name]:
                    raise usage.UsageError(f"--{name} needs --jwt-key")
            return None
        if self["dev-auth"]:
            raise usage.UsageError("--jwt-key and --dev-auth both decide who signs in: choose one")
        from chatserver.storage.jwtauth import JWTAuthorizer

        try:
            return JWTAuthorizer.from_file(
                path,
                audience=self["jwt-audience"],
                issuer=self["jwt-issuer"],
                leeway=self["jwt-leeway"],
            )
        except ValueError as e:
            raise usage.UsageError(f"--jwt-key: {e}") from None

    def _api_keys(self) -> list[str] | None:
        """The keys of ``--api-key-file``, or None."""
        path = self["api-key-file"]
        if path is None:
            return None
        from chatserver.http_api import load_api_keys

        try:
            return load_api_keys(path)
        except ValueError as e:
            raise usage.UsageError(f"--api-key-file: {e}") from None


class CommandLineOptions(Options):
    """:class:`Options` as typed on a command line (``twistd chatserver``,
    ``python -m chatserver``): a mistake is one line on standard error and
    exit status 2, not twistd's whole help text followed by the error."""

    def parseOptions(self, options: list[str] | None = None) -> None:
        try:
            super().parseOptions(options)
        except usage.UsageError as e:
            sys.stderr.write(f"chatserver: {e} (see --help)\n")
            sys.stderr.flush()
            raise SystemExit(2) from None
