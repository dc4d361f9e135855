"""``python -m chatserver [options]`` runs the server (as ``twistd -n chatserver``);
``python -m chatserver users|groups ...`` manages an SQLite database's accounts;
``python -m chatserver migrate-seed mongodb://...`` converts a node-chat-server database."""

from __future__ import annotations

import sys

ADMIN_COMMANDS = ("users", "groups")


def main(argv: list[str] | None = None) -> int:
    """Run the server in the foreground, or an admin command."""
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ADMIN_COMMANDS:
        from chatserver.admin import main as admin_main

        return admin_main(argv)
    if argv and argv[0] == "migrate-seed":
        from chatserver.storage.mongo_migrate import main as migrate_main

        return migrate_main(argv[1:])
    from twisted.scripts.twistd import run

    sys.argv = ["twistd", "--nodaemon", "--pidfile=", "chatserver", *argv]
    run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
