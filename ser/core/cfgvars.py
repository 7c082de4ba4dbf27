"""Run-time configuration values shared by every process (the core half of
Kamailio's cfg framework; ``cfg_rpc`` is its RPC front-end, ``kex`` its
per-process ``setdebug``).

Theory of operation. The master declares every variable that may change at
run time (:data:`CORE_VARS`: ``core.debug``) and stores the values in a
small block of the shared-memory arena before the fork: one 64-bit word per
variable plus a generation word. Writing a value (``cfg.seti core debug 3``
in the control process) stores the word, bumps the generation and sends
SIGUSR2 to every process of the table. The signal handler only records
that the signal came (:meth:`CfgVars.record`); each process's loop calls
:meth:`CfgVars.poll` between its events — a UDP receiver before each
datagram, a TCP worker and the control process after each ``select``, the
timer after each sleep, the master in ``handle_usr2`` — which compares the
generation with the one this process last applied and, when it moved,
applies the values (``debug`` sets the log level). So the next message a
worker handles after the RPC returned is logged at the new level. A child
installs the handler and applies the values once at its start
(``ser.core.roles.child_main``), so a change made while it was being forked
is not lost. A process may override ``debug`` for itself (``kex``'s
``setdebug``) until ``resetdebug``.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from ser.core import log as logmod

NOTIFY_SIGNAL = signal.SIGUSR2


@dataclass(frozen=True)
class CfgVar:
    group: str
    name: str
    doc: str
    lo: int
    hi: int
    apply: Callable[[CfgVars, int], None] | None = None

    @property
    def key(self) -> str:
        return f"{self.group}.{self.name}"


def _apply_debug(cv: CfgVars, value: int) -> None:
    logmod.set_level(cv.local_debug if cv.local_debug is not None else value)


CORE_VARS: tuple[CfgVar, ...] = (
    CfgVar("core", "debug", "Log level: -5 (alert) .. 3 (debug).", -5, 3, _apply_debug),
)


class CfgVars:
    """The shared values (one instance per process, all over one shm block)."""

    def __init__(self, arena: Any, offset: int, initial: dict[str, int],
                 decls: tuple[CfgVar, ...] = CORE_VARS) -> None:
        self.decls = decls
        self.index = {d.key: i for i, d in enumerate(decls)}
        self.initial = dict(initial)
        self._i = arena.i64
        self._base = offset >> 3
        self.seen = -1
        self.local_debug: int | None = None
        self.signalled = False

    @classmethod
    def create(cls, arena: Any, initial: dict[str, int],
               decls: tuple[CfgVar, ...] = CORE_VARS) -> CfgVars:
        """In the master, before the fork."""
        off = arena.alloc_static(8 * (len(decls) + 1))
        cv = cls(arena, off, initial, decls)
        for d in decls:
            cv._i[cv._base + 1 + cv.index[d.key]] = int(initial.get(d.key, 0))
        cv._i[cv._base] = 1
        cv.seen = 1
        return cv

    def var(self, group: str, name: str) -> CfgVar | None:
        i = self.index.get(f"{group}.{name}")
        return None if i is None else self.decls[i]

    def groups(self) -> list[str]:
        return sorted({d.group for d in self.decls})

    def get(self, group: str, name: str) -> int:
        return self._i[self._base + 1 + self.index[f"{group}.{name}"]]

    def set(self, group: str, name: str, value: int) -> None:
        """Store a value (checked against the declaration) and bump the generation."""
        d = self.var(group, name)
        if d is None:
            raise KeyError(f"{group}.{name}")
        if not d.lo <= value <= d.hi:
            raise ValueError(f"{d.key} must be in {d.lo}..{d.hi}")
        self._i[self._base + 1 + self.index[d.key]] = value
        self._i[self._base] += 1

    def update(self, force: bool = False) -> bool:
        """Apply the shared values in this process if they changed since the last time."""
        gen = self._i[self._base]
        if gen == self.seen and not force:
            return False
        self.seen = gen
        for d in self.decls:
            if d.apply is not None:
                d.apply(self, self.get(d.group, d.name))
        return True

    def set_local_debug(self, level: int | None) -> None:
        """kex setdebug/resetdebug: this process's own log level (None: the shared one)."""
        self.local_debug = level
        self.update(force=True)

    def notify(self, pids: Iterable[int]) -> int:
        """Tell the other processes to apply the values; returns how many were told."""
        n = 0
        me = os.getpid()
        for pid in pids:
            if pid and pid != me:
                try:
                    os.kill(pid, NOTIFY_SIGNAL)
                    n += 1
                except ProcessLookupError:
                    pass
        self.update()
        return n

    def record(self, signum: int, frame: Any) -> None:
        """The SIGUSR2 handler of a child: only note it; ``poll`` does the work."""
        self.signalled = True

    def poll(self) -> bool:
        """From a process's loop: apply the values if a signal said they changed."""
        if not self.signalled:
            return False
        self.signalled = False
        return self.update()

    def install_handler(self) -> None:
        """In a child at its start (the master dispatches SIGUSR2 itself)."""
        signal.signal(NOTIFY_SIGNAL, self.record)
