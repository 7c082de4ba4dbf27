"""Robust striped locks: exclusion across processes, and SIGKILL of a holder.

Every lock operation that could hang if the code were wrong runs in a child
process waited for with a deadline (``wait``), so a wedge fails the test.
"""

from __future__ import annotations

import os
import struct
import time
import uuid

import pytest

from ser.shm import Arena, ShmError, segment_name

from .test_shm_support import fork, kill, run_children, wait

_Q = struct.Struct("@Q")


@pytest.fixture
def arena():
    a = Arena.create(segment_name("lock-" + uuid.uuid4().hex[:10]), 1 << 20)
    yield a
    a.close()
    a.unlink()
    assert not os.path.exists("/dev/shm" + a.name)


def _hold(arena, locks, i: int, fd: int) -> None:
    locks.acquire(i)
    os.write(fd, b"!")
    time.sleep(60)


def _take(locks, i: int) -> None:
    locks.acquire(i)
    locks.release(i)


def _start_holder(arena, locks, i: int) -> int:
    r, w = os.pipe()
    pid = fork(_hold, arena, locks, i, w)
    os.close(w)
    assert os.read(r, 1) == b"!"
    os.close(r)
    return pid


def test_locks_exclude_each_other_across_processes(arena):
    _, locks = arena.new_lock_set(4)
    counter = arena.alloc(8)
    _Q.pack_into(arena.mm, counter, 0)

    def work(rank: int) -> None:
        for _ in range(1500):
            locks.acquire(2)
            try:
                v = _Q.unpack_from(arena.mm, counter)[0]
                time.sleep(0)
                _Q.pack_into(arena.mm, counter, v + 1)
            finally:
                locks.release(2)

    run_children(4, work)
    assert _Q.unpack_from(arena.mm, counter)[0] == 6000


def test_a_lock_of_a_killed_holder_is_taken_over(arena):
    _, locks = arena.new_lock_set(2)
    holder = _start_holder(arena, locks, 1)
    assert kill(holder) == -9
    assert wait(fork(_take, locks, 1), timeout=5) == 0
    assert arena.lock_recoveries == 1


def test_a_blocked_waiter_gets_the_lock_when_the_holder_is_killed(arena):
    _, locks = arena.new_lock_set(1)
    holder = _start_holder(arena, locks, 0)
    r, w = os.pipe()

    def waiter() -> None:
        os.write(w, b"w")
        locks.acquire(0)
        locks.release(0)

    pid = fork(waiter)
    assert os.read(r, 1) == b"w"
    time.sleep(0.1)
    done, _ = os.waitpid(pid, os.WNOHANG)
    assert done == 0, "the waiter got a lock that was held"
    kill(holder)
    assert wait(pid, timeout=5) == 0
    assert arena.lock_recoveries == 1
    os.close(r)
    os.close(w)


def test_recover_sweeps_dead_holders_and_skips_live_ones(arena):
    _, locks = arena.new_lock_set(4)
    dead = _start_holder(arena, locks, 0)
    live = _start_holder(arena, locks, 3)
    kill(dead)
    try:
        t0 = time.monotonic()
        assert arena.recover() == 1
        assert time.monotonic() - t0 < 1, "recover waited for a live holder"
        assert arena.recover() == 0
        assert arena.lock_recoveries == 1
        assert wait(fork(_take, locks, 0), timeout=5) == 0
    finally:
        kill(live)
    assert arena.recover() == 1


def test_reentrant_acquire_is_an_error_not_a_deadlock(arena):
    _, locks = arena.new_lock_set(1)

    def child() -> None:
        locks.acquire(0)
        with pytest.raises(ShmError):
            locks.acquire(0)
        locks.release(0)
        with pytest.raises(ShmError):
            locks.release(0)

    assert wait(fork(child), timeout=5) == 0


def test_hold_context_manager_releases_on_error(arena):
    _, locks = arena.new_lock_set(1)
    with pytest.raises(RuntimeError):
        with locks.hold(0):
            raise RuntimeError("boom")
    assert wait(fork(_take, locks, 0), timeout=5) == 0
