"""The HTTP server API: what an application's backend does without a WebSocket.

Mounted under ``/api`` on the chat port when the server is given API keys
(``--api-key-file``). Every call carries ``Authorization: Bearer <key>``,
compared with each key in constant time; a JSON body (``Content-Type:
application/json``, bounded by the site's ``max_http_body_bytes``) checked
under the wire's rules and then strictly for its shape. Answers are JSON; a
failure is ``{"error": code, "message": words}`` with the WebSocket protocol's
codes, never a traceback.

- ``POST /api/send`` ``{"type", "data", "users"}``: push to those users on
  every node → ``{"delivered": n}`` (connections reached on this node).
- ``POST /api/broadcast`` ``{"type", "data"}``: push to everyone signed in.
- ``POST /api/messages`` ``{"from", "to", "isGroup"?, ...}``: store a message
  as ``from`` and push it, through the handler's own ``create`` path.
- ``POST /api/disconnect`` ``{"users", "reason"?}``: end their sessions on
  every node (close 4000).
- ``GET /api/presence?ids=a,b``: ``{"a": true, "b": false}`` (``POST`` with
  ``{"users": [...]}`` for more than a URL holds).
- ``GET /api/openapi.json``: the OpenAPI description (needs no key).
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from prometheus_client.core import CounterMetricFamily, Metric
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure
from twisted.web.resource import IResource, Resource
from twisted.web.server import NOT_DONE_YET, Request

from chatserver import errors, wire
from chatserver.errors import ChatError
from chatserver.handlers.chat import MAX_ID_LENGTH, ChatHandler, as_id
from chatserver.logs import Throttle, escape
from chatserver.server import ServerAPI

#: The most users one call may name.
MAX_USERS = 1000
#: The longest event type a push may have (as for an action's name).
MAX_TYPE_LENGTH = wire.MAX_ACTION_LENGTH
#: The longest close reason, in characters (a Close frame carries its first
#: 123 UTF-8 bytes).
MAX_REASON_LENGTH = 123
#: The longest ``ids`` of ``GET /api/presence``, in characters: with each
#: percent-encoded as up to 12 bytes, the request head stays under the 16 KiB
#: an HTTP head may have.
MAX_QUERY_IDS_LENGTH = 1024
#: The shortest API key accepted.
MIN_KEY_LENGTH = 32
DEFAULT_DISCONNECT_REASON = "session ended by the server"
_KEY_HINT = 'python3 -c "import secrets; print(secrets.token_urlsafe(32))"'

#: The HTTP status of each error code.
STATUS = {
    errors.INVALID_REQUEST: 400,
    errors.INVALID_ID: 400,
    errors.INVALID_MESSAGE: 400,
    errors.INVALID_QUERY: 400,
    errors.AUTHORIZATION_FAILED: 401,
    errors.NOT_GROUP_MEMBER: 403,
    errors.NOT_FOUND: 404,
    errors.UNKNOWN_ACTION: 404,
    errors.CONFLICT: 409,
    errors.TOO_LARGE: 413,
    errors.RATE_LIMITED: 429,
    errors.INTERNAL_ERROR: 500,
    errors.ACTION_FAILED: 500,
    errors.NOT_SUPPORTED: 501,
    errors.STORAGE_ERROR: 503,
    errors.STORAGE_TIMEOUT: 504,
}


class APIError(ChatError):
    """A call refused before it reached the handler, with its HTTP status."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(code, message)
        self.status = status


def _invalid(message: str, code: str = errors.INVALID_REQUEST) -> APIError:
    return APIError(400, code, message)


# -- the keys ---------------------------------------------------------------


def check_api_key(key: str) -> str:
    """``key`` if it may be an API key: at least 32 printable ASCII
    characters, no spaces (it travels in a header).

    :raise ValueError: saying what is wrong with it, never the key.
    """
    if not all("!" <= c <= "~" for c in key):
        raise ValueError("an API key may only hold printable ASCII characters, without spaces")
    if len(key) < MIN_KEY_LENGTH:
        raise ValueError(
            f"an API key must be at least {MIN_KEY_LENGTH} characters long "
            f"(make one with: {_KEY_HINT})"
        )
    return key


def load_api_keys(path: str | Path) -> list[str]:
    """The API keys in file ``path``: one per line (several let a key be
    replaced without downtime); blank lines and lines starting with ``#``
    are skipped.

    :raise ValueError: for a file that is missing, unreadable, empty or
        holds an unusable key, in one sentence naming it.
    """
    try:
        text = Path(path).read_text("utf-8")
    except (OSError, UnicodeDecodeError) as e:
        why = e.strerror if isinstance(e, OSError) else "it is not UTF-8 text"
        raise ValueError(f"cannot read the API key file {str(path)!r}: {why}") from None
    keys = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        try:
            keys.append(check_api_key(line))
        except ValueError as e:
            raise ValueError(f"the API key file {str(path)!r}, line {number}: {e}") from None
    if not keys:
        raise ValueError(f"the API key file {str(path)!r} holds no key")
    return keys


class APIKeys:
    """The keys that may call the API."""

    def __init__(self, keys: Iterable[str]) -> None:
        """:raise ValueError: if there is no key, or one is unusable
        (see :func:`check_api_key`)."""
        self._keys = [check_api_key(k).encode("ascii") for k in keys]
        if not self._keys:
            raise ValueError("the server API needs at least one key")

    def allow(self, request: Request) -> bool:
        """Whether ``request`` carries exactly one ``Authorization: Bearer
        <key>`` header with one of the keys.

        Every key is compared, each in constant time, so the time taken
        tells nothing of how close a guess came, nor which key matched.
        """
        headers = request.requestHeaders.getRawHeaders(b"authorization") or []
        if len(headers) != 1:
            return False
        scheme, _, given = headers[0].strip().partition(b" ")
        if scheme.lower() != b"bearer":
            return False
        given = given.strip()
        matched = False
        for key in self._keys:
            matched |= hmac.compare_digest(given, key)
        return matched


# -- checking what a call sent ------------------------------------------------


def _fields(body: Mapping[str, Any], allowed: frozenset[str], required: Iterable[str]) -> None:
    unknown = sorted(set(body) - allowed)
    if unknown:
        allowed_list = ", ".join(sorted(allowed))
        raise _invalid(f"unknown field {escape(unknown[0])}: the fields are {allowed_list}")
    for name in required:
        if name not in body:
            raise _invalid(f"`{name}` is required")


def _event_type(body: Mapping[str, Any]) -> str:
    value = body["type"]
    if type(value) is not str or not 0 < len(value) <= MAX_TYPE_LENGTH:
        raise _invalid(f"`type` must be a string of 1 to {MAX_TYPE_LENGTH} characters")
    return value


def _user_ids(values: object, name: str) -> list[str]:
    if type(values) is not list:
        raise _invalid(f"`{name}` must be an array of user ids")
    if len(values) > MAX_USERS:
        raise _invalid(f"`{name}` may name at most {MAX_USERS} users")
    ids = []
    for value in values:
        user_id = as_id(value)
        if user_id is None:
            raise _invalid(
                f"`{name}` must hold user ids: strings of 1 to {MAX_ID_LENGTH} characters "
                "or integers"
            )
        ids.append(user_id)
    return list(dict.fromkeys(ids))


def _reason(body: Mapping[str, Any]) -> str:
    reason = body.get("reason", DEFAULT_DISCONNECT_REASON)
    if type(reason) is not str or len(reason) > MAX_REASON_LENGTH:
        raise _invalid(f"`reason` must be a string of at most {MAX_REASON_LENGTH} characters")
    return reason


def _query_ids(args: Mapping[bytes, Sequence[bytes]]) -> list[str]:
    values = args.get(b"ids")
    if not values or len(values) > 1:
        raise _invalid("give `ids` once: user ids separated by commas")
    try:
        text = values[0].decode("utf-8")
    except UnicodeDecodeError:
        raise _invalid("`ids` must be UTF-8") from None
    if len(text) > MAX_QUERY_IDS_LENGTH:
        raise _invalid(
            f"`ids` may be at most {MAX_QUERY_IDS_LENGTH} characters: "
            'POST /api/presence with {"users": [...]} asks about more'
        )
    ids = text.split(",")
    for user_id in ids:
        if not 0 < len(user_id) <= MAX_ID_LENGTH:
            raise _invalid(f"each of `ids` must be 1 to {MAX_ID_LENGTH} characters")
    return list(dict.fromkeys(ids))


def _client_message_id(body: Mapping[str, Any]) -> None:
    if "clientMessageId" in body:
        value = body["clientMessageId"]
        if type(value) is not str or not 0 < len(value) <= MAX_ID_LENGTH:
            raise _invalid(
                f"`clientMessageId` must be a string of 1 to {MAX_ID_LENGTH} characters",
                errors.INVALID_MESSAGE,
            )


SEND_FIELDS = frozenset({"type", "data", "users"})
BROADCAST_FIELDS = frozenset({"type", "data"})
DISCONNECT_FIELDS = frozenset({"users", "reason"})
PRESENCE_FIELDS = frozenset({"users"})


class ServerCalls:
    """What each call does, once its request is known to be well formed."""

    def __init__(self, handler: ChatHandler, api: ServerAPI) -> None:
        self._handler = handler
        self._api = api

    def send(self, body: dict[str, Any]) -> dict[str, int]:
        _fields(body, SEND_FIELDS, ("type", "users"))
        event_type = _event_type(body)
        users = _user_ids(body["users"], "users")
        return {"delivered": self._api.send(event_type, body.get("data"), users)}

    def broadcast(self, body: dict[str, Any]) -> dict[str, int]:
        _fields(body, BROADCAST_FIELDS, ("type",))
        return {"delivered": self._api.broadcast(_event_type(body), body.get("data"))}

    def messages(self, body: dict[str, Any]) -> Deferred[Any]:
        sender = as_id(body.get("from"))
        if sender is None:
            raise _invalid(
                f"`from` must be the sender's user id (1 to {MAX_ID_LENGTH} characters)",
                errors.INVALID_MESSAGE,
            )
        if "isGroup" in body and type(body["isGroup"]) is not bool:
            raise _invalid("`isGroup` must be true or false", errors.INVALID_MESSAGE)
        _client_message_id(body)
        message = {k: v for k, v in body.items() if k != "from"}
        return self._handler.create_as(sender, message)

    def disconnect(self, body: dict[str, Any]) -> dict[str, int]:
        _fields(body, DISCONNECT_FIELDS, ("users",))
        users = _user_ids(body["users"], "users")
        return {"disconnected": self._api.end_sessions(users, _reason(body))}

    def presence(self, args: Mapping[bytes, Sequence[bytes]]) -> Deferred[Any]:
        return self._online(_query_ids(args))

    def presence_of(self, body: dict[str, Any]) -> Deferred[Any]:
        _fields(body, PRESENCE_FIELDS, ("users",))
        return self._online(_user_ids(body["users"], "users"))

    def _online(self, ids: list[str]) -> Deferred[Any]:
        # Presence may become a question to the cluster: take either answer.
        return maybeDeferred(self._api.online, ids)


# -- the resources ------------------------------------------------------------


def _write_json(request: Request, status: int, body: object) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"application/json")
    request.setHeader(b"cache-control", b"no-store")
    return wire.encode(body)


def _is_json(content_type: bytes | None) -> bool:
    if content_type is None:
        return False
    media = content_type.split(b";", 1)[0].strip().lower()
    return media == b"application/json"


class _Answer(Resource):
    """A fixed JSON answer to any method (an error before any call)."""

    isLeaf = True

    def __init__(self, error: APIError, headers: Mapping[bytes, bytes] | None = None) -> None:
        super().__init__()
        self.error = error
        self.headers = dict(headers or {})

    def render(self, request: Request) -> bytes:
        for name, value in self.headers.items():
            request.setHeader(name, value)
        return _write_json(
            request, self.error.status, {"error": self.error.code, "message": self.error.message}
        )


NO_SUCH_CALL = APIError(404, errors.UNKNOWN_ACTION, "no such API call")
UNAUTHORIZED = APIError(
    401, errors.AUTHORIZATION_FAILED, "send the API key as `Authorization: Bearer <key>`"
)


class _Call(Resource):
    """One API call: its methods, its input (a JSON object for POST, the
    query string for GET), and the answer of the method's function to it."""

    isLeaf = True

    def __init__(
        self, root: ServerAPIResource, name: str, methods: Mapping[bytes, Callable[[Any], object]]
    ) -> None:
        super().__init__()
        self.root = root
        self.name = name
        self.methods = dict(methods)
        self.allow = b", ".join(sorted(self.methods))

    def render(self, request: Request) -> int | bytes:
        if request.postpath:
            return self._refuse(request, NO_SUCH_CALL)
        assert request.method is not None
        run = self.methods.get(request.method)
        if run is None:
            request.setHeader(b"allow", self.allow)
            return self._refuse(
                request,
                APIError(405, errors.INVALID_REQUEST, f"use {self.allow.decode()} for this call"),
            )
        given: object
        if request.method == b"POST":
            if not _is_json(request.getHeader(b"content-type")):
                return self._refuse(
                    request,
                    APIError(415, errors.INVALID_REQUEST, "send a JSON body (application/json)"),
                )
            assert request.content is not None
            try:
                given = wire.parse_document(request.content.getvalue())
            except ValueError as e:
                return self._refuse(request, _invalid(str(e)))
            if type(given) is not dict:
                return self._refuse(request, _invalid("the body must be a JSON object"))
        else:
            given = request.args or {}
        gone: list[bool] = []
        request.notifyFinish().addErrback(lambda _: gone.append(True))
        d = maybeDeferred(run, given)
        self.root.track(d)
        d.addBoth(self._answer, request, gone)
        return NOT_DONE_YET

    def _refuse(self, request: Request, error: APIError) -> bytes:
        self.root.count(self.name, error.code)
        return _write_json(request, error.status, {"error": error.code, "message": error.message})

    def _failed(self, failure: Failure) -> tuple[int, str, object]:
        error = failure.value
        if isinstance(error, APIError):
            return error.status, error.code, {"error": error.code, "message": error.message}
        if isinstance(error, ChatError):
            code, message = str(error.code), str(error.message or error.code)
            return STATUS.get(code, 400), code, {"error": code, "message": message}
        self.root.throttle.failure(
            f"api:{self.name}", "API call {call} failed", failure, call=self.name
        )
        code = errors.INTERNAL_ERROR
        return 500, code, {"error": code, "message": "internal error"}

    def _answer(self, result: object, request: Request, gone: list[bool]) -> None:
        if isinstance(result, Failure):
            status, code, body = self._failed(result)
        else:
            status, code, body = 200, "ok", result
        try:
            payload = _write_json(request, status, body)
        except (TypeError, ValueError):
            # A store's answer JSON cannot carry (e.g. an integer beyond 64 bits).
            self.root.throttle.error(
                f"api-encode:{self.name}",
                "the answer to API call {call} cannot be encoded",
                call=self.name,
            )
            status, code = 500, errors.INTERNAL_ERROR
            payload = _write_json(request, status, {"error": code, "message": "internal error"})
        self.root.count(self.name, code)
        if not gone:  # the client may have hung up meanwhile
            request.write(payload)
            request.finish()


class ServerAPIResource(Resource):
    """``/api``: checks the key, then hands the call to its resource."""

    def __init__(
        self,
        handler: ChatHandler,
        api: ServerAPI,
        keys: APIKeys,
        clock: IReactorTime,
        *,
        description: Mapping[str, Any],
        track: Callable[[Deferred[Any]], None] | None = None,
    ) -> None:
        """
        :param handler: decides ``/api/messages`` as it decides ``create``.
        :param api: pushes, presence and sessions, on every node.
        :param keys: the keys that may call.
        :param description: the OpenAPI description served at
            ``/api/openapi.json``.
        :param track: told of each call in progress (so that a shutdown
            lets it finish).
        """
        super().__init__()
        self.keys = keys
        self.throttle = Throttle(clock)
        self.track = track or (lambda d: None)
        self.requests: dict[tuple[str, str], int] = {}
        self.refused = 0
        calls = ServerCalls(handler, api)
        self._calls: dict[bytes, _Call] = {
            b"send": _Call(self, "send", {b"POST": calls.send}),
            b"broadcast": _Call(self, "broadcast", {b"POST": calls.broadcast}),
            b"messages": _Call(self, "messages", {b"POST": calls.messages}),
            b"disconnect": _Call(self, "disconnect", {b"POST": calls.disconnect}),
            b"presence": _Call(
                self, "presence", {b"GET": calls.presence, b"POST": calls.presence_of}
            ),
        }
        self._description = _Description(description)

    def getChildWithDefault(self, path: bytes, request: Request) -> IResource:
        if path == b"openapi.json" and not request.postpath:
            return self._description
        if not self.keys.allow(request):
            self.refused += 1
            self.throttle.info("api-key", "API call refused: no valid API key")
            return _Answer(UNAUTHORIZED, {b"www-authenticate": b'Bearer realm="chatserver"'})
        # The backend's own connection: no longer one that might never sign in.
        site = getattr(request.channel, "site", None)
        admission = getattr(site, "admission", None)
        if admission is not None:
            admission.settle(request.channel.transport)
        return self._calls.get(path) or _Answer(NO_SUCH_CALL)

    def render(self, request: Request) -> bytes:
        return _Answer(NO_SUCH_CALL).render(request)

    def count(self, call: str, outcome: str) -> None:
        key = (call, outcome)
        self.requests[key] = self.requests.get(key, 0) + 1

    def collect(self) -> Iterator[Metric]:
        """Metrics, for prometheus_client."""
        calls = CounterMetricFamily(
            "chat_api_requests",
            "Server API calls by call and outcome (ok or an error code).",
            labels=["call", "outcome"],
        )
        for (call, outcome), n in sorted(self.requests.items()):
            calls.add_metric([call, outcome], n)
        yield calls
        yield CounterMetricFamily(
            "chat_api_unauthorized", "Server API calls refused for want of a key.", self.refused
        )


class _Description(Resource):
    """The OpenAPI description, encoded once."""

    isLeaf = True

    def __init__(self, description: Mapping[str, Any]) -> None:
        super().__init__()
        self.body = wire.encode(description)

    def render(self, request: Request) -> bytes:
        if request.method not in (b"GET", b"HEAD"):
            request.setHeader(b"allow", b"GET")
            error = APIError(405, errors.INVALID_REQUEST, "use GET for this document")
            return _write_json(request, 405, {"error": error.code, "message": error.message})
        request.setHeader(b"content-type", b"application/json")
        return self.body
