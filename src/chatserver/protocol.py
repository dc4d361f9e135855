"""The network layer: one WebSocket connection, frames in and replies out.

The protocol parses each frame (:func:`chatserver.wire.parse_request`),
enforces the per-connection budgets (requests per second, requests in flight,
control frames, fragments, time to authorize, bytes queued for a slow reader),
hands well-formed requests to the handler with the connection's
:class:`~chatserver.session.Session`, and sends exactly one reply per request,
or ends the connection with a close code. It decides nothing about chat.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING, Any

from autobahn.twisted.websocket import WebSocketServerProtocol
from autobahn.util import encode_truncate
from autobahn.websocket.types import ConnectionDeny, ConnectionRequest
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IPushProducer
from twisted.python.failure import Failure
from zope.interface import implementer

from chatserver import errors, wire
from chatserver._internals import (
    FastFramesMixin,
    GracefulCloseMixin,
    discard_input,
    tune_tcp,
    write_now,
)
from chatserver.errors import ChatError, Ending, SessionRefused
from chatserver.limits import TokenBucket
from chatserver.logs import escape
from chatserver.session import Session
from chatserver.wire import Refusal, Request, Unreadable

if TYPE_CHECKING:
    from chatserver.factory import ChatServerFactory

# WebSocket close codes (RFC 6455, section 7.4.1; 4000-4999 are ours).
CLOSE_GOING_AWAY = 1001
CLOSE_UNSUPPORTED_DATA = 1003
CLOSE_INVALID_PAYLOAD = 1007
CLOSE_POLICY_VIOLATION = 1008
CLOSE_TOO_BIG = 1009
CLOSE_SESSION_REVOKED = 4000
CLOSE_TOKEN_EXPIRED = 4001

#: How each reason for ending a session shows on the wire.
CLOSE_CODES = {
    Ending.POLICY: CLOSE_POLICY_VIOLATION,
    Ending.GOING_AWAY: CLOSE_GOING_AWAY,
    Ending.REVOKED: CLOSE_SESSION_REVOKED,
    Ending.EXPIRED: CLOSE_TOKEN_EXPIRED,
    Ending.TOO_BIG: CLOSE_TOO_BIG,
}


def text_frame(payload: bytes) -> bytes:
    """``payload`` as one unmasked, final WebSocket text frame (RFC 6455, 5.2):
    what a server sends. Built here, once per push, for every recipient."""
    n = len(payload)
    if n < 126:
        return bytes((0x81, n)) + payload
    if n < 65536:
        return struct.pack("!BBH", 0x81, 126, n) + payload
    return struct.pack("!BBQ", 0x81, 127, n) + payload


@implementer(IPushProducer)
class _WriteWatch:
    """Told by the transport when a client stops reading (its buffer is full)
    and when it catches up; meanwhile we stop reading from it too."""

    def __init__(self, connection: ChatServerProtocol) -> None:
        self.connection = connection

    def pauseProducing(self) -> None:
        self.connection.writes_paused(True)

    def resumeProducing(self) -> None:
        self.connection.writes_paused(False)

    def stopProducing(self) -> None:
        pass


# Autobahn's own bases disagree on the types of `peer` and
# `_transport_details`; nothing of ours is at stake.
class ChatServerProtocol(FastFramesMixin, GracefulCloseMixin, WebSocketServerProtocol):  # type: ignore[misc]
    """Parses each frame into a request, hands it to the handler with the
    connection's session, and sends exactly one reply (or closes the
    connection with a code).

    :ivar session: the connection's :class:`Session` once the WebSocket is open.
    """

    factory: ChatServerFactory
    # A TCP (or TLS) transport: it also pauses, resumes and takes producers.
    transport: Any

    session: Session | None = None
    _bucket: TokenBucket | None = None
    _strikes = 0
    _in_flight = 0
    _fragments = 0
    _authorize_timer: IDelayedCall | None = None
    _message_timer: IDelayedCall | None = None
    _paused = False
    _pending: list[bytes] | None = None
    _queued_while_paused = 0
    _admitted = True

    def connectionMade(self) -> None:
        super().connectionMade()
        # Autobahn 26 reads its tcpNoDelay option before it is set, so Nagle
        # stays on and a reply can wait ~40 ms for a delayed ACK. A client
        # that vanished without a FIN is found by the heartbeat, or at worst
        # by the kernel's keepalive.
        tune_tcp(self.transport)
        self._admitted = self.factory.admission.admit(self.transport)

    def onConnect(self, request: ConnectionRequest) -> None:
        # Nothing of the request is kept or logged: its URL and headers may
        # carry tokens and cookies.
        if not self.factory.origins.allows(request.headers.get("origin")):
            raise ConnectionDeny(ConnectionDeny.FORBIDDEN, "origin not allowed")

    def onOpen(self) -> None:
        factory = self.factory
        limits = factory.limits
        clock = factory.reactor
        self.session = Session(self, factory.api, str(self.peer))
        if limits.rate:
            self._bucket = TokenBucket(limits.rate, limits.burst, clock.seconds())
        if limits.authorize_timeout:
            self._authorize_timer = clock.callLater(
                limits.authorize_timeout, self._authorize_timed_out
            )
        if limits.max_buffered_bytes:
            watch = _WriteWatch(self)
            try:
                self.transport.registerProducer(watch, True)
            except RuntimeError:
                # Upgraded from twisted.web: the HTTP channel, done with this
                # connection now, is still registered.
                self.transport.unregisterProducer()
                self.transport.registerProducer(watch, True)
        factory.connection_opened(self)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        if self.session is not None:
            self.session.closed = True
        for timer in (self._authorize_timer, self._message_timer):
            if timer is not None and timer.active():
                timer.cancel()
        self._authorize_timer = self._message_timer = None
        self.factory.connection_closed(self)

    def _authorize_timed_out(self) -> None:
        self._authorize_timer = None
        if self.session is not None and self.session.user is None:
            self._close_for("authorize-timeout", CLOSE_POLICY_VIOLATION, "authorize timeout")

    def authorized(self) -> None:
        """The session has a user: it no longer counts as pending."""
        timer, self._authorize_timer = self._authorize_timer, None
        if timer is not None and timer.active():
            timer.cancel()
        self.factory.admission.settle(self.transport)

    # -- budgets -----------------------------------------------------------

    def _take_token(self) -> bool:
        """Spend one unit of this connection's rate budget; a connection
        refused too often (net of what it was allowed) is closed."""
        bucket = self._bucket
        if bucket is None:
            return True
        if bucket.take(self.factory.reactor.seconds()):
            if self._strikes:
                self._strikes -= 1
            return True
        self._strikes += 1
        limits = self.factory.limits
        if limits.max_strikes and self._strikes >= limits.max_strikes:
            self.factory.throttle.warn(
                "rate-limit", "closing {peer}: rate limit exceeded", peer=self.peer
            )
            self._close_for("rate-limit", CLOSE_POLICY_VIOLATION, "rate limit exceeded")
        return False

    def onPing(self, payload: bytes) -> None:
        # Pings cost what a request costs; over budget, no pong.
        if self._take_token():
            super().onPing(payload)

    def onPong(self, payload: bytes) -> None:
        self._take_token()
        super().onPong(payload)

    def onMessageBegin(self, isBinary: bool) -> None:
        super().onMessageBegin(isBinary)
        self._fragments = 0

    def onMessageFrameBegin(self, length: int) -> None:
        super().onMessageFrameBegin(length)
        self._fragments += 1
        if self._fragments == 1:
            return  # an unfragmented message: its request is budgeted as a whole
        limits = self.factory.limits
        if self._fragments == 2 and limits.message_timeout:
            self._message_timer = self.factory.reactor.callLater(
                limits.message_timeout, self._message_timed_out
            )
        if limits.max_fragments and self._fragments > limits.max_fragments:
            self._close_for(
                "fragments",
                CLOSE_TOO_BIG,
                f"a message may have at most {limits.max_fragments} fragments",
            )
        else:
            self._take_token()

    def close_timed_out(self) -> None:
        self.factory.stats.closes["close-timeout"] += 1
        self.factory.throttle.info(
            "close-timeout", "aborting {peer}: it did not finish closing in time", peer=self.peer
        )

    def _message_timed_out(self) -> None:
        self._message_timer = None
        self._close_for("message-timeout", CLOSE_POLICY_VIOLATION, "message not completed in time")

    def _message_done(self) -> None:
        timer, self._message_timer = self._message_timer, None
        if timer is not None and timer.active():
            timer.cancel()

    # -- incoming ----------------------------------------------------------

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        if self._message_timer is not None:
            self._message_done()
        if self.state != self.STATE_OPEN:
            return  # closing: no new requests
        factory = self.factory
        parsed: Request | Refusal | Unreadable
        if isBinary:
            parsed = wire.parse_binary(payload)
        else:
            parsed = wire.parse_request(payload, factory.limits.max_request_bytes)
        if isinstance(parsed, Request):
            if not self._take_token():
                self._send_error(parsed.id, errors.RATE_LIMITED, "too many requests, slow down")
            elif self._in_flight >= factory.limits.max_in_flight > 0:
                self._send_error(
                    parsed.id, errors.RATE_LIMITED, "too many requests in flight, wait for replies"
                )
            else:
                self._dispatch(parsed)
        elif isinstance(parsed, Refusal):
            # Every frame counts against the rate, well-formed or not.
            if self._take_token():
                self._send_error(parsed.id, parsed.code, parsed.message)
            elif self.state == self.STATE_OPEN:
                self._send_error(parsed.id, errors.RATE_LIMITED, "too many requests, slow down")
        else:
            # A client that does not speak the protocol, not necessarily an
            # abusive one: it still gets a clean closing handshake.
            code = CLOSE_UNSUPPORTED_DATA if isBinary else CLOSE_INVALID_PAYLOAD
            self._close_for("unreadable", code, parsed.reason, abusive=False)

    def _dispatch(self, request: Request) -> None:
        factory = self.factory
        handler = factory.handler
        action = request.action
        assert self.session is not None  # opened before any message
        result = handler.handle_now(self.session, action, request.data)
        if not isinstance(result, Deferred):
            if not factory.verbose:
                # Answered at once (an in-memory store): no Deferred to run
                # the reply through.
                label = action if handler.is_action(action) else "unknown"
                self._send_reply(result, request.id, label)
                return
            result = succeed(result)
        d: Deferred[Any] = result
        if not d.called:
            self._in_flight += 1
            factory.track(d)
            d.addBoth(self._landed)
        if factory.verbose:
            d.addBoth(self._log_request, action, request.id)
        # Metrics by action: any name a client makes up counts as "unknown".
        label = action if handler.is_action(action) else "unknown"
        d.addCallbacks(
            self._send_reply, self._send_failure, (request.id, label), {}, (request.id, label)
        )

    def _landed(self, result: object) -> object:
        self._in_flight -= 1
        return result

    # -- outgoing ----------------------------------------------------------

    def _close_for(self, why: str, code: int, reason: str, *, abusive: bool = True) -> None:
        """Close the connection, counting why.

        A client closed for abuse has its connection failed (RFC 6455,
        7.1.7): our Close frame goes out and the TCP connection is closed
        after it, without waiting for the client's Close; whatever it keeps
        sending is read and dropped unparsed. Others get the whole closing
        handshake.
        """
        if self.state != self.STATE_OPEN:
            return
        self.factory.stats.closes[why] += 1
        self.close(code, reason)
        if abusive:
            discard_input(self)
            self.dropConnection(abort=False)

    def close(self, code: int, reason: str) -> None:
        """Start the closing handshake with any close code, e.g. 1008.

        Autobahn's ``sendClose`` only takes 1000 and 3000-4999, but a server
        must also say 1001, 1003, 1007, 1008 or 1009 where RFC 6455 asks.
        """
        if self.state == self.STATE_OPEN:
            self.sendCloseFrame(code=code, reasonUtf8=encode_truncate(reason, 123), isReply=False)

    def end_session(self, ending: Ending, reason: str) -> None:
        """End the session (the :class:`~chatserver.session.SessionLink` side)."""
        self._close_for(
            ending.value, CLOSE_CODES[ending], reason, abusive=ending in (Ending.TOO_BIG,)
        )

    def write_frame(self, frame: bytes) -> None:
        """Queue an already framed message for the end of this reactor turn,
        when every frame for this connection goes out in one write."""
        if self.state != self.STATE_OPEN:
            return  # no data frames after our close frame (RFC 6455, 5.5.1)
        if self._paused:
            # The client stopped reading; bound what we queue for it.
            self._queued_while_paused += len(frame)
            if self._queued_while_paused > self.factory.limits.max_buffered_bytes:
                self.factory.throttle.warn(
                    "slow-reader",
                    "dropping {peer} (user {user}): it stopped reading and {queued} bytes "
                    "are waiting for it",
                    peer=self.peer,
                    user=escape(self.session.user_id if self.session else None),
                    queued=self._queued_while_paused,
                )
                self.factory.stats.closes["slow-reader"] += 1
                self._paused = False
                self.dropConnection(abort=True)
                return
        pending = self._pending
        if pending is None:
            self._pending = [frame]
            self.factory.batcher.schedule(self)
        else:
            pending.append(frame)

    def send_payload(self, payload: bytes) -> None:
        """Frame a JSON document and queue it for this connection."""
        self.write_frame(text_frame(payload))

    def flush(self) -> None:
        """Write the frames of this reactor turn, at once if the socket takes
        them (see :func:`chatserver._internals.write_now`)."""
        pending, self._pending = self._pending, None
        if not pending or self.transport is None or self.state == self.STATE_CLOSED:
            return
        write_now(self.transport, pending[0] if len(pending) == 1 else b"".join(pending))

    def sendData(self, data: bytes, sync: bool = False, chopsize: int | None = None) -> None:
        # Autobahn's own frames (close, pong) must not overtake ours.
        if self._pending:
            self.flush()
        super().sendData(data, sync, chopsize)

    def writes_paused(self, paused: bool) -> None:
        """The transport's write buffer filled up (or drained)."""
        if paused == self._paused:
            return  # Twisted repeats the pause on every write while full
        self._paused = paused
        self._queued_while_paused = 0
        if self.state == self.STATE_CLOSED:
            return
        # Backpressure: read nothing more from a client that reads nothing.
        if paused:
            self.transport.pauseProducing()
        else:
            self.transport.resumeProducing()

    def _send_reply(self, data: object, request_id: object, label: str) -> None:
        try:
            payload = wire.reply(request_id, data)
        except (TypeError, ValueError) as e:
            self.factory.throttle.error(
                f"encode:{label}",
                "the reply to {action} could not be encoded ({error}): answered internalError",
                action=label,
                error=type(e).__name__,
            )
            self._send_error(request_id, errors.INTERNAL_ERROR, "internal error")
            self.factory.stats.requests[label, errors.INTERNAL_ERROR] += 1
            return
        if label == "authorize":
            self.authorized()
        self.factory.stats.requests[label, "ok"] += 1
        self.send_payload(payload)

    def _send_failure(self, failure: Failure, request_id: object, label: str) -> None:
        error = failure.value
        stats = self.factory.stats
        if isinstance(error, SessionRefused):
            stats.requests[label, "closed"] += 1
            self.end_session(error.ending, error.message)
            return
        if isinstance(error, ChatError):
            code, message = str(error.code), str(error.message or error.code)
        else:
            self.factory.throttle.failure(
                f"request:{label}", "request {action} failed unexpectedly", failure, action=label
            )
            code, message = errors.INTERNAL_ERROR, "internal error"
        stats.requests[label, code] += 1
        self._send_error(request_id, code, message)

    def _send_error(self, request_id: object, code: str, message: str) -> None:
        self.factory.stats.errors[code] += 1
        try:
            payload = wire.error_reply(request_id, code, message)
        except (TypeError, ValueError):
            # A code or message from application code that JSON cannot carry.
            payload = wire.error_reply(request_id, errors.INTERNAL_ERROR, "internal error")
        self.send_payload(payload)

    def _log_request(self, result: Any, action: str, request_id: object) -> Any:
        outcome = "ok"
        if isinstance(result, Failure):
            error = result.value
            outcome = getattr(error, "code", type(error).__name__)
        self.factory.log.info(
            "{peer} user={user} {action} id={id} -> {outcome}",
            peer=self.peer,
            user=escape(self.session.user_id if self.session else None),
            action=escape(action),
            id=escape(request_id),
            outcome=escape(outcome),
        )
        return result
