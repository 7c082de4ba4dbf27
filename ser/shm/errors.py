"""The shm error family.

Every failure of the shared-memory layer is a :class:`ShmError`. Running out
of arena space is the one callers are expected to handle (answer 500/503,
count it): :class:`ShmFull`. Nothing in ``ser.shm`` loses data silently.
"""

from __future__ import annotations


class ShmError(Exception):
    """A shared-memory operation failed (bad segment, misuse, corrupt block)."""


class ShmFull(ShmError):
    """The arena has no block of the requested size left (``-m`` too small)."""
