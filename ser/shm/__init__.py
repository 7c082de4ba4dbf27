"""Shared-memory tables and locks: the only state shared between processes.

``Shm`` (registry.py) is the entry point; see each module's docstring for
its theory of operation: arena.py (segment and allocator), lock.py (robust
striped locks), table.py (hash tables), stats.py (per-process counters).
"""

from ser.shm.arena import Arena, remove_stale, segment_name
from ser.shm.errors import ShmError, ShmFull
from ser.shm.lock import LockSet
from ser.shm.registry import Shm
from ser.shm.stats import Stats
from ser.shm.table import Record, Table

__all__ = [
    "Arena",
    "LockSet",
    "Record",
    "Shm",
    "ShmError",
    "ShmFull",
    "Stats",
    "Table",
    "remove_stale",
    "segment_name",
]
