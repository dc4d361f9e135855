"""What importing the package costs: no reactor, no database or Redis client."""

from __future__ import annotations

import subprocess
import sys

CHECK = """
import sys, chatserver
from chatserver import IChatStorage, MemoryStorage, Session, ServerAPI, build_server
clients = ('txmongo', 'pymongo', 'bson', 'txredisapi')
heavy = sorted(m for m in sys.modules if m.split('.')[0] in clients)
print('reactor' if 'twisted.internet.reactor' in sys.modules else 'no reactor', heavy)
"""


def test_import_chatserver_installs_no_reactor_and_no_clients():
    done = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "no reactor []", done.stdout + done.stderr
