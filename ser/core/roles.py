"""Process roles: each is a class with a pre-fork half and a post-fork ``run()``.

The master builds one :class:`Role` per child rank before forking (that is the
pre-fork half: it only holds what the child needs) and calls
:func:`child_main` in the forked child, which does what every child does —
title, log role, signals, the per-process runtime and module ``child_init``,
the readiness report — and then hands over to ``role.run(env)``.
"""

from __future__ import annotations

import gc
import os
import signal
import struct
from dataclasses import dataclass, field
from typing import Any

from ser.core import log as logmod
from ser.core.cfg.runtime import Runtime
from ser.core.log import log
from ser.core.net import SocketInfo
from ser.core.procs import ProcTable, set_title


@dataclass
class Env:
    """Everything a child inherits from the master (built before the fork)."""
    cfg: Any
    sockets: list[SocketInfo]
    procs: ProcTable
    shm: Any                       # ser.shm state (arena, tables, stats)
    stats: Any
    rundir: str
    options: dict[str, Any] = field(default_factory=dict)
    ready_fd: int = -1
    started: float = 0.0
    rank: int = 0
    rt: Runtime | None = None
    cfgvars: Any = None            # ser.core.cfgvars.CfgVars; its poll() belongs in every loop


class Role:
    kind = "child"

    def __init__(self, rank: int, desc: str) -> None:
        self.rank = rank
        self.desc = desc

    @property
    def title(self) -> str:
        return f"ser:{self.kind}{self.rank}"

    def run(self, env: Env) -> int:
        raise NotImplementedError

    def reaped(self, env: Env) -> None:
        """In the master, after this child died: release shared state that
        only the dead process could have released (default: nothing)."""


class _Stop(BaseException):
    """Raised by the SIGTERM handler of a child to leave its loop."""


def _stop(signum: int, frame: Any) -> None:
    raise _Stop()


def child_main(role: Role, env: Env) -> int:
    """The life of a forked child; returns its exit code."""
    env.rank = role.rank
    set_title(role.title)
    logmod.set_role(f"{role.kind}{role.rank}")
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    signal.set_wakeup_fd(-1)
    if env.cfgvars is not None:
        env.cfgvars.install_handler()
        env.cfgvars.update()        # a change made while this child was forked
    try:
        if env.shm is not None:
            env.shm.child_init(role.rank)
        rt = Runtime(env.cfg.settings, env.cfg.modules, role.rank)
        rt.local_hosts |= env.options.get("local_hosts", set())
        for si in env.sockets:
            rt.local_hosts.add(si.host.lower())
            rt.local_ports.add(si.port)
            if si.advertise_host:
                rt.local_hosts.add(si.advertise_host.lower())
        rt.shm = env.shm
        rt.stream_send = env.options.get("stream_send")    # ser.core.tcp.StreamSender
        env.rt = rt
        for inst in env.cfg.modules.values():
            if inst.decl.child_init is not None:
                inst.decl.child_init(inst, role.rank)
        if env.ready_fd >= 0:
            os.write(env.ready_fd, struct.pack("<i", role.rank))
        # everything allocated so far lives as long as the process: keep the
        # collector (and its writes to shared copy-on-write pages) off it
        gc.freeze()
        return role.run(env)
    except _Stop:
        return 0
    except Exception:
        log.exception("%s (rank %d) failed", role.kind, role.rank)
        return 1
