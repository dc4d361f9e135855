"""The network layer: one WebSocket connection, frames in and replies out."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from autobahn.twisted.websocket import WebSocketServerProtocol
from autobahn.util import encode_truncate
from autobahn.websocket.protocol import PreparedMessage
from autobahn.websocket.types import ConnectionRequest
from twisted.internet import tcp
from twisted.internet.interfaces import IDelayedCall, IPushProducer
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from chatserver import errors
from chatserver._autobahn import GracefulCloseMixin
from chatserver.errors import ChatError, ConnectionRefused
from chatserver.limits import TokenBucket
from chatserver.wire import decode, error_reply, reply

if TYPE_CHECKING:
    from chatserver.factory import ChatServerFactory

MAX_REQUEST_ID_LENGTH = 128
MAX_ACTION_LENGTH = 128
# Ids a JavaScript client can match: integers within Number's exact range.
MAX_SAFE_INTEGER = 2**53 - 1

# Module level: Autobahn's classes keep their own `log`, a txaio logger.
log = Logger()


def _valid_request_id(value: object) -> bool:
    if isinstance(value, str):
        return len(value) <= MAX_REQUEST_ID_LENGTH
    return type(value) is int and -MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER


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


class ChatServerProtocol(GracefulCloseMixin, WebSocketServerProtocol):
    """Parses each frame into a request, hands it to the factory's handler,
    and sends exactly one reply (or closes the connection with a code).

    @ivar user: the authorized user object, or C{None} before ``authorize``.
    @ivar user_id: the user's id as a string, or C{None}.
    @ivar closed: whether the connection has closed.
    """

    factory: ChatServerFactory

    user: dict | None = None
    user_id: str | None = None
    closed = False
    opened = False
    _bucket: TokenBucket | None = None
    _strikes = 0
    _authorize_timer: IDelayedCall | None = None
    _paused = False
    _write_now = False
    _pending: list[bytes] | None = None
    _queued_while_paused = 0

    def connectionMade(self) -> None:
        super().connectionMade()
        # Autobahn 26 reads its tcpNoDelay option before it is set, so Nagle
        # stays on and a reply can wait ~40 ms for a delayed ACK.
        self.transport.setTcpNoDelay(True)
        self._write_now = isinstance(self.transport, tcp.Connection)

    def onConnect(self, request: ConnectionRequest) -> None:
        self.request = request

    def onOpen(self) -> None:
        self.opened = True
        limits = self.factory.limits
        clock = self.factory.reactor
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
        self.factory.connection_opened(self)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self.closed = True
        self.authorized()
        self.factory.connection_closed(self)

    def authorized(self) -> None:
        """The connection has a user now (or is gone): stop its deadline."""
        timer, self._authorize_timer = self._authorize_timer, None
        if timer is not None and timer.active():
            timer.cancel()

    def _authorize_timed_out(self) -> None:
        self._authorize_timer = None
        if self.user is None:
            self.close(errors.CLOSE_POLICY_VIOLATION, "authorize timeout")

    # -- incoming ----------------------------------------------------------

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        if self.state != self.STATE_OPEN:
            return  # closing: no new requests
        if isBinary:
            self._binary_frame(payload)
            return
        try:
            frame = decode(payload)
        except ValueError:
            self.close(errors.CLOSE_INVALID_PAYLOAD, "frames must be JSON objects")
            return
        if type(frame) is not dict:
            self.close(errors.CLOSE_INVALID_PAYLOAD, "frames must be JSON objects")
            return
        request_id = frame.get("id")
        if not _valid_request_id(request_id):
            request_id = None
        # Every frame counts against the rate, well-formed or not.
        if self._bucket is not None and not self._within_rate():
            self._send_error(request_id, errors.RATE_LIMITED, "too many requests, slow down")
            return
        if request_id is None:
            self._send_error(None, errors.INVALID_ID, "id must be an integer or a short string")
            return
        limit = self.factory.limits.max_request_bytes
        if limit and len(payload) > limit:
            self._send_error(request_id, errors.TOO_LARGE, f"requests are limited to {limit} bytes")
            return
        action = frame.get("type")
        if type(action) is not str or not 0 < len(action) <= MAX_ACTION_LENGTH:
            self._send_error(request_id, errors.INVALID_REQUEST, "type must name an action")
            return
        data = frame.get("data")
        if data is None:
            data = {}
        handler = self.factory.handler
        d = handler.handle(self, action, data)
        if not d.called:
            self.factory.track(d)
        if self.factory.verbose:
            d.addBoth(self._log_request, action, request_id)
        # Metrics by action: any name a client makes up counts as "unknown".
        label = action if handler.is_action(action) else "unknown"
        args = (request_id, label)
        d.addCallbacks(self._send_reply, self._send_failure, args, None, args)

    def _within_rate(self) -> bool:
        if self._bucket.take(self.factory.reactor.seconds()):
            if self._strikes:
                self._strikes -= 1
            return True
        self._strikes += 1
        if self._strikes >= self.factory.limits.max_strikes:
            log.warn("closing {peer}: rate limit exceeded", peer=self.peer)
            self.close(errors.CLOSE_POLICY_VIOLATION, "rate limit exceeded")
        return False

    def _binary_frame(self, payload: bytes) -> None:
        # Answer by id when the frame is JSON that carries one; else close.
        try:
            frame = decode(payload)
        except ValueError:
            frame = None
        if type(frame) is dict and _valid_request_id(frame.get("id")):
            self._send_error(frame["id"], errors.INVALID_REQUEST, "binary frames are not supported")
        else:
            self.close(errors.CLOSE_UNSUPPORTED_DATA, "binary frames are not supported")

    # -- outgoing ----------------------------------------------------------

    def close(self, code: int, reason: str) -> None:
        """Start the closing handshake with any close code, e.g. 1008.

        Autobahn's C{sendClose} only takes 1000 and 3000-4999, but a server
        must also say 1001, 1003, 1007, 1008 or 1009 where RFC 6455 asks.
        """
        if self.state == self.STATE_OPEN:
            self.sendCloseFrame(code=code, reasonUtf8=encode_truncate(reason, 123), isReply=False)

    def sendPreparedMessage(self, preparedMsg: PreparedMessage) -> None:
        """Write an already framed message, bypassing Autobahn's C{sendData}
        (it formats debug-log arguments for every frame, a large share of a
        push's cost)."""
        if self.state != self.STATE_OPEN:
            return  # no data frames after our close frame (RFC 6455, 5.5.1)
        frame = preparedMsg.payloadHybi
        if self._paused:
            # The client stopped reading; bound what we queue for it.
            self._queued_while_paused += len(frame)
            if self._queued_while_paused > self.factory.limits.max_buffered_bytes:
                log.warn(
                    "dropping {peer} (user {user}): it stopped reading and "
                    "{queued} bytes are waiting for it",
                    peer=self.peer,
                    user=self.user_id,
                    queued=self._queued_while_paused,
                )
                self._paused = False
                self.dropConnection(abort=True)
                return
        self._write(frame)

    def _write(self, frame: bytes) -> None:
        # Frames for this connection wait for the end of the reactor turn and
        # go out in one write (see flush).
        if not self._write_now:
            self.transport.write(frame)
        elif self._pending is None:
            self._pending = [frame]
            self.factory.flush_later(self)
        else:
            self._pending.append(frame)

    def flush(self) -> None:
        """Write the frames of this reactor turn, at once if the socket takes
        them, as libuv does: queuing them (Twisted's write) costs two epoll_ctl
        calls per connection per turn, most of a push's cost at scale."""
        pending, self._pending = self._pending, None
        if not pending or self.closed:
            return
        data = pending[0] if len(pending) == 1 else b"".join(pending)
        transport = self.transport
        if (
            not transport._tempDataBuffer
            and len(transport.dataBuffer) == transport.offset
            and not transport.disconnecting
        ):
            sent = transport.writeSomeData(data)
            if type(sent) is int:  # else the connection is lost: write() lets Twisted see it
                if sent == len(data):
                    return
                data = data[sent:]
        transport.write(data)

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
        if self.closed:
            return
        # Backpressure: read nothing more from a client that reads nothing.
        if paused:
            self.transport.pauseProducing()
        else:
            self.transport.resumeProducing()

    def _send_reply(self, data: object, request_id: object, label: str) -> None:
        self.factory.stats.requests[label, "ok"] += 1
        self.sendPreparedMessage(self.factory.prepareMessage(reply(request_id, data)))

    def _send_failure(self, failure: Failure, request_id: object, label: str) -> None:
        error = failure.value
        if isinstance(error, ConnectionRefused):
            self.factory.stats.requests[label, "closed"] += 1
            self.close(error.close_code, error.message)
            return
        if isinstance(error, ChatError):
            code, message = error.code, error.message
        else:
            log.failure("request failed unexpectedly", failure)
            code, message = errors.INTERNAL_ERROR, "internal error"
        self.factory.stats.requests[label, code] += 1
        self._send_error(request_id, code, message)

    def _send_error(self, request_id: object, code: str, message: str) -> None:
        self.factory.stats.errors[code] += 1
        self.sendPreparedMessage(
            self.factory.prepareMessage(error_reply(request_id, code, message))
        )

    def _log_request(self, result: Any, action: str, request_id: object) -> Any:
        outcome = "ok"
        if isinstance(result, Failure):
            error = result.value
            outcome = getattr(error, "code", type(error).__name__)
        log.info(
            "{peer} user={user} {action} id={id} -> {outcome}",
            peer=self.peer,
            user=self.user_id,
            action=action,
            id=request_id,
            outcome=outcome,
        )
        return result
