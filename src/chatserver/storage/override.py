"""A store with its ``authorize`` taken from somewhere else."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, maybeDeferred
from zope.interface import alsoProvides, providedBy

from chatserver.interfaces import IAuthorizer


class AuthorizerOverride:
    """``storage`` as it is — every interface it provides, every method and
    attribute — except that ``authorize`` goes to ``authorizer``.

    For ``--dev-auth`` (and a token service of your own): the store keeps the
    messages, groups, directory and accounts.
    """

    def __init__(self, storage: Any, authorizer: IAuthorizer) -> None:
        self._storage = storage
        self._authorizer = IAuthorizer(authorizer)
        alsoProvides(self, *providedBy(storage))

    def __repr__(self) -> str:
        return f"{self._storage!r} with {type(self._authorizer).__name__}"

    def authorize(self, credentials: dict[str, Any]) -> Deferred[Any]:
        return maybeDeferred(self._authorizer.authorize, credentials)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._storage, name)
