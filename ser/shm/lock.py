"""Striped locks in shared memory that a killed process cannot wedge.

Theory of operation
-------------------
A :class:`LockSet` is an array of ``count`` POSIX mutexes living inside the
shm arena, 64 bytes apart (a cache line each; ``pthread_mutex_t`` is 40 bytes
on x86_64, 48 on aarch64). They are initialised once, by the master, before
fork, with three attributes:

* ``PTHREAD_PROCESS_SHARED`` -- usable from every process mapping the segment;
* ``PTHREAD_MUTEX_ROBUST`` -- if the owner dies, the kernel releases the mutex
  and the next locker is told so (``EOWNERDEAD``);
* ``PTHREAD_MUTEX_ERRORCHECK`` -- re-locking a mutex you hold fails with
  ``EDEADLK`` (raised as :class:`ShmError`) instead of hanging the process,
  e.g. when an ``update()`` callback calls back into the same table.

The mutexes are reached through ``ctypes``: an uncontended acquire is one
``pthread_mutex_trylock`` call made through ``PyDLL`` (no GIL round trip);
only when the mutex is busy do we block in ``pthread_mutex_lock`` through
``CDLL``, which releases the GIL while waiting.

Why robust mutexes -- the window between acquiring and recording the owner
---------------------------------------------------------------------------
The requirement is that a process killed with SIGKILL while holding a lock
does not wedge the others. With a plain semaphore (posix_ipc) the master has
to learn who held it from an owner-pid slot written *after* ``sem_wait``
returns and cleared *before* ``sem_post``. SIGKILL can land between those two
steps, in either direction, and the master then sees a taken semaphore with
no owner (or an owner that already released). Telling that apart from a live
process sitting in the same window is only possible by guessing (wait and see
whether anyone makes progress), and a wrong guess either leaves the lock
wedged or hands it to two processes at once.

Robust mutexes close the window in the kernel: the owner's TID *is* the lock
word, and glibc records "about to take / release this mutex" in the thread's
robust list (``list_op_pending``) before the atomic operation, so the kernel
releases exactly the mutexes the dying thread held -- including one it was in
the middle of taking -- as part of process exit, before the master can even
reap it. There is no user-space owner record to get out of sync. The next
locker gets ``EOWNERDEAD``; we mark the mutex consistent, count it in the
arena (``lock_recoveries``) and log it. Data protected by the lock is always
consistent because writers follow the publish rule (see ``table.py``): a dead
holder can at worst leak a block, never leave a torn record.

:meth:`LockSet.recover` (called by the master's reap loop through
``Shm.recover(pid)``) sweeps every mutex with ``trylock`` so that recovery is
logged at reap time rather than at next use; correctness does not depend on
it being called.

Measured here (``python -m bench.shm``; x86_64, 2 CPUs shared with other
work, glibc 2.36, Python 3.11; microseconds per uncontended acquire+release
from Python, range over several runs):

==============================================  ===========
posix_ipc semaphore (sem_wait / sem_post)        0.17 - 0.19
posix_ipc semaphore + owner-pid slot writes      0.39 - 0.44
robust pthread mutex, bare ctypes calls          0.47 - 0.52
robust pthread mutex, ``LockSet`` (chosen)       0.68 - 0.73
SysV semaphore with SEM_UNDO (sysv_ipc)          1.7 - 2.1
fcntl byte-range lock (``lockf``)                2.2 - 2.5
==============================================  ===========

A bare posix semaphore is the fastest, but with the owner bookkeeping it
needs it is within ~0.1-0.3 us of the robust mutex while leaving the window
above open (and it would still need an intent slot and a guess to be
recoverable). The kernel-released alternatives (SEM_UNDO, fcntl) are as safe
as the robust mutex but 3x slower: a system call on every acquire and
release. Against a whole table operation (``get`` ~3-4 us, ``set`` ~8 us,
most of it struct and slicing work) the lock is under a fifth of the cost.

Linux/glibc (or musl) only: robust process-shared mutexes are required.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from ser.shm.errors import ShmError

MUTEX_SIZE = 64
"""Bytes reserved for one mutex: a cache line, larger than any pthread_mutex_t."""

_PTHREAD_PROCESS_SHARED = 1
_PTHREAD_MUTEX_ROBUST = 1
_PTHREAD_MUTEX_ERRORCHECK = 2


def _load_pthread() -> tuple[ctypes.PyDLL, ctypes.CDLL]:
    candidates: list[str | None] = [None]
    found = ctypes.util.find_library("pthread")
    if found:
        candidates.append(found)
    for path in candidates:
        fast, blocking = ctypes.PyDLL(path), ctypes.CDLL(path)
        if hasattr(fast, "pthread_mutex_consistent"):
            return fast, blocking
    raise ShmError("robust pthread mutexes are not available on this system")


# The C library handles, not process state: both are read-only after import.
_FAST, _BLOCKING = _load_pthread()
_trylock = _FAST.pthread_mutex_trylock
_unlock = _FAST.pthread_mutex_unlock
_consistent = _FAST.pthread_mutex_consistent
_lock_blocking = _BLOCKING.pthread_mutex_lock


def _check(rc: int, what: str) -> None:
    if rc:
        raise ShmError(f"{what} failed: {errno.errorcode.get(rc, rc)}")


class _Closed(list[ctypes.c_void_p]):
    def __getitem__(self, i: object) -> ctypes.c_void_p:  # type: ignore[override]
        raise ShmError("shm segment is closed in this process")


class LockSet:
    """``count`` robust, process-shared mutexes at ``base + offset``.

    ``base`` is the address of the mapping in this process (``Arena.address``).
    ``on_owner_dead(i)`` is called, with the lock held, each time a lock is
    taken over from a dead owner.
    """

    __slots__ = ("_ptrs", "_on_owner_dead", "offset")

    def __init__(self, base: int, offset: int, count: int,
                 on_owner_dead: Callable[[int], None] | None = None) -> None:
        if count < 1:
            raise ValueError("a LockSet needs at least one lock")
        if offset % MUTEX_SIZE:
            raise ValueError("mutexes must be 64-byte aligned")
        self.offset = offset
        self._ptrs = [ctypes.c_void_p(base + offset + i * MUTEX_SIZE) for i in range(count)]
        self._on_owner_dead = on_owner_dead

    @staticmethod
    def nbytes(count: int) -> int:
        """Bytes of shm that ``count`` locks need."""
        return count * MUTEX_SIZE

    def __len__(self) -> int:
        return len(self._ptrs)

    def init(self) -> None:
        """Initialise every mutex; once, by the creator, before fork."""
        attr = ctypes.create_string_buffer(64)
        _check(_FAST.pthread_mutexattr_init(attr), "pthread_mutexattr_init")
        try:
            _check(_FAST.pthread_mutexattr_setpshared(attr, _PTHREAD_PROCESS_SHARED),
                   "pthread_mutexattr_setpshared")
            _check(_FAST.pthread_mutexattr_setrobust(attr, _PTHREAD_MUTEX_ROBUST),
                   "pthread_mutexattr_setrobust")
            _check(_FAST.pthread_mutexattr_settype(attr, _PTHREAD_MUTEX_ERRORCHECK),
                   "pthread_mutexattr_settype")
            for p in self._ptrs:
                _check(_FAST.pthread_mutex_init(p, attr), "pthread_mutex_init")
        finally:
            _FAST.pthread_mutexattr_destroy(attr)

    def acquire(self, i: int) -> None:
        """Take lock ``i``; blocks (GIL released) while another process holds it."""
        p = self._ptrs[i]
        rc = _trylock(p)
        if rc:
            self._acquire_slow(i, p, rc)

    def _acquire_slow(self, i: int, p: ctypes.c_void_p, rc: int) -> None:
        if rc == errno.EBUSY:
            rc = _lock_blocking(p)
        if rc == errno.EOWNERDEAD:
            _check(_consistent(p), "pthread_mutex_consistent")
            if self._on_owner_dead is not None:
                try:
                    self._on_owner_dead(i)
                except BaseException:
                    _unlock(p)
                    raise
            return
        if rc == errno.EDEADLK:
            raise ShmError(f"lock {i} is already held by this process (re-entrant call?)")
        _check(rc, f"lock {i}")

    def disable(self) -> None:
        """Make every later call fail with ShmError (the mapping is going away)."""
        self._ptrs = _Closed()

    def release(self, i: int) -> None:
        """Release lock ``i``, which this process must hold."""
        rc = _unlock(self._ptrs[i])
        if rc:
            _check(rc, f"unlock {i}")

    @contextmanager
    def hold(self, i: int) -> Iterator[None]:
        """``with locks.hold(i):`` -- for code off the hot path."""
        self.acquire(i)
        try:
            yield
        finally:
            self.release(i)

    def recover(self) -> int:
        """Sweep every lock; mark those left by a dead owner consistent.

        Returns how many were taken over. Locks held by live processes are
        skipped (``EBUSY``), never waited for.
        """
        recovered = 0
        for i, p in enumerate(self._ptrs):
            rc = _trylock(p)
            if rc == errno.EBUSY:
                continue
            if rc == errno.EDEADLK:
                raise ShmError(f"recover: lock {i} is held by the caller")
            if rc not in (0, errno.EOWNERDEAD):
                _check(rc, f"trylock {i}")
            try:
                if rc == errno.EOWNERDEAD:
                    _check(_consistent(p), "pthread_mutex_consistent")
                    recovered += 1
                    if self._on_owner_dead is not None:
                        self._on_owner_dead(i)
            finally:
                _unlock(p)
        return recovered
