"""The ``getUsersAndGroups`` action, after node-chat-server's example: whom the
signed-in user can talk to."""

from __future__ import annotations

from typing import Any

from chatserver.interfaces import IUserDirectory

MAX_USERS = 1000


class UsersAndGroups:
    """Lists users (those the storage knows, and those online here) and the
    caller's groups. Meant for small deployments and the web demo: it lists
    at most C{max_users} users, online ones first."""

    def __init__(self, directory: IUserDirectory | None, max_users: int = MAX_USERS) -> None:
        """
        @param directory: the storage, if it can list users and groups; with
            C{None}, only the users online here are listed.
        """
        self.directory = directory
        self.max_users = max_users

    async def __call__(self, connection: Any, data: object) -> dict:
        me = connection.user_id
        known: list[dict] = []
        groups: list[dict] = []
        if self.directory is not None:
            known = await self.directory.list_users()
            groups = [g for g in await self.directory.list_groups() if me in g["members"]]
        online = connection.factory.registry.user_ids()
        users = {u["id"]: {**u, "online": u["id"] in online} for u in known}
        for user_id in online:
            users.setdefault(user_id, {"id": user_id, "name": user_id, "online": True})
        users.pop(me, None)
        listed = sorted(users.values(), key=lambda u: (not u["online"], u["id"]))
        return {
            "users": listed[: self.max_users],
            "groups": [{"id": g["id"], "name": g.get("name", g["id"]), **g} for g in groups],
        }
