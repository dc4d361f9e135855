"""An insecure authorizer for demos and development: you are who you say."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, succeed
from zope.interface import implementer

from chatserver.interfaces import IAuthorizer

MAX_NAME_LENGTH = 64


@implementer(IAuthorizer)
class ClaimedIdAuthorizer:
    """Authorizes anyone as the user id they claim.

    The claim is read from ``id``, ``userId``, ``name`` or ``token`` (in that
    order), so that ``{"name": "alice"}`` signs in as ``alice``. Never use it
    where the server can be reached by someone you do not trust.
    """

    def authorize(self, credentials: dict[str, Any]) -> Deferred[dict[str, str] | None]:
        for key in ("id", "userId", "name", "token"):
            claimed = credentials.get(key)
            if isinstance(claimed, int) and not isinstance(claimed, bool):
                claimed = str(claimed)
            if isinstance(claimed, str):
                claimed = claimed.strip()
                if 0 < len(claimed) <= MAX_NAME_LENGTH:
                    return succeed({"id": claimed, "name": claimed})
        return succeed(None)
