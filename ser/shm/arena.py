"""The shm arena: one POSIX shared-memory segment and its allocator.

Theory of operation
-------------------
The master creates one segment (``/ser-<pid>-main``) of ``-m`` megabytes with
``posix_ipc.SharedMemory``, reserves its pages with ``posix_fallocate`` (so a
too-small ``/dev/shm`` fails at start-up instead of killing a worker with
SIGBUS later), maps it with ``mmap`` and then forks: every child inherits the
mapping at the same address. A process that did not fork from the master
(a debugging tool) can :meth:`Arena.attach` by name.

Layout (all integers native-endian 64-bit words)::

    0     header: magic, size, bump pointer, counters, root slots
    256   free lists: (head, length) per size class  (48 x 16 bytes)
    1024  the arena mutex                            (64 bytes, lock.py)
    4096  data: static regions and blocks, carved from the bump pointer

Blocks have power-of-two sizes (32 bytes .. 2^47). Each starts with an 8-byte
header (size class, tag) followed by the payload; :meth:`alloc` returns the
offset of the payload. A freed block goes on its class's free list (the link
is stored in the block itself); an allocation pops its class's list, else
takes fresh memory from the bump pointer, else splits the smallest larger
free block (buddy style: the unused halves go on the smaller lists). Free
blocks are never merged back (no coalescing): a workload that frees many
small records and then wants large ones can run out early.

Static regions (bucket arrays, lock arrays, stats rows) are carved from the
bump pointer before fork with :meth:`alloc_static`; they have no header and
are never freed.

Nothing fails silently: when no block is available the ``full_errors`` counter
in the header is incremented, the event is logged and :class:`ShmFull` is
raised; callers answer 500/503.

Crash safety: every change to allocator state is ordered so that a single
aligned 8-byte store is the commit point. Such stores go through the word
views :attr:`Arena.u64` / :attr:`Arena.i64` / :attr:`Arena.f64`
(``memoryview.cast``): one item assignment is one ``memcpy`` of 8 bytes, a
single machine store that neither a SIGKILL nor a concurrent reader can
split. ``struct.pack_into`` is NOT such a store -- it zeroes the target
before writing it (measured: an unlocked reader sees 0 in between), so it
is only used on memory nothing else can see yet. A process killed inside
``alloc``/``free`` can leak the block it was moving, or leave a counter off
by one, but never links a block twice or corrupts a list. The arena mutex is
a robust mutex, so its next user takes it over.
"""

from __future__ import annotations

import ctypes
import logging
import mmap
import os
import re
import struct

import posix_ipc

from ser.shm.errors import ShmError, ShmFull
from ser.shm.lock import MUTEX_SIZE, LockSet

log = logging.getLogger("ser.shm")

_MAGIC = b"SERSHM\x00\x01"
HEADER_SIZE = 4096
MIN_SIZE = 64 * 1024
MIN_CLASS = 5
MAX_CLASS = 47
ROOT_SLOTS = 8

# Header fields, as indexes of 8-byte words.
_W_SIZE = 1
_W_BUMP = 2
_W_FULL = 3
_W_RECOVERED = 4
_W_BLOCKS = 5
_W_USED = 6
_W_STATIC = 7
_W_CREATOR = 8
_W_ROOT = 16
_W_FREE = 32  # (head, length) pairs, one per size class
_OFF_LOCK = 1024

# A block header is one word: size class in the low 32 bits, tag above.
_USED = 0x5E55A10C << 32
_FREE = 0x5E55F4EE << 32
_CLASS = 0xFFFFFFFF
BLOCK_HEADER = 8

_STALE = re.compile(r"^ser-(\d+)-")


def segment_name(tag: str = "main", pid: int | None = None) -> str:
    """The conventional segment name: ``/ser-<pid>-<tag>``."""
    return f"/ser-{os.getpid() if pid is None else pid}-{tag}"


def remove_stale(prefix: str = "ser-", shm_dir: str = "/dev/shm") -> list[str]:
    """Unlink ``/dev/shm/ser-<pid>-*`` segments whose master ``pid`` is dead.

    Returns the names removed (with the leading ``/``).
    """
    removed: list[str] = []
    try:
        entries = os.listdir(shm_dir)
    except FileNotFoundError:
        return removed
    for entry in sorted(entries):
        if not entry.startswith(prefix):
            continue
        m = _STALE.match(entry)
        if not m:
            continue
        try:
            os.kill(int(m.group(1)), 0)
            continue
        except ProcessLookupError:
            pass
        except PermissionError:
            continue
        try:
            posix_ipc.unlink_shared_memory("/" + entry)
            removed.append("/" + entry)
        except posix_ipc.ExistentialError:
            pass
    return removed


class Arena:
    """One mapped shm segment with a size-class allocator.

    Use :meth:`create` (master, before fork) or :meth:`attach`.
    """

    def __init__(self, name: str, mm: mmap.mmap, owner: bool) -> None:
        self.name = name
        self.mm = mm
        self.owner = owner
        if mm[0:8] != _MAGIC:
            raise ShmError(f"{name}: not a ser shm segment")
        self.u64 = memoryview(mm).cast("Q")
        """The segment as unsigned words: ``u64[off >> 3]``, one-store writes."""
        self.i64 = memoryview(mm).cast("q")
        """The segment as signed words (counters)."""
        self.f64 = memoryview(mm).cast("d")
        """The segment as doubles (expiry times)."""
        self.size = self.u64[_W_SIZE]
        if self.size != len(mm):
            raise ShmError(f"{name}: header says {self.size} bytes, mapping has {len(mm)}")
        anchor = ctypes.c_char.from_buffer(mm)
        self.address = ctypes.addressof(anchor)
        del anchor
        self._lock_sets: list[LockSet] = []
        self._lock = self.lock_set(_OFF_LOCK, 1)

    # -- life cycle ---------------------------------------------------------

    @classmethod
    def create(cls, name: str, size: int) -> Arena:
        """Create, reserve and map a new segment of ``size`` bytes.

        Fails with :class:`ShmError` if it exists already or the memory
        cannot be reserved.
        """
        if size < MIN_SIZE:
            raise ShmError(f"shm size {size} is below the minimum of {MIN_SIZE} bytes")
        size -= size % 4096
        try:
            seg = posix_ipc.SharedMemory(name, posix_ipc.O_CREX, mode=0o600, size=size)
        except (posix_ipc.Error, OSError) as e:
            raise ShmError(f"cannot create shm segment {name}: {e}") from e
        try:
            try:
                os.posix_fallocate(seg.fd, 0, size)
            except OSError as e:
                raise ShmError(f"cannot reserve {size} bytes for {name}: {e}") from e
            mm = mmap.mmap(seg.fd, size)
        except BaseException:
            seg.close_fd()
            seg.unlink()
            raise
        seg.close_fd()
        struct.pack_into("@8sQQ", mm, 0, _MAGIC, size, HEADER_SIZE)
        struct.pack_into("@Q", mm, 8 * _W_CREATOR, os.getpid())
        arena = cls(name, mm, owner=True)
        arena._lock.init()
        return arena

    @classmethod
    def attach(cls, name: str) -> Arena:
        """Map an existing segment (for tools; workers inherit the mapping)."""
        try:
            seg = posix_ipc.SharedMemory(name)
        except (posix_ipc.Error, OSError) as e:
            raise ShmError(f"cannot open shm segment {name}: {e}") from e
        try:
            mm = mmap.mmap(seg.fd, seg.size)
        finally:
            seg.close_fd()
        return cls(name, mm, owner=False)

    def close(self) -> None:
        """Unmap in this process. Every lock set is disabled first, so a
        later call fails with an exception rather than touching freed memory."""
        for ls in self._lock_sets:
            ls.disable()
        for view in (self.u64, self.i64, self.f64):
            view.release()
        self.mm.close()

    def unlink(self) -> None:
        """Remove the segment name (the master, at shutdown). Mappings stay
        valid until closed."""
        try:
            posix_ipc.unlink_shared_memory(self.name)
        except posix_ipc.ExistentialError:
            pass

    @property
    def closed(self) -> bool:
        return self.mm.closed

    # -- locks ----------------------------------------------------------------

    def lock_set(self, offset: int, count: int) -> LockSet:
        """A :class:`LockSet` over mutexes at ``offset`` (counted and logged
        when taken over from a dead owner). Does not initialise them."""
        ls = LockSet(self.address, offset, count, self._owner_dead)
        self._lock_sets.append(ls)
        return ls

    def new_lock_set(self, count: int) -> tuple[int, LockSet]:
        """Allocate and initialise ``count`` mutexes (before fork)."""
        off = self.alloc_static(LockSet.nbytes(count), MUTEX_SIZE)
        ls = self.lock_set(off, count)
        ls.init()
        return off, ls

    def _owner_dead(self, i: int) -> None:
        # Not under one lock: two simultaneous take-overs may count once.
        n = self.i64[_W_RECOVERED] + 1
        self.i64[_W_RECOVERED] = n
        log.warning("shm %s: took over a lock left by a dead process (%d so far)",
                    self.name, n)

    def recover(self) -> int:
        """Sweep every lock set known to this process (see ``LockSet.recover``)."""
        return sum(ls.recover() for ls in self._lock_sets)

    # -- allocation -------------------------------------------------------------

    def alloc(self, n: int) -> int:
        """Allocate ``n`` bytes; returns the payload offset. Raises ShmFull."""
        if n < 0:
            raise ValueError("negative allocation")
        c = (n + BLOCK_HEADER - 1).bit_length()
        if c < MIN_CLASS:
            c = MIN_CLASS
        w = self.u64
        cnt = self.i64
        blk = full = 0
        self._lock.acquire(0)
        try:
            if c <= MAX_CLASS:
                i = _W_FREE + 2 * c
                blk = w[i]
                if blk:
                    w[i] = w[(blk >> 3) + 1]  # commit: popped
                    cnt[i + 1] -= 1
                else:
                    bump = w[_W_BUMP]
                    if bump + (1 << c) <= self.size:
                        w[_W_BUMP] = bump + (1 << c)  # commit: carved
                        blk = bump
                    else:
                        blk = self._split(c)
            if blk:
                w[blk >> 3] = c | _USED
                cnt[_W_BLOCKS] += 1
                cnt[_W_USED] += 1 << c
            else:
                full = cnt[_W_FULL] = cnt[_W_FULL] + 1
        finally:
            self._lock.release(0)
        if not blk:
            log.error("shm %s: out of memory allocating %d bytes (%d times so far)",
                      self.name, n, full)
            raise ShmFull(f"shm {self.name}: no free block of {n} bytes")
        return blk + BLOCK_HEADER

    def _split(self, c: int) -> int:
        """Pop the smallest free block larger than class ``c`` and split it;
        returns a class-``c`` block or 0. Called with the arena lock held."""
        w = self.u64
        for k in range(c + 1, MAX_CLASS + 1):
            i = _W_FREE + 2 * k
            blk = w[i]
            if not blk:
                continue
            w[i] = w[(blk >> 3) + 1]
            self.i64[i + 1] -= 1
            for j in range(k - 1, c - 1, -1):
                self._push_free(blk + (1 << j), j)
            return blk
        return 0

    def _push_free(self, blk: int, c: int) -> None:
        # The block's header and link first, the list head last: the head
        # store is the commit point.
        w = self.u64
        i = _W_FREE + 2 * c
        b = blk >> 3
        w[b] = c | _FREE
        w[b + 1] = w[i]
        w[i] = blk
        self.i64[i + 1] += 1

    def _block(self, off: int) -> tuple[int, int]:
        blk = off - BLOCK_HEADER
        if off % 8 or blk < HEADER_SIZE or off >= self.size:
            raise ShmError(f"offset {off} is not a block of {self.name}")
        word = self.u64[blk >> 3]
        c = word & _CLASS
        if word - c != _USED or not MIN_CLASS <= c <= MAX_CLASS:
            raise ShmError(f"offset {off} is not an allocated block (double free?)")
        return blk, c

    def free(self, off: int) -> None:
        """Return the block at payload offset ``off`` to its free list."""
        cnt = self.i64
        self._lock.acquire(0)
        try:
            blk, c = self._block(off)
            self._push_free(blk, c)
            cnt[_W_BLOCKS] -= 1
            cnt[_W_USED] -= 1 << c
        finally:
            self._lock.release(0)

    def capacity(self, off: int) -> int:
        """Usable payload bytes of the allocated block at ``off``."""
        return (1 << self._block(off)[1]) - BLOCK_HEADER

    def alloc_static(self, n: int, align: int = 64) -> int:
        """Carve ``n`` zeroed bytes that are never freed (before fork)."""
        if n <= 0 or align & (align - 1):
            raise ValueError("bad static allocation")
        w = self.u64
        self._lock.acquire(0)
        try:
            bump = w[_W_BUMP]
            start = (bump + align - 1) & ~(align - 1)
            end = (start + n + 63) & ~63
            if end > self.size:
                self.i64[_W_FULL] += 1
                start = 0
            else:
                w[_W_BUMP] = end
                self.i64[_W_STATIC] += end - bump
        finally:
            self._lock.release(0)
        if not start:
            log.error("shm %s: out of memory for a %d-byte table", self.name, n)
            raise ShmFull(f"shm {self.name}: no room for {n} static bytes")
        return start

    # -- root slots and counters ----------------------------------------------

    def root(self, i: int) -> int:
        """Root slot ``i`` (0..7): where the registry keeps its directories."""
        return self.u64[_W_ROOT + i]

    def set_root(self, i: int, value: int) -> None:
        if not 0 <= i < ROOT_SLOTS:
            raise IndexError(i)
        self.u64[_W_ROOT + i] = value

    @property
    def full_errors(self) -> int:
        """How many allocations failed because the arena was exhausted."""
        return self.i64[_W_FULL]

    @property
    def lock_recoveries(self) -> int:
        """How many locks were taken over from dead processes."""
        return self.i64[_W_RECOVERED]

    @property
    def creator(self) -> int:
        return self.u64[_W_CREATOR]

    def is_allocated(self, off: int) -> bool:
        """Whether ``off`` is the payload offset of an allocated block."""
        try:
            self._block(off)
        except ShmError:
            return False
        return True

    def check(self) -> dict[str, int]:
        """Walk every free list under the arena lock (a consistency check for
        tests and debugging). Raises ShmError on a corrupt list; returns the
        free blocks found per size class."""
        w = self.u64
        found: dict[str, int] = {}
        self._lock.acquire(0)
        try:
            seen: set[int] = set()
            limit = self.size // (1 << MIN_CLASS)
            for c in range(MIN_CLASS, MAX_CLASS + 1):
                blk = w[_W_FREE + 2 * c]
                n = 0
                while blk:
                    if blk % 8 or not HEADER_SIZE <= blk < self.size or blk in seen:
                        raise ShmError(f"free list {c}: bad or repeated block {blk}")
                    if w[blk >> 3] != c | _FREE:
                        raise ShmError(f"free list {c}: block {blk} is not a free class-{c} block")
                    seen.add(blk)
                    n += 1
                    if n > limit:
                        raise ShmError(f"free list {c}: cycle")
                    blk = w[(blk >> 3) + 1]
                if n:
                    found[str(1 << c)] = n
        finally:
            self._lock.release(0)
        return found

    def usage(self) -> dict[str, int]:
        """Totals for ``core.shmmem``: bytes and free-list fragments."""
        cnt = self.i64
        self._lock.acquire(0)
        try:
            blocks, used, static, full = (cnt[_W_BLOCKS], cnt[_W_USED], cnt[_W_STATIC],
                                          cnt[_W_FULL])
            frags = sum(cnt[_W_FREE + 2 * c + 1] for c in range(MIN_CLASS, MAX_CLASS + 1))
        finally:
            self._lock.release(0)
        total = self.size - HEADER_SIZE
        return {
            "total": total,
            "used": used + static,
            "free": total - used - static,
            "fragments": frags,
            "blocks": blocks,
            "static": static,
            "full_errors": full,
            "lock_recoveries": self.lock_recoveries,
        }
