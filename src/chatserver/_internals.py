"""The one place that relies on Twisted's and Autobahn's private details.

Everything here is guarded: each fast path checks, before use, that the
private attributes it needs exist and behave as expected, and otherwise falls
back to the public API (and logs once). Tests prove each fallback by running
it against transports without those attributes. When a Twisted or Autobahn
release renames something, the server gets slower, never silent.

Private attributes used:

- ``twisted.internet.tcp.Connection``: ``_tempDataBuffer``, ``dataBuffer``,
  ``offset`` (what is still queued for the socket) and ``socket`` (to write
  straight to it), so that a connection whose queue is empty
  is written at once, without the two ``epoll_ctl`` calls of a queued write.
- ``autobahn.websocket.protocol.WebSocketProtocol.data``: the bytes received
  and not parsed yet. Autobahn parses everything already read even after the
  connection is closing (one 64 KiB read holds 10,000 tiny frames, each
  parsed and sliced off the buffer); a connection closed for abuse discards
  it instead.
- ``autobahn.websocket.protocol.WebSocketProtocol._closeConnection``: see
  :class:`GracefulCloseMixin`.
- ``twisted.internet.defer.Deferred``: ``result``, ``paused``, ``_callbacks``,
  ``_chainedTo`` and ``_runningCallbacks``, to take the result of a Deferred
  that has already succeeded (an in-memory store's) instead of adding
  callbacks that would run at once: see :func:`fired_result`.
- Autobahn's frame parser state (``data``, ``current_frame``,
  ``inside_message`` and the options it reads per frame): see
  :class:`FastFramesMixin`.
- The module globals ``pformat``, ``hltype`` and ``hlval`` of Autobahn's
  protocol modules: see :func:`lazy_autobahn_log_arguments`.
- ``txmongo.connection._Connection``, the factory txmongo reconnects each
  pooled connection with: see :func:`quiet_txmongo`.
- ``twisted.internet.tcp.Connection.protocol`` and
  ``twisted.protocols.policies.ProtocolWrapper.wrappedProtocol``: the
  protocol a transport hands its bytes to, replaced when the chat port's
  first reader hands a connection over: see :func:`switch_protocol`.

Closing, in detail.
What we rely on in Autobahn's and Twisted's internals, in one guarded place.

Autobahn ends a server connection with ``dropConnection(abort)``, which marks
it closed and hands ``abort`` to the private ``_closeConnection``. Two of its
paths abort (RST) a connection whose closing handshake is complete: when the
client's Close frame crosses ours (RFC 6455 5.5.1: both sides send Close at
once), and when a protocol error (1002, 1007) makes it fail the connection
while the client's Close is already on its way. Twisted's abort discards the
write buffer, and with it our Close frame, so the client never learns the
code or reason, against RFC 6455 7.1.2 (send a Close) and 7.1.1 (close the TCP
connection cleanly).

:class:`GracefulCloseMixin` keeps Autobahn's state machine and changes only
how the TCP connection ends, when the closing handshake is done (instead of
Autobahn's abort) and whenever Autobahn closes without aborting: the write
buffer (our Close frame last) is flushed, then a FIN is sent, and whatever the
client still sends is read and thrown away until its FIN, so the kernel never
resets the connection for unread data (over TLS, the TLS layer's own orderly
close instead). A client that has not finished after the closing handshake
timeout (at least 1 s) is aborted. Timeouts and deliberate aborts (a client
that stopped reading) still abort at once.

It relies on ``_closeConnection``. :func:`close_internals_problem` checks,
when a class using the mixin is created, that Autobahn still has it and that
``dropConnection`` still routes through it; if not, the class keeps Autobahn's
stock behaviour and says so once in the log.
"""

from __future__ import annotations

import errno
import inspect
from typing import Any, Protocol, TypeVar

import txaio
from twisted.internet import tcp
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime, ITransport
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper
from twisted.python.failure import Failure

from chatserver.logs import Throttle

log = Logger()

_fast_writes = True


def _disable_fast_writes(reason: str) -> None:
    global _fast_writes
    if _fast_writes:
        _fast_writes = False
        log.warn(
            "writing through the public transport API from now on: {reason} "
            "(this Twisted release differs from the tested ones; the server works, a bit slower)",
            reason=reason,
        )


def fast_writes_enabled() -> bool:
    """Whether writes still try the socket directly."""
    return _fast_writes


def write_now(transport: ITransport, data: bytes) -> None:
    """Write ``data``, straight to the socket when nothing is queued for it
    (as libuv does), else through ``transport.write``.

    Only a plain TCP connection qualifies: a TLS transport forwards unknown
    attributes to the TCP connection under it, whose ``socket`` would
    bypass the encryption.
    """
    if _fast_writes and isinstance(transport, tcp.Connection):
        try:
            idle = (
                not transport._tempDataBuffer
                and len(transport.dataBuffer) == transport.offset
                and not transport.disconnecting
            )
            send = transport.socket.send
        except (AttributeError, TypeError) as e:
            _disable_fast_writes(f"{type(transport).__name__}: {e}")
            idle = False
        if idle:
            # What writeSomeData does, without its slice view and EINTR loop
            # (Python retries EINTR itself since 3.5).
            try:
                sent = send(data)
            except OSError as e:
                if e.errno not in (errno.EWOULDBLOCK, errno.ENOBUFS):
                    # The connection is lost: write() lets Twisted see it.
                    transport.write(data)
                    return
                sent = 0
            if sent == len(data):
                return
            data = data[sent:]  # the socket's buffer is full: queue the rest
    transport.write(data)


def switch_protocol(transport: Any, current: object, new: object) -> bool:
    """Make ``transport`` deliver its bytes (and its end) to ``new`` instead
    of ``current``, as Autobahn's own ``WebSocketResource`` does when it takes
    a connection over from twisted.web.

    Handles a plain TCP connection and a wrapped one (TLS, or any
    ``ProtocolWrapper``). Nothing else is changed: the caller then calls
    ``new.makeConnection(transport)``.

    :return: whether the transport was switched; if not (a transport of
        another shape, e.g. a test's), ``current`` must go on forwarding to
        ``new`` what it receives.
    """
    if isinstance(transport, ProtocolWrapper):
        if transport.wrappedProtocol is current:
            transport.wrappedProtocol = new  # type: ignore[assignment]
            return True
        return False
    if isinstance(transport, tcp.Connection) and getattr(transport, "protocol", None) is current:
        transport.protocol = new  # type: ignore[assignment]
        return True
    return False


class Flushable(Protocol):
    def flush(self) -> None:
        """Write what was queued during this reactor turn."""


class TurnBatcher:
    """Connections written to during a reactor turn, each flushed once at the
    end of the turn: a connection that gets several frames in one turn sends
    them in one write.

    A connection whose flush fails is logged (throttled) and skipped; the
    others in the batch are still flushed.
    """

    def __init__(self, clock: IReactorTime) -> None:
        self._clock = clock
        self._queue: list[Flushable] = []
        self._call: IDelayedCall | None = None
        self._throttle = Throttle(clock)

    def schedule(self, connection: Flushable) -> None:
        """Flush ``connection`` at the end of this reactor turn."""
        self._queue.append(connection)
        if self._call is None:
            self._call = self._clock.callLater(0, self.flush)

    def flush(self) -> None:
        """Flush every scheduled connection now."""
        self._call = None
        queue, self._queue = self._queue, []
        for connection in queue:
            try:
                connection.flush()
            except Exception:
                self._throttle.failure("flush", "writing to a connection failed")


_discard_input = True


def discard_input(protocol: Any) -> None:
    """Drop what ``protocol`` (an Autobahn WebSocket protocol) has received
    but not parsed yet; the frame being parsed completes as empty."""
    global _discard_input
    if not _discard_input:
        return
    data = getattr(protocol, "data", None)
    if type(data) is not bytes:
        _discard_input = False
        log.warn(
            "cannot discard unparsed input on closing: this Autobahn release differs from "
            "the tested ones (the server works; an abusive client costs it more CPU)"
        )
        return
    protocol.data = b""


def tune_tcp(transport: Any) -> None:
    """Nagle off and keepalive on, where the transport is TCP (public API)."""
    for name in ("setTcpNoDelay", "setTcpKeepAlive"):
        setter = getattr(transport, name, None)
        if setter is not None:
            try:
                setter(True)
            except OSError:
                pass  # the socket is already gone


#: The shortest wait for a client to finish closing, whatever
#: ``closeHandshakeTimeout`` says (0 there means "wait for ever").
MIN_DRAIN_TIMEOUT = 1.0


class _DropProbe:
    """Just enough of a connection for Autobahn's ``dropConnection`` to run
    on, recording what it asks of ``_closeConnection``."""

    def __init__(self, base: Any) -> None:
        self.STATE_CLOSED = base.STATE_CLOSED
        self.state = base.STATE_CLOSING
        self.wasClean = True
        self.wasNotCleanReason = None
        self.droppedByMe = False
        self.peer = "probe"
        self.log = base.log
        self.is_closed = txaio.create_future()  # type: ignore[attr-defined]  # untyped
        self.closed_with: list[bool] = []

    def unregisterProducer(self) -> None:
        pass

    def _closeConnection(self, abort: bool = False) -> None:
        self.closed_with.append(abort)


def close_internals_problem(base: Any) -> str | None:
    """Check that ``base``, an Autobahn ``WebSocketServerProtocol`` (or what
    stands after :class:`GracefulCloseMixin` in a class's MRO), has what the
    mixin relies on.

    :param base: the class, or a ``super()`` proxy of it.
    :return: ``None`` when it does; else what is missing, as a sentence.
    """
    for name in ("STATE_OPEN", "STATE_CLOSING", "STATE_CLOSED", "log"):
        if not hasattr(base, name):
            return f"Autobahn's protocol has no {name}"
    for name in ("_closeConnection", "dropConnection"):
        method = getattr(base, name, None)
        if not callable(method):
            return f"Autobahn's protocol has no {name}()"
        try:
            parameters = list(inspect.signature(method).parameters)
        except (TypeError, ValueError):
            return f"the signature of Autobahn's {name}() cannot be read"
        if parameters[1:2] != ["abort"]:
            return f"Autobahn's {name}() no longer takes abort as its first argument"
    # Behaviour: dropConnection marks the connection closed and passes abort on.
    for abort in (True, False):
        try:
            probe = _DropProbe(base)
            base.dropConnection(probe, abort)
        except Exception as e:
            return f"Autobahn's dropConnection() failed on a probe: {e!r}"
        if probe.closed_with != [abort] or probe.state != base.STATE_CLOSED:
            return "Autobahn's dropConnection() no longer closes through _closeConnection()"
    return None


class GracefulCloseMixin:
    """For an Autobahn ``WebSocketServerProtocol`` over Twisted: our Close
    frame always reaches the client, and the TCP connection ends cleanly
    (FIN, not RST) once the closing handshake is done; only a client that
    does not finish in time is aborted.

    Put it before the protocol class in the bases::

        class ChatServerProtocol(GracefulCloseMixin, WebSocketServerProtocol): ...

    :cvar graceful_close: whether the Autobahn installed has what the mixin
        relies on (checked when the class is created); when false, every
        method here defers to Autobahn's stock behaviour.
    """

    graceful_close = False
    _draining = False
    _drain_call: IDelayedCall | None = None
    # What the mixin uses of the Autobahn protocol it is mixed into (it
    # cannot subclass it: close_internals_problem must be able to refuse).
    wasClean: bool
    state: int
    STATE_CLOSING: int
    closeHandshakeTimeout: float | None
    factory: Any
    transport: Any

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        problem = close_internals_problem(super())
        cls.graceful_close = problem is None
        if problem is not None:
            log.warn(
                "{cls}: {problem}; closing connections as Autobahn does (our Close "
                "frame may be lost when the client's crosses it)",
                cls=cls.__qualname__,
                problem=problem,
            )

    def dropConnection(self, abort: bool = False) -> None:
        """End the connection as Autobahn asks, except that a connection
        whose closing handshake is complete is never aborted.

        :param abort: Autobahn's wish to reset rather than close.
        """
        if abort and self.graceful_close and self.wasClean and self.state == self.STATE_CLOSING:
            # Both Close frames have crossed (or a protocol error answered
            # one): nothing is wrong with the TCP connection, and ours may
            # still be in the write buffer.
            abort = False
        super().dropConnection(abort)  # type: ignore[misc]  # Autobahn's, next in the MRO

    def _closeConnection(self, abort: bool = False) -> None:
        """Called by Autobahn's ``dropConnection``: abort at once, or flush
        what is written, send a FIN, and wait (bounded) for the client's.

        :param abort: reset the connection now.
        """
        if abort or not self.graceful_close or self._draining:
            super()._closeConnection(abort)  # type: ignore[misc]  # Autobahn's, next in the MRO
            return
        self._draining = True
        timeout = max(self.closeHandshakeTimeout or 0, MIN_DRAIN_TIMEOUT)
        self._drain_call = self.factory.reactor.callLater(timeout, self._drain_timed_out)
        transport = self.transport
        if isinstance(transport, tcp.Connection) and not transport.disconnecting:
            # Half-close: the FIN goes after the write buffer; reading on
            # until the client's FIN leaves nothing unread for the kernel to
            # answer with a reset.
            transport.loseWriteConnection()
            transport.resumeProducing()
        else:
            # TLS and other wrappers: their own orderly close.
            transport.loseConnection()

    def _drain_timed_out(self) -> None:
        self._drain_call = None
        self.close_timed_out()
        super()._closeConnection(True)  # type: ignore[misc]  # Autobahn's, next in the MRO

    def close_timed_out(self) -> None:
        """The client did not finish closing in time and is about to be
        aborted: a hook for counting it."""

    def dataReceived(self, data: bytes) -> None:
        """Hand bytes to Autobahn, unless the connection is closing (our FIN
        is out): then they are dropped, never buffered."""
        if self._draining:
            return
        super().dataReceived(data)  # type: ignore[misc]  # Autobahn's, next in the MRO

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        """The client closed (or the drain timed out): stop the timer."""
        call, self._drain_call = self._drain_call, None
        if call is not None and call.active():
            call.cancel()
        super().connectionLost(reason)  # type: ignore[misc]  # Autobahn's, next in the MRO


def quiet_txmongo() -> bool:
    """Silence the three lines Twisted's ``ReconnectingClientFactory`` logs
    for every attempt of each of txmongo's pooled connections ("Starting
    factory", "will retry in N seconds", "Stopping factory"): while MongoDB is
    down they drown the store's own line per retry interval.

    :return: whether txmongo's factory class was found and quietened; if a
        txmongo release renames it, the log is only noisier.
    """
    try:
        from txmongo.connection import _Connection
    except ImportError:
        log.info("txmongo's connection factory was not found: its reconnections stay noisy")
        return False
    if not isinstance(getattr(_Connection, "noisy", None), bool):
        return False
    _Connection.noisy = False
    return True


# -- incoming frames -----------------------------------------------------------

_fast_frames = True


def _disable_fast_frames(reason: str) -> None:
    global _fast_frames
    if _fast_frames:
        _fast_frames = False
        log.warn(
            "parsing every frame with Autobahn from now on: {reason} (this Autobahn release "
            "differs from the tested ones; the server works, a bit slower)",
            reason=reason,
        )


def fast_frames_enabled() -> bool:
    """Whether small text frames still skip Autobahn's frame parser."""
    return _fast_frames


def unmask(masked: bytes, mask: bytes) -> bytes:
    """``masked`` XORed with the 4-byte ``mask`` repeated (RFC 6455, 5.3)."""
    n = len(masked)
    key = (mask * ((n + 3) // 4))[:n]
    return (int.from_bytes(masked, "little") ^ int.from_bytes(key, "little")).to_bytes(n, "little")


class FastFramesMixin:
    """For an Autobahn ``WebSocketServerProtocol`` over Twisted: complete,
    unfragmented, masked text frames of up to 64 KiB that arrive while the
    connection is open and nothing else is buffered go straight to
    ``onMessage``, UTF-8 validated as Autobahn would; everything else (control
    frames, fragments, binary, partial or large frames, compression, a
    heartbeat ping awaiting its pong) goes through Autobahn's parser, in order.

    Autobahn spends some 20 Python calls per frame (frame header object,
    masker, four hooks, an event fired with a Future, debug-log arguments
    formatted for each read); a chat request is one small frame.

    ``onMessageBegin``, ``onMessageFrameBegin`` and the other streaming hooks
    are not called for a frame taken this way, nor are Autobahn's traffic
    statistics updated: a subclass that relies on them for single-frame
    messages must not use the mixin.
    """

    # What the mixin uses of the Autobahn protocol it is mixed into.
    state: int
    STATE_OPEN: int
    STATE_CLOSED: int

    def dataReceived(self, data: bytes) -> None:
        """Take the complete small text frames at the head of ``data``;
        hand what is left to Autobahn."""
        if _fast_frames and self.state == self.STATE_OPEN:
            try:
                usable = (
                    not self.data  # type: ignore[attr-defined]
                    and self.current_frame is None  # type: ignore[attr-defined]
                    and not self.inside_message  # type: ignore[attr-defined]
                    and self._perMessageCompress is None  # type: ignore[attr-defined]
                    and self.autoPingTimeoutCall is None  # type: ignore[attr-defined]
                    and self._listeners is None  # type: ignore[attr-defined]
                    and self.applyMask  # type: ignore[attr-defined]
                    and not (
                        self.logOctets  # type: ignore[attr-defined]
                        or self.logFrames  # type: ignore[attr-defined]
                        or self.trackedTimings  # type: ignore[attr-defined]
                    )
                )
                limit = min(
                    self.maxFramePayloadSize or 65535,  # type: ignore[attr-defined]
                    self.maxMessagePayloadSize or 65535,  # type: ignore[attr-defined]
                    65535,
                )
            except AttributeError as e:
                _disable_fast_frames(f"{type(self).__name__}: {e}")
                usable = False
            if usable:
                data = self._take_frames(data, limit)
                if not data or self.state == self.STATE_CLOSED:
                    # Closed meanwhile: Autobahn would drop the rest unparsed.
                    return
        super().dataReceived(data)  # type: ignore[misc]  # Autobahn's, next in the MRO

    def _take_frames(self, data: bytes, limit: int) -> bytes:
        """Hand each complete small text frame at the head of ``data`` to
        ``onMessage``; return the rest, from the first frame not taken."""
        pos = 0
        end = len(data)
        while pos + 6 <= end:
            if data[pos] != 0x81:  # FIN, no RSV bits, text
                break
            length = data[pos + 1]
            if length < 0x80:  # unmasked: Autobahn refuses it
                break
            length &= 0x7F
            start = pos + 6
            if length == 126:
                length = int.from_bytes(data[pos + 2 : pos + 4], "big")
                if length < 126:  # not the minimal encoding: Autobahn refuses it
                    break
                start = pos + 8
            elif length == 127:
                break
            stop = start + length
            if stop > end or length > limit:
                break
            payload = unmask(data[start:stop], data[start - 4 : start]) if length else b""
            if not payload.isascii():
                try:
                    payload.decode("utf-8")
                except UnicodeDecodeError:
                    break  # Autobahn fails the connection, saying where
            pos = stop
            self.onMessage(payload, False)  # type: ignore[attr-defined]
            if self.state != self.STATE_OPEN:
                break
        return data[pos:] if pos else data


# -- Autobahn's debug-log arguments -----------------------------------------------


class _LazyText:
    """A log argument formatted only if a log line is written."""

    __slots__ = ("_args", "_render")

    def __init__(self, render: Any, *args: Any) -> None:
        self._render = render
        self._args = args

    def __str__(self) -> str:
        return str(self._render(*self._args))

    __repr__ = __str__

    def __format__(self, spec: str) -> str:
        return format(str(self), spec)


def _lazy(render: Any) -> Any:
    def lazily(*args: Any) -> _LazyText:
        return _LazyText(render, *args)

    lazily.__wrapped__ = render  # type: ignore[attr-defined]
    return lazily


#: Module globals of Autobahn used only to build debug-log arguments, which are
#: built whether debug logging is on or not: ``pformat`` of the protocol's 30
#: options on every connection (a third of a connection's CPU time), and
#: coloured names of methods on every connection and every read.
_LOG_ARGUMENT_BUILDERS = {
    "autobahn.websocket.protocol": ("pformat", "hltype", "hlval"),
    "autobahn.twisted.websocket": ("hltype", "hlval"),
}


def lazy_autobahn_log_arguments() -> bool:
    """Make Autobahn build its debug-log arguments only when a debug line is
    written (what is logged stays the same, word for word).

    Each name is replaced only where it is still the function from
    ``pprint`` or ``autobahn.util`` it was when this was written.

    :return: whether every name was found and made lazy; if an Autobahn
        release moved one, that one stays eager (slower, nothing else).
    """
    import importlib
    import pprint

    # Imported by name: the storage modules that use this module's other
    # functions must not depend on Autobahn.
    util = importlib.import_module("autobahn.util")
    originals = {
        "pformat": pprint.pformat,
        "hltype": util.hltype,
        "hlval": util.hlval,
    }
    complete = True
    for module_name, names in _LOG_ARGUMENT_BUILDERS.items():
        module = importlib.import_module(module_name)
        for name in names:
            current = getattr(module, name, None)
            if getattr(current, "__wrapped__", None) is originals[name]:
                continue  # made lazy already
            if current is not originals[name]:
                complete = False
                log.info(
                    "{module}.{name} is not what it was: its debug-log arguments stay eager",
                    module=module_name,
                    name=name,
                )
                continue
            setattr(module, name, _lazy(current))
    return complete


# -- Deferreds that have already fired -------------------------------------------

_take_results = True


def fired_result(d: Deferred[Any], pending: Any) -> Any:
    """The result of ``d`` if it has already succeeded and nothing else is
    waiting on it (no callbacks queued, not paused, not chained), for a
    caller that would otherwise add a callback only to have it run at once;
    else ``pending``, and the caller adds its callbacks as usual.

    A failure is never taken: adding an errback is what marks it handled.
    """
    global _take_results
    if not _take_results or not d.called:
        return pending
    fired: Any = d  # its private parts are not in its type
    try:
        if (
            fired.paused
            or fired._callbacks
            or fired._chainedTo is not None
            or fired._runningCallbacks
        ):
            return pending
        result = fired.result
    except AttributeError as e:
        _take_results = False
        log.warn(
            "adding callbacks to Deferreds that have already fired, from now on: {reason} "
            "(this Twisted release differs from the tested ones; the server works, a bit slower)",
            reason=str(e),
        )
        return pending
    if isinstance(result, (Failure, Deferred)):
        return pending
    return result


# -- protocol options ------------------------------------------------------------

_T = TypeVar("_T")


def protocol_with_options(base: type[_T], factory: Any) -> type[_T]:
    """A subclass of ``base`` (an Autobahn protocol class) holding the
    ``factory``'s current protocol options as class attributes.

    Autobahn copies each of its some 30 options (``CONFIG_ATTRS``) from the
    factory onto every new connection that does not have it already: 30
    attributes more in each connection's ``__dict__``, which then no longer
    fits the smaller table size (about 1.7 KB more per connection), and 30
    ``setattr`` calls per connection. Found on the class instead, they are not
    copied, and each connection reads the same values it would have copied.
    Call it again whenever the factory's options change; connections already
    open keep the options they started with, as with Autobahn's copies.

    :return: the subclass, or ``base`` itself if Autobahn no longer lists its
        options where it used to (connections then copy them, as before).
    """
    names = getattr(base, "CONFIG_ATTRS", None)
    if not isinstance(names, list | tuple) or not all(isinstance(n, str) for n in names):
        log.info("Autobahn's protocol options are not where they were: each connection copies them")
        return base
    options = {
        # A function stays a plain function when read from a connection (e.g.
        # perMessageCompressionAccept), as Autobahn's copy would be.
        name: staticmethod(value) if inspect.isfunction(value) else value
        for name in names
        if hasattr(factory, name)
        for value in (getattr(factory, name),)
    }
    namespace = {"__module__": base.__module__, "__qualname__": base.__qualname__, **options}
    return type(base.__name__, (base,), namespace)
