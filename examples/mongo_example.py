"""node-chat-server's MongoDB example, re-done with chatserver.

Run it against a MongoDB server::

    python examples/mongo_example.py mongodb://localhost:27017/chatserver --demo

and point chat-client at ``ws://localhost:4001``. ``--demo`` (re)creates the
users alice, bob and carol, whose tokens are ``alice-token`` and so on, and
the group ``team`` (alice and bob); leave it out to use the users and groups
your application keeps in the ``users`` and ``groups`` collections (see
:mod:`chatserver.storage.mongo` for their shape, and ``python -m chatserver
migrate-seed`` to convert a database laid out as node-chat-server's example).

Besides the built-in actions it serves the seed's custom one::

    client.request("getUsersAndGroups")
    -> {"users": [the users, by id], "groups": [the groups you belong to]}

with a query of its own, run the way the store runs its own (same timeout,
same error handling). Unlike the seed's, it reads at most ``MAX_USERS`` users.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.endpoints import serverFromString
from twisted.logger import (
    FilteringLogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    globalLogBeginner,
    textFileLogObserver,
)
from txmongo import filter as qf
from txmongo.database import Database

from chatserver import ChatError, build_server
from chatserver.storage.mongo import MongoStorage

DEMO_USERS = {"alice": "Alice", "bob": "Bob", "carol": "Carol"}
DEMO_GROUPS = {"team": ["alice", "bob"]}
BY_ID = qf.sort(qf.ASCENDING("_id"))
MAX_USERS = 1000


class ChatStorage(MongoStorage):
    """MongoStorage plus the query behind ``getUsersAndGroups``."""

    def users_and_groups(self, user_id: str) -> Deferred[dict[str, list[dict]]]:
        """The users (without token hashes) and the groups ``user_id`` is in."""

        async def query(db: Database) -> dict[str, list[dict]]:
            users = await db.users.find(
                {}, projection={"tokenHash": 0}, sort=BY_ID, limit=MAX_USERS
            )
            # Served by the store's member_groups index.
            groups = await db.groups.find({"users": user_id}, sort=BY_ID)
            return {
                "users": [{**u, "_id": str(u["_id"])} for u in users],
                "groups": [{**g, "_id": str(g["_id"])} for g in groups],
            }

        # Same timeout and error handling as the built-in requests.
        return self.run(query, name="getUsersAndGroups")


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("uri", help="mongodb://host:port/database")
    parser.add_argument("--port", default="tcp:4001", help="where to listen (default tcp:4001)")
    parser.add_argument("--demo", action="store_true", help="create demo users and a group")
    args = parser.parse_args(argv)

    info = LogLevelFilterPredicate(defaultLogLevel=LogLevel.info)
    globalLogBeginner.beginLoggingTo(
        [FilteringLogObserver(textFileLogObserver(sys.stdout), [info])]
    )
    storage = ChatStorage(args.uri)

    def get_users_and_groups(connection: Any, data: Any) -> Deferred:
        user = connection.user
        return storage.users_and_groups(str(user.get("_id", user.get("id"))))

    server = build_server(storage, actions={"getUsersAndGroups": get_users_and_groups})

    async def start() -> None:
        # Outside twistd nothing starts the storage service for us.
        storage.startService()
        reactor.addSystemEventTrigger("before", "shutdown", storage.stopService)
        if args.demo:  # well-known tokens: for trying it out only
            for user_id, name in DEMO_USERS.items():
                token = f"{user_id}-token"
                try:
                    await storage.add_user(user_id, name=name, token=token)
                except ValueError:  # there from an earlier run
                    await storage.set_token(user_id, token)
            for group_id, members in DEMO_GROUPS.items():
                await storage.add_group(group_id, members, name=group_id.title())
        await serverFromString(reactor, args.port).listen(server.site)

    def failed(failure: Any) -> None:
        if failure.check(ChatError):  # e.g. an index in the way: one line says which
            print(f"mongo_example: {failure.value.message}", file=sys.stderr)
        else:
            failure.printTraceback()
        reactor.stop()

    reactor.callWhenRunning(lambda: ensureDeferred(start()).addErrback(failed))
    reactor.run()


if __name__ == "__main__":
    main(sys.argv[1:])
