"""TEST HOOKS, off unless the environment sets SER_TEST_HOOKS=1.

With them on, the master creates a small shared table ``test_hooks`` and a
worker treats two extension methods specially, before the script runs:

* ``X-HOLD-LOCK``: take the bucket lock of key ``k`` and sleep 60 s (after
  writing the worker's pid to ``$SER_TEST_HOOKS_PIDFILE``) — so a test can
  SIGKILL a process that holds a shared-memory lock;
* ``X-SHM-TOUCH``: set and read key ``k`` in that table and answer 200 —
  which would hang if the lock were still wedged.

Nothing here runs in production: the methods are ordinary unknown methods
when the variable is not set.
"""

from __future__ import annotations

import os
from typing import Any

TABLE = "test_hooks"
ENABLED = os.environ.get("SER_TEST_HOOKS") == "1"


def create(shm: Any) -> None:
    if ENABLED:
        shm.create_table(TABLE, 4)


def handle(core: Any, ctx: Any) -> bool:
    """True when the request was a test hook (and has been dealt with)."""
    method = ctx.msg.method
    if method == "X-HOLD-LOCK":
        table = core.rt.shm.table(TABLE)
        path = os.environ.get("SER_TEST_HOOKS_PIDFILE")
        if path:
            with open(path, "w") as f:
                f.write(str(os.getpid()))
        table.debug_hold_lock(b"k", 60.0)
        return True
    if method == "X-SHM-TOUCH":
        table = core.rt.shm.table(TABLE)
        table.set(b"k", str(os.getpid()).encode())
        ok = table.get(b"k") == str(os.getpid()).encode()
        core.reply(ctx, 200 if ok else 500, "Touched" if ok else "Lost")
        return True
    return False
