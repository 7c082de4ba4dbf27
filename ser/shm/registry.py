"""The shm registry: one arena, its tables by name, and the statistics.

Theory of operation
-------------------
:class:`Shm` is what the master holds. Everything is declared before fork
("declare, then fork"), children inherit the mapping and the Python object,
and find tables by name::

    master, start-up   shm = Shm.create(segment_name(), mb << 20)
                       shm.create_table("location", size_bits=10)
                       shm.stats.declare("core:rcv_requests")
    each child         shm.child_init(rank)          # right after fork
                       loc = shm.table("location")
    master, reap loop  shm.recover(pid)              # after waitpid() -> pid
    master, shutdown   shm.close(); shm.unlink()     # after the children

The table directory lives in the segment (root slot 0: name -> table
header), so a tool that :meth:`Shm.attach`-es by segment name sees the same
tables; the statistics region hangs off root slot 1.
"""

from __future__ import annotations

import logging
import os
import struct
import time
from collections.abc import Callable

from ser.shm.arena import Arena
from ser.shm.errors import ShmError
from ser.shm.stats import Stats
from ser.shm.table import Table

log = logging.getLogger("ser.shm")

_DIR = struct.Struct("@QQ")
_ENTRY = struct.Struct("@56sQ")
_ROOT_TABLES = 0
_ROOT_STATS = 1


class Shm:
    """The shared state of one ser instance."""

    def __init__(self, arena: Arena, clock: Callable[[], float] = time.time) -> None:
        self.arena = arena
        self.clock = clock
        self._dir = arena.root(_ROOT_TABLES)
        stats = arena.root(_ROOT_STATS)
        if not self._dir or not stats:
            raise ShmError(f"{arena.name}: no ser registry in this segment")
        self.stats = Stats(arena, stats)
        self._tables: dict[str, Table] = {}

    @classmethod
    def create(cls, name: str, size: int, *, max_tables: int = 64, max_procs: int = 128,
               max_counters: int = 512, clock: Callable[[], float] = time.time) -> Shm:
        """Create the segment (``size`` bytes) with an empty registry.
        The master calls this before forking."""
        arena = Arena.create(name, size)
        try:
            directory = arena.alloc_static(_DIR.size + _ENTRY.size * max_tables)
            _DIR.pack_into(arena.mm, directory, max_tables, 0)
            arena.set_root(_ROOT_TABLES, directory)
            stats = Stats.create(arena, max_procs, max_counters)
            arena.set_root(_ROOT_STATS, stats.header)
            return cls(arena, clock)
        except BaseException:
            arena.close()
            arena.unlink()
            raise

    @classmethod
    def attach(cls, name: str, clock: Callable[[], float] = time.time) -> Shm:
        """Map an existing instance's segment (tools, tests)."""
        return cls(Arena.attach(name), clock)

    def _entries(self) -> dict[str, int]:
        mm = self.arena.mm
        _, n = _DIR.unpack_from(mm, self._dir)
        out = {}
        for i in range(n):
            raw, header = _ENTRY.unpack_from(mm, self._dir + _DIR.size + _ENTRY.size * i)
            out[raw.rstrip(b"\0").decode()] = header
        return out

    def create_table(self, name: str, size_bits: int, lock_bits: int | None = None) -> Table:
        """A new table of 2^size_bits buckets, before fork."""
        raw = name.encode()
        if not raw or len(raw) >= _ENTRY.size - 8:
            raise ValueError(f"bad table name {name!r}")
        if name in self._entries():
            raise ShmError(f"shm table {name!r} exists already")
        mm = self.arena.mm
        max_tables, n = _DIR.unpack_from(mm, self._dir)
        if n >= max_tables:
            raise ShmError(f"more than {max_tables} shm tables")
        table = Table.create(self.arena, name, size_bits, lock_bits, self.clock)
        _ENTRY.pack_into(mm, self._dir + _DIR.size + _ENTRY.size * n, raw, table.header)
        self.arena.u64[(self._dir >> 3) + 1] = n + 1  # publish the entry
        self._tables[name] = table
        return table

    def table(self, name: str) -> Table:
        """The table called ``name`` (created by the master)."""
        table = self._tables.get(name)
        if table is None:
            header = self._entries().get(name)
            if header is None:
                raise ShmError(f"no shm table {name!r}")
            table = self._tables[name] = Table.open(self.arena, name, header, self.clock)
        return table

    def table_names(self) -> list[str]:
        return list(self._entries())

    def child_init(self, rank: int) -> None:
        """Right after fork, in the child: select its statistics row."""
        self.stats.child_init(rank)

    def recover(self, pid: int) -> int:
        """The master's reap loop calls this for every reaped child.

        The kernel has already released the robust mutexes the dead process
        held; this marks them consistent, counts and logs them, so the event
        shows at reap time. Returns how many locks were taken over.
        """
        for name in self._entries():
            self.table(name)
        n = self.arena.recover()
        if n:
            log.warning("shm: process %d died holding %d lock(s); recovered", pid, n)
        return n

    def usage(self) -> dict[str, int]:
        """For the ``core.shmmem`` RPC."""
        return self.arena.usage()

    def close(self) -> None:
        """Unmap in this process."""
        self.arena.close()

    def unlink(self) -> None:
        """Remove the segment name (master, at shutdown, after the children)."""
        self.arena.unlink()

    def __enter__(self) -> Shm:
        return self

    def __exit__(self, *exc: object) -> None:
        creator = self.arena.creator == os.getpid()
        self.close()
        if creator:
            self.unlink()
