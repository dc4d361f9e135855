"""``python -m chatserver [options]`` runs the server (as ``twistd -n chatserver``);
``python -m chatserver users|groups ...`` manages the accounts of a store
(SQLite, MongoDB); ``python -m chatserver migrate-seed mongodb://...``
converts a node-chat-server database; ``--version`` and ``--help`` say what
this is."""

from __future__ import annotations

import sys

ADMIN_COMMANDS = ("users", "groups")
# The options an admin command may take before its name (see chatserver.admin).
_VALUED = ("--storage", "-s")
_FLAGS = ("--allow-unknown",)

SYNOPSIS = """\
Usage: python -m chatserver [options]                  run the chat server (as twistd -n chatserver)
       python -m chatserver [--storage SPEC] users|groups COMMAND ...
       python -m chatserver migrate-seed mongodb://host[:port]/database [--dry-run]
       python -m chatserver --version | --help
"""

ADMIN_HELP = """\
Admin commands (each takes --storage sqlite:PATH or mongodb://host:port/db, anywhere on the line;
'python -m chatserver COMMAND --help' tells more):
  users add USER [NAME]               create a user; prints their token, once
  users list                          list users: id, tab, name
  users remove USER                   delete a user; their sessions end
  users new-token USER                give a user a new token (printed once)
  users revoke USER                   end a user's live sessions
  groups add GROUP MEMBER...          create a group, or replace its members
  groups list                         list groups: id, then members
  groups remove GROUP                 delete a group
  groups add-member GROUP USER...     add users to a group
  groups remove-member GROUP USER...  take users out of a group
                                      (groups add and add-member refuse ids with no user
                                      unless given --allow-unknown)
  migrate-seed mongodb://...          convert a node-chat-server MongoDB database
"""


def admin_command(argv: list[str]) -> str | None:
    """The admin command ``argv`` names (``users`` or ``groups``), if any: its
    first word once the options an admin command may take first are skipped."""
    args = iter(argv)
    for arg in args:
        if arg in _VALUED:
            next(args, None)
        elif arg.startswith("--storage=") or arg in _FLAGS:
            continue
        else:
            return arg if arg in ADMIN_COMMANDS else None
    return None


def server_help() -> str:
    """The top-level help: how to run the server, its options, and the admin commands."""
    from chatserver.options import Options

    options = (
        Options()
        .getUsage()
        .replace("Display Twisted version and exit.", "Print chatserver's version and exit.")
    )
    return f"{SYNOPSIS}\nServer options:{options.lstrip().removeprefix('Options:')}\n{ADMIN_HELP}"


def main(argv: list[str] | None = None) -> int:
    """Run the server in the foreground, or an admin command; return the exit
    status (0 done, 1 failed, 2 a usage error)."""
    argv = sys.argv[1:] if argv is None else argv
    if admin_command(argv) is not None:
        from chatserver.admin import main as admin_main

        return admin_main(argv)
    if argv and argv[0] == "migrate-seed":
        from chatserver.storage.mongo_migrate import main as migrate_main

        return migrate_main(argv[1:])
    options = argv[: argv.index("--")] if "--" in argv else argv
    if "--version" in options:
        from chatserver._version import __version__

        print(f"chatserver {__version__}")
        return 0
    if "--help" in options or "-h" in options:
        print(server_help(), end="")
        return 0
    from twisted.scripts.twistd import run

    sys.argv = ["twistd", "--nodaemon", "--pidfile=", "chatserver", *argv]
    run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
