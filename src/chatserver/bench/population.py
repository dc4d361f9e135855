"""Who exists in a benchmark run: the naming contract shared by the server
side (the storage it is given) and the load generator.

User ``i`` (counting from 0) has id ``u{i}`` and signs in with the
credentials ``{"id": "u{i}", "token": "t{i}"}``: a token store (such as the
bench's :class:`~chatserver.MemoryStorage`) reads ``token``, a claimed-id
authorizer (``--dev-auth``) reads ``id``, so the same frames work against both.
Group ``k`` has id ``g{k}`` and the members ``u{k*G}`` … ``u{k*G+G-1}``, for a
group size ``G``; users past the last whole group belong to none.

A server compared with ``--compare`` must know the same users and groups.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

USERS_ENV = "CHATSERVER_BENCH_USERS"
GROUP_SIZE_ENV = "CHATSERVER_BENCH_GROUP_SIZE"


def user_id(index: int) -> str:
    """The id of user ``index``."""
    return f"u{index}"


def token(index: int) -> str:
    """The token user ``index`` signs in with."""
    return f"t{index}"


def credentials(index: int) -> dict[str, str]:
    """What user ``index`` sends with ``authorize``."""
    return {"id": user_id(index), "token": token(index)}


def group_id(index: int) -> str:
    """The id of group ``index``."""
    return f"g{index}"


@dataclass(frozen=True)
class Population:
    """``users`` users and as many whole groups of ``group_size`` as fit."""

    users: int
    group_size: int

    @property
    def groups(self) -> int:
        """How many groups there are."""
        if self.group_size < 1:
            return 0
        return self.users // self.group_size

    def members(self, group: int) -> range:
        """The user indices of group ``group``."""
        return range(group * self.group_size, (group + 1) * self.group_size)

    def group_of(self, user: int) -> int | None:
        """The group user ``user`` belongs to, or None."""
        if self.group_size < 1 or user >= self.groups * self.group_size:
            return None
        return user // self.group_size

    @classmethod
    def from_environment(cls) -> Population:
        """The population the bench asked for, through its environment
        variables (100 users in groups of 50 when they are unset)."""
        return cls(
            users=int(os.environ.get(USERS_ENV, "100")),
            group_size=int(os.environ.get(GROUP_SIZE_ENV, "50")),
        )

    def environment(self) -> dict[str, str]:
        """The environment variables that make a server process build this
        population (see L{from_environment})."""
        return {USERS_ENV: str(self.users), GROUP_SIZE_ENV: str(self.group_size)}
