"""Shared-memory benchmark: microseconds per operation (``python -m bench.shm``).

(a) table operations on a 2^10-bucket table holding 10,000 records with
    20-byte keys and 100-byte values (get hit/miss, set replacing, incr,
    update), arena alloc+free and a statistics ``inc``;
(b) one uncontended acquire+release for each lock kind considered for
    ``ser.shm.lock`` (see its docstring for the choice);
(c) ``incr`` of one shared key from 1 and from 4 processes at once
    (throughput per operation, wall clock).
"""

from __future__ import annotations

import ctypes
import fcntl
import functools
import os
import struct
import tempfile
import time
from collections.abc import Callable

import posix_ipc

from ser.shm import Shm, segment_name

N = 100_000


def _us(fn: Callable[[], object], n: int = N) -> float:
    for _ in range(min(n, 1000)):
        fn()
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t0) / n * 1e6


def _pair(acquire: Callable[[], object], release: Callable[[], object], n: int = N) -> float:
    def step() -> None:
        acquire()
        release()
    return _us(step, n)


def _line(label: str, us: float) -> None:
    print(f"  {label:48s} {us:7.3f} us")


def bench_table(shm: Shm) -> None:
    t = shm.create_table("bench", 10)
    keys = [b"key-%016d" % i for i in range(10_000)]
    value = b"v" * 100
    for k in keys:
        t.set(k, value)
    t.set(b"counter", struct.pack("@q", 0))
    shm.stats.declare("bench:ops")
    it = iter(range(1 << 62))

    def key() -> bytes:
        return keys[next(it) % len(keys)]

    print("table (10,000 records, 2^10 buckets, 256 locks):")
    _line("get (hit)", _us(lambda: t.get(key())))
    _line("get (miss)", _us(lambda: t.get(b"missing-key-0000000")))
    _line("set (replace, 100-byte value)", _us(lambda: t.set(key(), value)))
    _line("incr", _us(lambda: t.incr(b"counter")))
    other = b"w" * 100
    _line("update (rewrites the value)",
          _us(lambda: t.update(key(), lambda v: other if v == value else value)))
    _line("add + delete", _us(lambda: (t.add(b"tmp", value), t.delete(b"tmp"))))
    _line("arena alloc(120) + free", _us(lambda: shm.arena.free(shm.arena.alloc(120))))
    _line("stats inc", _us(lambda: shm.stats.inc("bench:ops")))
    t0 = time.perf_counter()
    n = t.expire(time.time())
    _line(f"expire sweep of 2^10 buckets ({n} expired), per sweep",
          (time.perf_counter() - t0) * 1e6)


def bench_locks(shm: Shm) -> None:
    print("locks (uncontended acquire + release):")
    off, ls = shm.arena.new_lock_set(1)
    mutex = ctypes.c_void_p(shm.arena.address + off)
    libc = ctypes.PyDLL(None)
    _line("robust pthread mutex, bare ctypes calls",
          _pair(functools.partial(libc.pthread_mutex_trylock, mutex),
                functools.partial(libc.pthread_mutex_unlock, mutex)))
    _line("robust pthread mutex, LockSet.acquire/release",
          _pair(functools.partial(ls.acquire, 0), functools.partial(ls.release, 0)))

    sem = posix_ipc.Semaphore(f"/ser-{os.getpid()}-bench", posix_ipc.O_CREX, initial_value=1)
    try:
        _line("posix_ipc semaphore", _pair(sem.acquire, sem.release))
        owner = struct.Struct("@Q")
        buf = shm.arena.mm
        slot = shm.arena.alloc(8)
        pid = os.getpid()

        def acquire() -> None:
            sem.acquire()
            owner.pack_into(buf, slot, pid)

        def release() -> None:
            owner.pack_into(buf, slot, 0)
            sem.release()
        _line("posix_ipc semaphore + owner-pid slot", _pair(acquire, release))
    finally:
        sem.unlink()
        sem.close()

    try:
        import sysv_ipc
    except ImportError:
        print("  (sysv_ipc not installed: SysV semaphores not measured)")
    else:
        ssem = sysv_ipc.Semaphore(None, sysv_ipc.IPC_CREX, initial_value=1)
        try:
            ssem.undo = True
            _line("SysV semaphore, SEM_UNDO (sysv_ipc)", _pair(ssem.acquire, ssem.release))
        finally:
            ssem.remove()

    with tempfile.TemporaryFile() as f:
        fd = f.fileno()
        _line("fcntl byte-range lock (lockf)",
              _pair(lambda: fcntl.lockf(fd, fcntl.LOCK_EX, 1, 0),
                    lambda: fcntl.lockf(fd, fcntl.LOCK_UN, 1, 0)))


def bench_contention(shm: Shm) -> None:
    t = shm.create_table("contended", 4)
    print("incr of one shared key (wall clock per operation):")
    for procs in (1, 4):
        n = 20_000
        t.set(b"k", struct.pack("@q", 0))
        t0 = time.perf_counter()
        pids = []
        for rank in range(procs):
            pid = os.fork()
            if pid == 0:
                code = 1
                try:
                    shm.child_init(rank + 1)
                    for _ in range(n):
                        t.incr(b"k")
                    code = 0
                finally:
                    os._exit(code)
            pids.append(pid)
        for pid in pids:
            os.waitpid(pid, 0)
        dt = time.perf_counter() - t0
        assert t.incr(b"k", 0) == n * procs
        _line(f"{procs} process(es) x {n}", dt / (n * procs) * 1e6)


def main() -> None:
    with Shm.create(segment_name("bench"), 64 << 20) as shm:
        bench_table(shm)
        bench_locks(shm)
        bench_contention(shm)


if __name__ == "__main__":
    main()
