"""Shared hash tables: 2^N buckets of chained, variable-length records.

Theory of operation
-------------------
A table is three static regions in the arena, made by the master before
fork: a header, an array of 2^size_bits bucket heads (8-byte record offsets,
0 = empty) and 2^lock_bits robust mutexes with one record counter per mutex.
Bucket ``b`` is guarded by lock ``b & (2^lock_bits - 1)`` (striping). The
bucket of a key is ``crc32(key)``'s low bits, the same in every process.

Each record is one arena block::

    0   next     offset of the next record in the chain (0 = end)
    8   expires  float seconds on the table's clock (time.time); 0 = never
    16  hash     crc32 of the key, compared before the key bytes
    20  klen, 24 vlen, 28 flags (uint16), 30 padding
    32  key bytes, padded to 8;  then value bytes

A table never fills up by bucket count; it is full only when the arena is
(:class:`ShmFull`, counted). Keys and values are bytes; every read returns a
copy. Each method takes exactly one stripe lock (plus, nested inside it, the
arena lock when it allocates) and releases it before returning.

Publish rule -- what a process killed mid-call can leave behind
----------------------------------------------------------------
A writer builds a new record completely (header, key, value) in a fresh
block that nothing points to, and only then links it in with a single
aligned 8-byte store into the bucket head or the predecessor's ``next``
field (through the arena's word views; see arena.py for why not
``struct.pack_into``). Deleting is the same single store, unlinking. In-place
changes are limited to single stores too: ``incr`` rewrites an aligned
int64, ``touch`` an aligned double, and ``set`` of a value of at most 8
bytes over one of the same length and flags rewrites its aligned value word
(then the expiry double: a kill between the two leaves the new value with
the old expiry). A SIGKILL can therefore leave the chain either before or
after the store -- the old record or the new one, never a torn one. The worst
case is a leaked block (killed after unlinking, before freeing) or a stripe
record counter off by one; both only cost memory or ``len()`` accuracy.

Expired records (``0 < expires <= clock()``) are treated as absent by every
read and are replaced by writes; ``expire(now)``, called by the timer
process, unlinks and frees them. ``len()`` counts stored records, including
expired ones that were not swept yet.
"""

from __future__ import annotations

import os
import struct
import sys
import time
import zlib
from collections.abc import Callable
from typing import NamedTuple

from ser.shm.arena import Arena
from ser.shm.errors import ShmError
from ser.shm.lock import LockSet

_q = struct.Struct("@q")
_HDR = struct.Struct("@QdIIIH2x")
_NEXT_EXP = struct.Struct("@Qd")
_CHAIN = struct.Struct("@Q8xII")
_TBL = struct.Struct("@8sQQQQQ")
_TBL_MAGIC = b"SERTBL01"
_REC = _HDR.size  # 32
_MAX_FLAGS = 0xFFFF
_INT64 = 1 << 64

MAX_SIZE_BITS = 24
MAX_LOCK_BITS = 14
DEFAULT_LOCK_BITS = 8
_SWEEP_HOLD = 64                 # buckets walked under one hold of a stripe lock

_crc32 = zlib.crc32


class Record(NamedTuple):
    """A copy of one record, as dumps see it."""

    key: bytes
    value: bytes
    expires: float
    flags: int


class Sweep(NamedTuple):
    """What :meth:`Table.sweep` did and found."""

    expired: int                 # records unlinked and freed
    due: list[bytes]             # keys of records whose leading due time passed
    flagged: list[bytes]         # keys of records with a flag of the mask


def _word(value: bytes) -> int:
    """``value`` (at most 8 bytes) as the native uint64 of its zero-padded word."""
    return int.from_bytes(value.ljust(8, b"\0"), sys.byteorder)


def _wrap64(v: int) -> int:
    return (v + (1 << 63)) % _INT64 - (1 << 63)


class Table:
    """One shared hash table. Create with :meth:`create` (before fork) or
    reopen with :meth:`open`; the registry (``ser.shm.Shm``) does both by name.
    """

    def __init__(self, arena: Arena, name: str, header: int,
                 clock: Callable[[], float] = time.time) -> None:
        magic, size_bits, lock_bits, buckets, locks, counts = _TBL.unpack_from(arena.mm, header)
        if magic != _TBL_MAGIC:
            raise ShmError(f"table {name!r}: bad header at {header}")
        self.name = name
        self.header = header
        self.size_bits = size_bits
        self.lock_bits = lock_bits
        self.clock = clock
        self._arena = arena
        self._mm = arena.mm
        self._w = arena.u64
        self._i = arena.i64
        self._f = arena.f64
        self._buckets = buckets
        self._counts = counts
        self._nbuckets = 1 << size_bits
        self._bmask = (1 << size_bits) - 1
        self._smask = (1 << lock_bits) - 1
        self._locks: LockSet = arena.lock_set(locks, 1 << lock_bits)
        self.debug_pause: Callable[[str], None] | None = None
        """TEST HOOK. When set, called with ``"built"`` (new record complete,
        lock held, not linked yet) and ``"linked"`` (published, lock held,
        replaced record not freed yet) by ``set``; lets a test kill a
        process at those points. Never set outside tests."""

    @classmethod
    def create(cls, arena: Arena, name: str, size_bits: int, lock_bits: int | None = None,
               clock: Callable[[], float] = time.time) -> Table:
        """Allocate a table of 2^size_bits buckets (Kamailio's ``size=N``)."""
        if not 0 <= size_bits <= MAX_SIZE_BITS:
            raise ValueError(f"size_bits must be 0..{MAX_SIZE_BITS}")
        if lock_bits is None:
            lock_bits = min(size_bits, DEFAULT_LOCK_BITS)
        if not 0 <= lock_bits <= min(size_bits, MAX_LOCK_BITS):
            raise ValueError("lock_bits must be 0..min(size_bits, 14)")
        header = arena.alloc_static(_TBL.size)
        buckets = arena.alloc_static(8 << size_bits)
        locks, ls = arena.new_lock_set(1 << lock_bits)
        counts = arena.alloc_static(8 << lock_bits)
        _TBL.pack_into(arena.mm, header, _TBL_MAGIC, size_bits, lock_bits, buckets, locks, counts)
        return cls(arena, name, header, clock)

    @classmethod
    def open(cls, arena: Arena, name: str, header: int,
             clock: Callable[[], float] = time.time) -> Table:
        return cls(arena, name, header, clock)

    # -- helpers (call with the stripe lock held) ------------------------------

    def _find(self, slot: int, key: bytes, h: int) -> tuple[int, int, tuple]:
        """(link, record, header) of ``key`` in the chain at ``slot``;
        record 0 if absent. ``link`` is where the pointer to it lives."""
        mm = self._mm
        link = slot
        r = self._w[slot >> 3]
        kl = len(key)
        while r:
            nxt, rh, rkl = _CHAIN.unpack_from(mm, r)
            if rh == h and rkl == kl and mm[r + _REC:r + _REC + kl] == key:
                return link, r, _HDR.unpack_from(mm, r)
            link = r
            r = nxt
        return link, 0, ()

    def _build(self, key: bytes, value: bytes, h: int, expires: float, flags: int,
               nxt: int = 0) -> int:
        """A complete, unlinked record (may raise ShmFull). Arguments are
        checked before allocating, so a bad one cannot leak a block."""
        if not isinstance(value, bytes | bytearray):
            raise TypeError("values are bytes")
        if not 0 <= flags <= _MAX_FLAGS:
            raise ValueError("flags must be 0..65535")
        kl = len(key)
        header = _HDR.pack(nxt, expires, h, kl, len(value), flags)
        vo = _REC + ((kl + 7) & ~7)
        r = self._arena.alloc(vo + len(value))
        mm = self._mm
        mm[r:r + _REC] = header
        mm[r + _REC:r + _REC + kl] = key
        mm[r + vo:r + vo + len(value)] = value
        return r

    def _value(self, r: int, hdr: tuple) -> bytes:
        vo = r + _REC + ((hdr[3] + 7) & ~7)
        return self._mm[vo:vo + hdr[4]]

    def _count(self, stripe: int, delta: int) -> None:
        self._i[(self._counts >> 3) + stripe] += delta

    def _pause(self, phase: str) -> None:
        if self.debug_pause is not None:
            self.debug_pause(phase)

    def _place(self, key: bytes) -> tuple[int, int, int]:
        h = _crc32(key)
        b = h & self._bmask
        return h, b & self._smask, self._buckets + 8 * b

    # -- reads --------------------------------------------------------------

    def get(self, key: bytes) -> bytes | None:
        """A copy of the value of ``key``, or None if absent or expired."""
        h, s, slot = self._place(key)
        now = self.clock()
        self._locks.acquire(s)
        try:
            _, r, hdr = self._find(slot, key, h)
            if not r or (hdr[1] and hdr[1] <= now):
                return None
            return self._value(r, hdr)
        finally:
            self._locks.release(s)

    def get_record(self, key: bytes) -> Record | None:
        """Value, expiry and flags of ``key`` (a copy), or None."""
        h, s, slot = self._place(key)
        now = self.clock()
        self._locks.acquire(s)
        try:
            _, r, hdr = self._find(slot, key, h)
            if not r or (hdr[1] and hdr[1] <= now):
                return None
            return Record(key, self._value(r, hdr), hdr[1], hdr[5])
        finally:
            self._locks.release(s)

    def get_expires(self, key: bytes) -> float | None:
        """The expiry time of ``key`` (0 = never), or None if absent."""
        rec = self.get_record(key)
        return None if rec is None else rec.expires

    def __contains__(self, key: bytes) -> bool:
        return self.get_record(key) is not None

    # -- writes -------------------------------------------------------------

    def _relink(self, slot: int, stripe: int, link: int, r: int, hdr: tuple, key: bytes,
                value: bytes, h: int, expires: float, flags: int) -> int:
        """Under the bucket lock: a new, complete record for ``key`` linked where
        ``r`` was (or at the head of ``slot``). Returns the replaced record, for
        the caller to free once the lock is released (0: none)."""
        if r:
            self._w[link >> 3] = self._build(key, value, h, expires, flags, hdr[0])
            return r
        self._w[slot >> 3] = self._build(key, value, h, expires, flags, self._w[slot >> 3])
        self._count(stripe, 1)
        return 0

    def set(self, key: bytes, value: bytes, expires: float = 0, flags: int = 0) -> None:
        """Store ``value`` under ``key``, replacing any old record.

        A value of at most 8 bytes replacing one of the same length and
        flags is written in place (one aligned store, then one for the
        expiry): no allocation, no arena lock. Otherwise a new record is
        built and linked under the bucket lock (the publish rule)."""
        if not isinstance(value, bytes | bytearray):
            raise TypeError("values are bytes")
        h, s, slot = self._place(key)
        vl = len(value)
        old = 0
        self._locks.acquire(s)
        try:
            link, r, hdr = self._find(slot, key, h)
            if r and hdr[4] == vl and vl <= 8 and hdr[5] == flags and self.debug_pause is None:
                self._w[(r + _REC + ((hdr[3] + 7) & ~7)) >> 3] = _word(value)
                if hdr[1] != expires:
                    self._f[(r + 8) >> 3] = expires
                return
            new = self._build(key, value, h, expires, flags, hdr[0] if r else self._w[slot >> 3])
            self._pause("built")
            if r:
                self._w[link >> 3] = new
                old = r
            else:
                self._w[slot >> 3] = new
                self._count(s, 1)
            self._pause("linked")
        finally:
            self._locks.release(s)
        if old:
            self._arena.free(old)

    def add(self, key: bytes, value: bytes, expires: float = 0, flags: int = 0) -> bool:
        """Store only if ``key`` is absent (or expired); True if stored."""
        h, s, slot = self._place(key)
        now = self.clock()
        old = 0
        self._locks.acquire(s)
        try:
            link, r, hdr = self._find(slot, key, h)
            if r and not (hdr[1] and hdr[1] <= now):
                return False
            old = self._relink(slot, s, link, r, hdr, key, value, h, expires, flags)
        finally:
            self._locks.release(s)
        if old:
            self._arena.free(old)
        return True

    def delete(self, key: bytes) -> bool:
        """Remove ``key``; True if a live (unexpired) record was removed."""
        h, s, slot = self._place(key)
        now = self.clock()
        self._locks.acquire(s)
        try:
            link, r, hdr = self._find(slot, key, h)
            if r:
                self._w[link >> 3] = hdr[0]
                self._count(s, -1)
        finally:
            self._locks.release(s)
        if not r:
            return False
        self._arena.free(r)
        return not (hdr[1] and hdr[1] <= now)

    def incr(self, key: bytes, delta: int = 1, expires: float = 0) -> int:
        """Add ``delta`` to the signed 64-bit integer stored under ``key``
        (created as ``delta`` if absent or expired; ``expires`` applies only
        then) and return the new value. Wraps around like C's int64.
        Raises ShmError if the value is not 8 bytes long."""
        h, s, slot = self._place(key)
        now = self.clock()
        old = 0
        self._locks.acquire(s)
        try:
            link, r, hdr = self._find(slot, key, h)
            if r and not (hdr[1] and hdr[1] <= now):
                if hdr[4] != 8:
                    raise ShmError(f"incr: value of {key!r} is not a 64-bit integer")
                vo = r + _REC + ((hdr[3] + 7) & ~7)
                v = _wrap64(self._i[vo >> 3] + delta)
                self._i[vo >> 3] = v
                return v
            v = _wrap64(delta)
            old = self._relink(slot, s, link, r, hdr, key, _q.pack(v), h, expires, 0)
        finally:
            self._locks.release(s)
        if old:
            self._arena.free(old)
        return v

    def touch(self, key: bytes, expires: float) -> bool:
        """Set the expiry of a live ``key``; True if it exists."""
        h, s, slot = self._place(key)
        now = self.clock()
        self._locks.acquire(s)
        try:
            _, r, hdr = self._find(slot, key, h)
            if not r or (hdr[1] and hdr[1] <= now):
                return False
            self._f[(r >> 3) + 1] = expires
            return True
        finally:
            self._locks.release(s)

    def update(self, key: bytes,
               fn: Callable[[bytes | None], bytes | tuple[bytes, float] | None],
               expires: float | None = None, flags: int | None = None) -> bytes | None:
        """Atomic read-modify-write of ``key`` under its bucket lock.

        ``fn(old)`` gets a copy of the current value (None if absent or
        expired) and returns the new value, or None to delete, or a tuple
        (new value, expiry) to set the record's expiry in the same step (it
        wins over ``expires``). ``expires`` / ``flags`` of None keep the old
        record's (0 for a new one). ``fn`` runs with the lock held: keep it
        short and do not touch the same table from it (that raises ShmError
        rather than deadlocking). If ``fn`` raises, nothing changes. Returns
        the new value.
        """
        h, s, slot = self._place(key)
        now = self.clock()
        old = 0
        self._locks.acquire(s)
        try:
            link, r, hdr = self._find(slot, key, h)
            live = bool(r) and not (hdr[1] and hdr[1] <= now)
            cur = self._value(r, hdr) if live else None
            new_value = fn(cur)
            if new_value is None:
                if r:
                    self._w[link >> 3] = hdr[0]
                    self._count(s, -1)
                    old = r
                return None
            if type(new_value) is tuple:
                new_value, expires = new_value
            if not isinstance(new_value, bytes):
                raise TypeError("update: fn must return bytes or None")
            exp = expires if expires is not None else (hdr[1] if live else 0)
            fl = flags if flags is not None else (hdr[5] if live else 0)
            if live and new_value == cur and exp == hdr[1] and fl == hdr[5]:
                return new_value
            old = self._relink(slot, s, link, r, hdr, key, new_value, h, exp, fl)
            return new_value
        finally:
            self._locks.release(s)
            if old:
                self._arena.free(old)

    # -- whole-table operations -------------------------------------------------

    def _busy_buckets(self, first: int = 0, count: int | None = None) -> list[int]:
        """Buckets (of ``first`` .. ``first + count - 1``; all by default) that
        looked non-empty in an unlocked read of the heads (each is then
        re-read under its lock)."""
        first = max(0, min(first, self._nbuckets))
        count = self._nbuckets - first if count is None else \
            max(0, min(count, self._nbuckets - first))
        heads = struct.unpack_from(f"@{count}Q", self._mm, self._buckets + 8 * first)
        return [first + b for b, head in enumerate(heads) if head]

    def expire(self, now: float) -> int:
        """Unlink and free every record with ``0 < expires <= now``;
        returns how many. Called by the timer process."""
        return self.sweep(now, lead_due=False).expired

    def sweep(self, now: float, lead_due: bool = True, flag_mask: int = 0,
              buckets: tuple[int, int] | None = None) -> Sweep:
        """One pass of a timer over the table -- or over ``buckets`` (first,
        count) of its 2^size_bits buckets, so that a large table can be swept
        in slices: unlink and free every record with ``0 < expires <= now``
        (as :meth:`expire`), and of the records that stay collect the keys of
        those whose value begins with a due time -- a native float64, 0 for
        none -- ``<= now`` (``lead_due``) and of those with a flag of
        ``flag_mask``. It reads each record's header and that one value word;
        only the keys it returns are copied."""
        mm = self._mm
        w = self._w
        f = self._f
        dead: list[int] = []
        due: list[bytes] = []
        flagged: list[bytes] = []
        unpack, unpack_next = _HDR.unpack_from, _NEXT_EXP.unpack_from
        look = lead_due or bool(flag_mask)        # else only the expiry is read
        stripes: dict[int, list[int]] = {}
        for b in self._busy_buckets(*(buckets or (0, None))):
            stripes.setdefault(b & self._smask, []).append(b)
        # one lock hold per _SWEEP_HOLD buckets of a stripe, not one per bucket
        for s, chunk in ((s, bs[i:i + _SWEEP_HOLD]) for s, bs in stripes.items()
                         for i in range(0, len(bs), _SWEEP_HOLD)):
            removed = 0
            self._locks.acquire(s)
            try:
                for b in chunk:
                    link = self._buckets + 8 * b
                    r = w[link >> 3]
                    while r:
                        if look:
                            nxt, exp, _, kl, vl, fl = unpack(mm, r)
                        else:
                            nxt, exp = unpack_next(mm, r)
                        if exp and exp <= now:
                            w[link >> 3] = nxt
                            dead.append(r)
                            removed += 1
                        elif look:
                            if lead_due and vl >= 8:
                                d = f[(r + _REC + ((kl + 7) & ~7)) >> 3]
                                if 0 < d <= now:
                                    due.append(mm[r + _REC:r + _REC + kl])
                            if fl & flag_mask:
                                flagged.append(mm[r + _REC:r + _REC + kl])
                            link = r
                        else:
                            link = r
                        r = nxt
                if removed:
                    self._count(s, -removed)
            finally:
                self._locks.release(s)
        for r in dead:
            self._arena.free(r)
        return Sweep(len(dead), due, flagged)

    def snapshot(self) -> list[Record]:
        """Copies of every live record (bucket by bucket; each bucket is
        consistent, the whole is not one atomic picture)."""
        mm = self._mm
        now = self.clock()
        out: list[Record] = []
        for b in self._busy_buckets():
            s = b & self._smask
            self._locks.acquire(s)
            try:
                r = self._w[self._buckets + 8 * b >> 3]
                while r:
                    hdr = _HDR.unpack_from(mm, r)
                    if not (hdr[1] and hdr[1] <= now):
                        key = mm[r + _REC:r + _REC + hdr[3]]
                        out.append(Record(key, self._value(r, hdr), hdr[1], hdr[5]))
                    r = hdr[0]
            finally:
                self._locks.release(s)
        return out

    def items(self) -> list[tuple[bytes, bytes]]:
        """(key, value) copies of every live record."""
        return [(rec.key, rec.value) for rec in self.snapshot()]

    def clear(self) -> int:
        """Remove every record; returns how many were stored."""
        dead: list[int] = []
        for b in self._busy_buckets():
            s = b & self._smask
            slot = self._buckets + 8 * b
            self._locks.acquire(s)
            try:
                r = self._w[slot >> 3]
                self._w[slot >> 3] = 0
                n = 0
                while r:
                    dead.append(r)
                    n += 1
                    r = self._w[r >> 3]
                self._count(s, -n)
            finally:
                self._locks.release(s)
        for r in dead:
            self._arena.free(r)
        return len(dead)

    def check(self) -> int:
        """Walk every chain under its lock (a consistency check for tests and
        debugging): each linked record must be an allocated block and no
        chain may loop. Raises ShmError; returns the records found."""
        found = 0
        for b in range(self._nbuckets):
            s = b & self._smask
            self._locks.acquire(s)
            try:
                r = self._w[(self._buckets >> 3) + b]
                seen: set[int] = set()
                while r:
                    if r in seen or not self._arena.is_allocated(r):
                        raise ShmError(f"table {self.name!r} bucket {b}: bad record {r}")
                    seen.add(r)
                    r = self._w[r >> 3]
                found += len(seen)
            finally:
                self._locks.release(s)
        return found

    @property
    def nbuckets(self) -> int:
        """2^size_bits: how many buckets (for sweeping in slices)."""
        return self._nbuckets

    def __len__(self) -> int:
        """Stored records (expired but unswept ones included)."""
        return sum(struct.unpack_from(f"@{self._smask + 1}q", self._mm, self._counts))

    def recover(self) -> int:
        """Sweep this table's stripe locks (see ``LockSet.recover``)."""
        return self._locks.recover()

    def debug_hold_lock(self, key: bytes, seconds: float, notify_fd: int | None = None) -> None:
        """TEST HOOK: hold the bucket lock of ``key`` for ``seconds`` (writing
        one byte to ``notify_fd`` once it is held), so a test can SIGKILL a
        process that holds a lock. Not for production use."""
        _, s, _ = self._place(key)
        self._locks.acquire(s)
        try:
            if notify_fd is not None:
                os.write(notify_fd, b"!")
            time.sleep(seconds)
        finally:
            self._locks.release(s)
