"""Shared hash tables: records, chains, expiry, atomic updates across real
processes, exhaustion, and processes killed in the middle of a call."""

from __future__ import annotations

import hashlib
import os
import random
import struct
import time

import pytest

from ser.shm import Shm, ShmError, ShmFull

from .test_shm_support import fork, kill, run_children, temp_shm, wait

_q = struct.Struct("@q")


@pytest.fixture
def shm():
    with temp_shm(2 << 20, max_procs=8, max_counters=64) as s:
        yield s


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_records_of_many_sizes_round_trip(shm):
    t = shm.create_table("sizes", 6)
    rng = random.Random(7)
    data = {}
    for klen in (0, 1, 7, 8, 9, 31, 64, 255, 1000):
        for vlen in (0, 1, 8, 100, 4095, 4096, 70000):
            key = bytes(rng.randrange(256) for _ in range(klen)) + b"%d" % vlen
            value = rng.randbytes(vlen)
            t.set(key, value, expires=0, flags=vlen % 65536)
            data[key] = value
    assert len(t) == len(data)
    for key, value in data.items():
        assert t.get(key) == value
        rec = t.get_record(key)
        assert rec.value == value and rec.flags == len(value) % 65536 and rec.expires == 0
    assert dict(t.items()) == data
    assert t.get(b"absent") is None


def test_colliding_keys_share_one_chain(shm):
    t = shm.create_table("chain", 0)
    keys = [b"k%d" % i for i in range(200)]
    for k in keys:
        t.set(k, k * 3)
    for k in keys[::2]:
        assert t.delete(k)
    for k in keys[1::2]:
        t.set(k, b"new" + k)
    for i, k in enumerate(keys):
        assert t.get(k) == (None if i % 2 == 0 else b"new" + k)
    assert len(t) == 100
    assert not t.delete(keys[0])
    assert sorted(t.items()) == sorted((k, b"new" + k) for k in keys[1::2])


def test_deleted_and_replaced_records_are_reused(shm):
    t = shm.create_table("reuse", 4)
    t.set(b"warm", b"x" * 200)
    t.delete(b"warm")
    before = shm.usage()["used"]
    for i in range(2000):
        t.set(b"k%d" % (i % 5), b"x" * (100 + i % 90))
        if i % 3 == 0:
            t.delete(b"k%d" % (i % 5))
    t.clear()
    assert len(t) == 0
    assert shm.usage()["used"] == before


def test_short_value_of_the_same_length_is_rewritten_in_place():
    """No allocation: it works even when the arena is full."""
    clock = FakeClock()
    with temp_shm(1 << 20, max_procs=2, max_counters=4, clock=clock) as shm:
        t = shm.create_table("inplace", 4)
        t.set(b"ip", b"OPTIONS", expires=1010.0, flags=1)
        for size in (200, 20, 0):  # fill every block size down to the smallest
            with pytest.raises(ShmFull):
                for i in range(100_000):
                    t.set(b"f%d-%d" % (size, i), b"x" * size)
        t.set(b"ip", b"INVITES", expires=1020.0, flags=1)
        assert t.get_record(b"ip") == (b"ip", b"INVITES", 1020.0, 1)
        clock.now = 1015.0
        assert t.get(b"ip") == b"INVITES"
        t.set(b"ip", b"\0" * 7, expires=0, flags=1)
        assert t.get_record(b"ip") == (b"ip", b"\0" * 7, 0.0, 1)
        # another length or other flags needs a new record: full, the old one stays
        for value, flags in ((b"BYE", 1), (b"12345678", 2)):
            with pytest.raises(ShmFull):
                t.set(b"ip", value, flags=flags)
            assert t.get_record(b"ip") == (b"ip", b"\0" * 7, 0.0, 1)


def test_add_only_when_absent(shm):
    t = shm.create_table("add", 4)
    assert t.add(b"a", b"1")
    assert not t.add(b"a", b"2")
    assert t.get(b"a") == b"1"
    assert t.delete(b"a")
    assert t.add(b"a", b"3")
    assert t.get(b"a") == b"3"
    assert len(t) == 1


def test_incr_creates_adds_and_wraps(shm):
    t = shm.create_table("incr", 4)
    assert t.incr(b"n") == 1
    assert t.incr(b"n", 10) == 11
    assert t.incr(b"n", -20) == -9
    assert _q.unpack(t.get(b"n"))[0] == -9
    assert t.incr(b"m", 5) == 5
    t.set(b"big", _q.pack(2**63 - 1))
    assert t.incr(b"big") == -(2**63)
    t.set(b"text", b"hello")
    with pytest.raises(ShmError):
        t.incr(b"text")
    assert t.get(b"text") == b"hello"


def test_expiry_hides_and_the_sweep_removes(shm):
    clock = FakeClock(1000.0)
    with temp_shm(1 << 20, max_procs=2, max_counters=4, clock=clock) as s:
        t = s.create_table("exp", 3)
        for i in range(50):
            t.set(b"e%d" % i, b"v", expires=1010.0 + (i % 2) * 100)
        t.set(b"forever", b"v")
        assert t.get_expires(b"e0") == 1010.0
        assert t.get_expires(b"forever") == 0
        assert t.get_expires(b"nope") is None
        clock.now = 1050.0
        assert t.get(b"e0") is None and t.get(b"e1") == b"v"
        assert t.get_expires(b"e0") is None
        assert not t.touch(b"e0", 2000.0)
        assert t.add(b"e2", b"again")
        assert t.incr(b"e4", 7) == 7
        assert len(t) == 51
        assert len(t.items()) == 25 + 1 + 2
        assert t.expire(1050.0) == 23
        assert len(t) == 28
        assert t.expire(1050.0) == 0
        assert t.touch(b"e1", 3000.0)
        assert t.expire(1200.0) == 24
        assert sorted(k for k, _ in t.items()) == [b"e1", b"e2", b"e4", b"forever"]
        used = s.usage()["used"]
        t.clear()
        assert s.usage()["used"] < used


def test_sweep_expires_and_finds_due_and_flagged_records(shm):
    """One pass: expired records freed; of the others, the keys whose value
    starts with a due float64 (0 = none) and those with a flag of the mask."""
    d = struct.Struct("=d")
    # a small table (2^2 buckets, 2 stripes): chains, and several holds per stripe
    t = shm.create_table("sweep", 2, lock_bits=1)
    t.set(b"gone", d.pack(5.0), expires=50.0)
    t.set(b"due", d.pack(90.0) + b"rest", expires=500.0)
    t.set(b"due-flagged", d.pack(100.0), expires=0, flags=3)
    t.set(b"later", d.pack(101.0), expires=0)
    t.set(b"none", d.pack(0.0), flags=1)
    t.set(b"short", b"\x01", expires=0)               # shorter than a word: never due
    t.set(b"", d.pack(1.0))                          # an empty key
    for i in range(200):
        t.set(b"k%d" % i, d.pack(1000.0 + i), flags=2 if i % 50 == 0 else 0)
    sw = t.sweep(100.0, flag_mask=1)
    assert sw.expired == 1 and t.get(b"gone") is None
    assert sorted(sw.due) == [b"", b"due", b"due-flagged"]
    assert sorted(sw.flagged) == [b"due-flagged", b"none"]
    sw = t.sweep(100.0, lead_due=False, flag_mask=2)
    assert sw.expired == 0 and sw.due == []
    assert sorted(sw.flagged) == [b"due-flagged", b"k0", b"k100", b"k150", b"k50"]
    # in slices of buckets: the halves find what the whole does, out of range nothing
    halves = [t.sweep(1001.0, buckets=(0, 2)), t.sweep(1001.0, buckets=(2, 9))]
    assert sum(h.expired for h in halves) == 1 and t.get(b"due") is None
    assert all(h.due for h in halves) and t.sweep(1001.0, buckets=(4, 1)).due == []
    assert t.nbuckets == 4
    sw = t.sweep(1001.0)
    assert sorted(halves[0].due + halves[1].due) == sorted(sw.due) and sw.expired == 0
    assert sorted(sw.due) == [b"", b"due-flagged", b"k0", b"k1", b"later"]
    assert len(t) == 205 and t.check() == 205


def test_update_reads_modifies_and_deletes(shm):
    t = shm.create_table("upd", 4)
    assert t.update(b"u", lambda old: (old or b"") + b"a") == b"a"
    assert t.update(b"u", lambda old: old + b"b") == b"ab"
    t.touch(b"u", 12345678901.0)
    assert t.update(b"u", lambda old: old + b"c") == b"abc"
    assert t.get_expires(b"u") == 12345678901.0
    assert t.update(b"u", lambda old: old, expires=0, flags=3) == b"abc"
    assert t.get_record(b"u")[2:] == (0, 3)

    def boom(old: bytes | None) -> bytes:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        t.update(b"u", boom)
    assert t.get(b"u") == b"abc"
    assert t.update(b"u", lambda old: None) is None
    assert t.get(b"u") is None and len(t) == 0
    assert t.update(b"u", lambda old: None) is None


def test_update_may_set_the_expiry_it_computed(shm):
    t = shm.create_table("upde", 4)
    assert t.update(b"k", lambda old: (b"v1", 12345678901.0)) == b"v1"
    assert t.get_record(b"k")[1:3] == (b"v1", 12345678901.0)
    # same value, new expiry: rewritten; the explicit ``expires`` is overridden
    assert t.update(b"k", lambda old: (old, 22345678901.0), expires=5.0) == b"v1"
    assert t.get_expires(b"k") == 22345678901.0
    assert t.update(b"k", lambda old: (old + b"2", 0.0)) == b"v12"
    assert t.get_expires(b"k") == 0.0
    with pytest.raises(TypeError):
        t.update(b"k", lambda old: ("text", 1.0))
    assert t.get(b"k") == b"v12"


def test_update_calling_back_into_the_table_fails_instead_of_hanging(shm):
    t = shm.create_table("reent", 2)

    def child() -> None:
        blocks = shm.usage()["blocks"]
        with pytest.raises(ShmError):
            t.update(b"k", lambda old: t.get(b"k"))
        with pytest.raises(ShmError):
            t.update(b"k", lambda old: t.set(b"k", b"inner"))
        assert shm.usage()["blocks"] == blocks
        t.set(b"k", b"still usable")

    assert wait(fork(child), timeout=10) == 0
    assert t.get(b"k") == b"still usable"


def test_incr_from_four_processes_is_exact(shm):
    t = shm.create_table("counters", 4)

    def work(rank: int) -> None:
        for _ in range(5000):
            t.incr(b"hits")

    run_children(4, work)
    assert t.incr(b"hits", 0) == 20000


def test_update_is_atomic_under_contention(shm):
    t = shm.create_table("rmw", 2, lock_bits=0)
    t.set(b"c", _q.pack(0))

    def work(rank: int) -> None:
        for _ in range(1500):
            t.update(b"c", lambda old: _q.pack(_q.unpack(old)[0] + 1))
            t.update(b"log", lambda old: (old or b"") + bytes([rank]))
            if rank == 1:
                t.set(b"noise%d" % (rank % 3), b"x" * 50)

    run_children(4, work)
    assert _q.unpack(t.get(b"c"))[0] == 6000
    log = t.get(b"log")
    assert sorted(log.count(bytes([r])) for r in (1, 2, 3, 4)) == [1500] * 4


def test_tables_are_found_by_name_in_children_and_by_attach(shm):
    t = shm.create_table("location", 8)
    with pytest.raises(ShmError):
        shm.create_table("location", 8)
    with pytest.raises(ShmError):
        shm.table("nope")

    def child(rank: int) -> None:
        shm.child_init(rank)
        shm.table("location").set(b"from%d" % rank, b"child")

    run_children(2, child)
    assert shm.table("location") is t
    assert sorted(t.items()) == [(b"from1", b"child"), (b"from2", b"child")]
    other = Shm.attach(shm.arena.name)
    try:
        assert other.table_names() == ["location"]
        assert other.table("location").get(b"from1") == b"child"
    finally:
        other.close()


def test_a_full_arena_raises_counts_and_loses_nothing():
    with temp_shm(256 * 1024, max_procs=2, max_counters=4) as s:
        t = s.create_table("big", 6)
        stored = []
        with pytest.raises(ShmFull):
            for i in range(100000):
                t.set(b"key%d" % i, b"v" * 500)
                stored.append(b"key%d" % i)
        failed = b"key%d" % len(stored)
        assert s.arena.full_errors == 1
        assert t.get(failed) is None
        assert len(t) == len(stored)
        assert all(t.get(k) == b"v" * 500 for k in stored)
        small = 0
        with pytest.raises(ShmFull):
            while True:
                t.set(b"small%d" % small, b"")
                small += 1
        assert s.arena.full_errors == 2
        assert all(t.get(b"small%d" % i) == b"" for i in range(small))
        with pytest.raises(ShmFull):
            t.incr(b"counter")
        with pytest.raises(ShmFull):
            t.update(stored[0], lambda old: old + b"more")
        assert t.get(stored[0]) == b"v" * 500
        assert s.usage()["full_errors"] == 4
        for k in stored[:20]:
            t.delete(k)
        t.set(failed, b"v" * 500)
        assert t.get(failed) == b"v" * 500


def _hold_bucket(t, key: bytes, fd: int) -> None:
    t.debug_hold_lock(key, 60, notify_fd=fd)


def _use(t, key: bytes) -> None:
    t.set(key, b"after")
    assert t.get(key) == b"after"


def test_a_process_killed_holding_a_bucket_lock_does_not_wedge_others(shm):
    t = shm.create_table("wedge", 4, lock_bits=2)
    t.set(b"key", b"before")
    r, w = os.pipe()
    holder = fork(_hold_bucket, t, b"key", w)
    assert os.read(r, 1) == b"!"
    blocked = fork(_use, t, b"key")
    time.sleep(0.1)
    assert os.waitpid(blocked, os.WNOHANG)[0] == 0, "bucket lock was not held"
    assert kill(holder) == -9
    shm.recover(holder)
    assert wait(blocked, timeout=5) == 0
    assert t.get(b"key") == b"after"
    assert shm.arena.lock_recoveries == 1
    os.close(r)
    os.close(w)


def test_recover_on_reap_frees_the_lock_of_a_killed_process(shm):
    t = shm.create_table("reap", 4, lock_bits=2)
    r, w = os.pipe()
    holder = fork(_hold_bucket, t, b"key", w)
    assert os.read(r, 1) == b"!"
    assert kill(holder) == -9
    assert shm.recover(holder) == 1
    assert shm.arena.lock_recoveries == 1
    assert shm.recover(holder) == 0
    assert wait(fork(_use, t, b"key"), timeout=5) == 0
    os.close(r)
    os.close(w)


def _set_and_stop_at(t, phase: str, fd: int) -> None:
    def pause(at: str) -> None:
        if at == phase:
            os.write(fd, b"!")
            time.sleep(60)

    t.debug_pause = pause
    t.set(b"key", b"N" * 3000)


@pytest.mark.parametrize("phase,expected", [("built", b"O" * 2000), ("linked", b"N" * 3000)])
def test_a_set_killed_midway_leaves_the_old_or_the_new_record(shm, phase, expected):
    t = shm.create_table("torn", 2)
    for i in range(20):
        t.set(b"other%d" % i, b"x%d" % i)
    t.set(b"key", b"O" * 2000)
    r, w = os.pipe()
    pid = fork(_set_and_stop_at, t, phase, w)
    assert os.read(r, 1) == b"!"
    kill(pid)
    assert shm.recover(pid) == 1
    assert t.get(b"key") == expected
    assert all(t.get(b"other%d" % i) == b"x%d" % i for i in range(20))
    assert wait(fork(_use, t, b"key"), timeout=5) == 0
    os.close(r)
    os.close(w)


def _checked(key: bytes, payload: bytes) -> bytes:
    return hashlib.sha256(key + payload).digest()[:8] + payload


def _valid(key: bytes, value: bytes) -> bool:
    return hashlib.sha256(key + value[8:]).digest()[:8] == value[:8]


def _churn(t, seed: int, fd: int) -> None:
    rng = random.Random(seed)
    os.write(fd, b"!")
    while True:
        key = b"k%d" % rng.randrange(40)
        op = rng.randrange(4)
        if op == 0:
            t.delete(key)
        elif op == 1:
            t.update(key, lambda old, key=key: _checked(key, rng.randbytes(rng.randrange(600))))
        else:
            t.set(key, _checked(key, rng.randbytes(rng.randrange(600))))


ROUNDS = int(os.environ.get("SER_SHM_KILL_ROUNDS", "15"))


def test_random_kills_never_expose_a_torn_record(shm):
    t = shm.create_table("churn", 3, lock_bits=1)
    rng = random.Random(1)
    for round_ in range(ROUNDS):
        r, w = os.pipe()
        pid = fork(_churn, t, round_, w)
        assert os.read(r, 1) == b"!"
        time.sleep(rng.uniform(0.005, 0.05))
        assert kill(pid) == -9
        os.close(r)
        os.close(w)
        shm.recover(pid)
        shm.arena.check()
        assert t.check() == len(t.snapshot())
        items = t.items()
        assert items, "the churn process did nothing"
        assert all(_valid(k, v) for k, v in items)
        assert wait(fork(_churn_briefly, t), timeout=10) == 0
    t.clear()
    assert shm.usage()["blocks"] <= ROUNDS, "more blocks leaked than processes killed"


def _churn_briefly(t) -> None:
    for i in range(200):
        key = b"k%d" % (i % 40)
        t.set(key, _checked(key, b"p" * (i % 300)))
        assert _valid(key, t.get(key))
