"""``typing``: tell a conversation that someone is typing.

Request ``{"to": id, "isGroup"?: true}``; reply ``{}``. The recipient (for a
group: its other members, membership checked as for ``create``) gets
``{"type": "typing", "data": {"from", "to", "isGroup"?}}``. Nothing is stored,
and a sender's typing reaches a conversation at most once per interval: more
requests are answered but not pushed (nor looked up in storage).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime

from chatserver import errors
from chatserver.delivery import Router
from chatserver.errors import ChatError
from chatserver.handlers.chat import ChatHandler, as_id, signed_in
from chatserver.session import Session

#: Seconds between two pushes for one sender and conversation.
INTERVAL = 1.0
# Entries older than the interval are forgotten every this many new ones.
SWEEP_EVERY = 1024


class Typing:
    """The ``typing`` action."""

    def __init__(
        self, handler: ChatHandler, group_members: Any, router: Router, clock: IReactorTime
    ) -> None:
        """
        :param group_members: the store's ``getGroupUserIds``.
        """
        self._handler = handler
        self._group_members = group_members
        self._router = router
        self._clock = clock
        # (sender, to, isGroup) → when it was last pushed, and the refusal
        # then (not a member), repeated without asking storage again.
        self._last: dict[tuple[str, str, bool], tuple[float, ChatError | None]] = {}
        self._added = 0

    def __call__(self, session: Session, data: object) -> Deferred[Any]:
        if type(data) is not dict:
            raise ChatError(errors.INVALID_REQUEST, "typing data must be an object")
        to = as_id(data.get("to"))
        if to is None:
            raise ChatError(errors.INVALID_REQUEST, "typing needs `to`: a user or group id")
        is_group = data.get("isGroup") is True
        sender = signed_in(session)
        key = (sender, to, is_group)
        now = self._clock.seconds()
        last = self._last.get(key)
        if last is not None and now - last[0] < INTERVAL:
            if last[1] is not None:
                raise last[1]
            return succeed({})
        self._remember(key, now, None)
        event: dict[str, Any] = {"from": sender, "to": to}
        if not is_group:
            if to != sender:
                self._router.push("typing", event, (to,))
            return succeed({})
        event["isGroup"] = True
        d = self._handler.call_storage("getGroupUserIds", self._group_members, {"groupId": to})
        return d.addCallback(self._to_members, key, now, event)

    def _to_members(
        self,
        members: Iterable[object],
        key: tuple[str, str, bool],
        now: float,
        event: dict[str, Any],
    ) -> dict[str, Any]:
        sender = key[0]
        member_ids = {str(m) for m in members}
        if sender not in member_ids:
            refusal = ChatError(errors.NOT_GROUP_MEMBER, "you are not a member of this group")
            self._remember(key, now, refusal)
            raise refusal
        member_ids.discard(sender)
        self._router.push("typing", event, member_ids)
        return {}

    def _remember(self, key: tuple[str, str, bool], now: float, refusal: ChatError | None) -> None:
        self._last[key] = (now, refusal)
        self._added += 1
        if self._added >= SWEEP_EVERY:
            self._added = 0
            self._last = {k: v for k, v in self._last.items() if now - v[0] < INTERVAL}
