"""Per-process statistics counters in shared memory.

Theory of operation
-------------------
Counters are declared by name (``group:name``, e.g. ``core:rcv_requests``,
``sl:1xx_replies``) in the master before fork. The region is a matrix of
signed 64-bit integers, one row per process rank and one column per
counter, plus a name table and a "baseline" row::

    header | names (max_counters x 64 bytes) | baseline row | rank rows

After fork each process calls :meth:`Stats.child_init` with its rank and from
then on writes only its own row: ``inc`` is a plain read-add-store with no
lock, because no other process writes that slot. A reader sums the column
over all rows and subtracts the baseline; every slot is an aligned 8-byte
value written with one store, so a reader never sees half a number (it may
see a sum that is a few increments old, which is fine for statistics).

``reset(name)`` cannot zero other processes' rows (that would race with their
unlocked ``inc``); it stores the current sum into the baseline row instead,
under a small lock that only resetters take.

A forked child that forgets ``child_init`` would share the master's row and
lose increments, so forking disables ``inc`` in the child until
``child_init(rank)`` is called (``os.register_at_fork``).
"""

from __future__ import annotations

import os
import re
import struct
import weakref

from ser.shm.arena import Arena
from ser.shm.errors import ShmError

_HDR = struct.Struct("@8sQQQQQQQ")
_MAGIC = b"SERSTA01"
NAME_SIZE = 64
_NAME = re.compile(r"^[A-Za-z0-9_.-]+:[A-Za-z0-9_.-]+$")


def _forget_rank(ref: weakref.ref[Stats]) -> None:
    stats = ref()
    if stats is not None:
        stats._row = -1


class Stats:
    """The counter matrix. Create with :meth:`create` before fork."""

    def __init__(self, arena: Arena, header: int) -> None:
        mm = arena.mm
        (magic, self.max_procs, self.max_counters, _, self._names, self._base,
         self._rows, lock) = _HDR.unpack_from(mm, header)
        if magic != _MAGIC:
            raise ShmError(f"bad stats header at {header}")
        self.header = header
        self._arena = arena
        self._mm = mm
        self._i = arena.i64
        self._stride = 8 * self.max_counters
        self._lock = arena.lock_set(lock, 1)
        self._index: dict[str, int] = {}
        self._row = self._rows >> 3  # word index of rank 0 (the master) until child_init
        pad = f"{self._stride - 8}x"
        self._column = struct.Struct("@" + ("q" + pad) * (self.max_procs - 1) + "q")
        self._load_names()
        ref = weakref.ref(self)
        os.register_at_fork(after_in_child=lambda: _forget_rank(ref))

    @classmethod
    def create(cls, arena: Arena, max_procs: int = 128, max_counters: int = 512) -> Stats:
        if max_procs < 1 or max_counters < 1:
            raise ValueError("max_procs and max_counters must be positive")
        header = arena.alloc_static(_HDR.size)
        names = arena.alloc_static(NAME_SIZE * max_counters)
        base = arena.alloc_static(8 * max_counters)
        rows = arena.alloc_static(8 * max_counters * max_procs)
        lock, _ = arena.new_lock_set(1)
        _HDR.pack_into(arena.mm, header, _MAGIC, max_procs, max_counters, 0, names, base,
                       rows, lock)
        return cls(arena, header)

    def _count(self) -> int:
        return self._i[(self.header >> 3) + 3]

    def _load_names(self) -> None:
        mm = self._mm
        for i in range(len(self._index), self._count()):
            off = self._names + NAME_SIZE * i
            self._index[mm[off:off + NAME_SIZE].rstrip(b"\0").decode()] = i

    def _col(self, name: str) -> int:
        try:
            return self._index[name]
        except KeyError:
            self._load_names()
            if name not in self._index:
                raise ShmError(f"unknown statistic {name!r}") from None
            return self._index[name]

    # -- declaration (master, before fork) -------------------------------------

    def declare(self, name: str) -> int:
        """Declare counter ``group:name`` (idempotent); returns its column."""
        if name in self._index:
            return self._index[name]
        if os.getpid() != self._arena.creator:
            raise ShmError(f"statistic {name!r} must be declared in the master before fork")
        raw = name.encode()
        if not _NAME.match(name) or len(raw) >= NAME_SIZE:
            raise ValueError(f"bad statistic name {name!r} (want group:name)")
        i = self._count()
        if i >= self.max_counters:
            raise ShmError(f"more than {self.max_counters} statistics declared")
        off = self._names + NAME_SIZE * i
        self._mm[off:off + NAME_SIZE] = raw.ljust(NAME_SIZE, b"\0")
        self._i[(self.header >> 3) + 3] = i + 1
        self._index[name] = i
        return i

    def child_init(self, rank: int) -> None:
        """Select this process's row (rank 0 is the master)."""
        if not 0 <= rank < self.max_procs:
            raise ShmError(f"rank {rank} outside 0..{self.max_procs - 1}")
        self._row = (self._rows + rank * self._stride) >> 3

    # -- writing (own row only) -------------------------------------------------

    def inc(self, name: str, n: int = 1) -> None:
        """Add ``n`` to this process's slot of ``name``."""
        row = self._row
        if row < 0:
            raise ShmError("stats: child_init(rank) was not called after fork")
        col = self._index.get(name)
        if col is None:
            col = self._col(name)
        self._i[row + col] += n

    # -- reading (sums over all rows) ------------------------------------------

    def _sum(self, i: int) -> int:
        total = sum(self._column.unpack_from(self._mm, self._rows + 8 * i))
        return total - self._i[(self._base >> 3) + i]

    def get(self, name: str) -> int:
        return self._sum(self._col(name))

    def all(self) -> dict[str, int]:
        """Every counter, summed over processes, in declaration order."""
        self._load_names()
        n = len(self._index)
        if not n:
            return {}
        row = struct.Struct(f"@{n}q")
        totals = [-v for v in row.unpack_from(self._mm, self._base)]
        for rank in range(self.max_procs):
            for i, v in enumerate(row.unpack_from(self._mm, self._rows + rank * self._stride)):
                totals[i] += v
        return dict(zip(self._index, totals))

    def get_group(self, group: str) -> dict[str, int]:
        """Counters of one group (``sl`` -> ``{"sl:1xx_replies": 3, ...}``)."""
        prefix = group + ":"
        return {k: v for k, v in self.all().items() if k.startswith(prefix)}

    def groups(self) -> list[str]:
        self._load_names()
        return sorted({name.split(":", 1)[0] for name in self._index})

    def reset(self, name: str) -> None:
        """Make ``get(name)`` read 0 from now on (see the module docstring)."""
        i = self._col(name)
        self._lock.acquire(0)
        try:
            total = sum(self._column.unpack_from(self._mm, self._rows + 8 * i))
            self._i[(self._base >> 3) + i] = total
        finally:
            self._lock.release(0)
