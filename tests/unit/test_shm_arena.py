"""The shm arena: segment life cycle, size classes, free lists, exhaustion."""

from __future__ import annotations

import os
import uuid

import posix_ipc
import pytest

from ser.shm import Arena, ShmError, ShmFull, remove_stale, segment_name
from ser.shm.arena import BLOCK_HEADER, HEADER_SIZE

from .test_shm_support import fork, wait


@pytest.fixture
def arena():
    a = Arena.create(segment_name("arena-" + uuid.uuid4().hex[:10]), 256 * 1024)
    yield a
    a.close()
    a.unlink()
    assert not os.path.exists("/dev/shm" + a.name)


def test_create_maps_a_segment_and_unlink_removes_it():
    name = segment_name("life-" + uuid.uuid4().hex[:8])
    a = Arena.create(name, 1 << 20)
    assert os.path.getsize("/dev/shm" + name) == 1 << 20
    assert a.usage()["total"] == (1 << 20) - HEADER_SIZE
    with pytest.raises(ShmError):
        Arena.create(name, 1 << 20)
    a.close()
    a.unlink()
    assert not os.path.exists("/dev/shm" + name)
    with pytest.raises(ShmError):
        Arena.attach(name)


def test_too_small_is_refused_and_leaves_nothing():
    name = segment_name("tiny-" + uuid.uuid4().hex[:8])
    with pytest.raises(ShmError):
        Arena.create(name, 4096)
    assert not os.path.exists("/dev/shm" + name)


def test_blocks_of_many_sizes_do_not_overlap(arena):
    sizes = [0, 1, 7, 8, 23, 24, 25, 100, 1000, 4000, 4089, 20000]
    offs = [arena.alloc(n) for n in sizes]
    for off, n in zip(offs, sizes):
        assert arena.capacity(off) >= n
        assert off % 8 == 0
        arena.mm[off:off + n] = bytes([n % 251]) * n
    for off, n in zip(offs, sizes):
        assert arena.mm[off:off + n] == bytes([n % 251]) * n
    spans = sorted((off - BLOCK_HEADER, off + arena.capacity(off)) for off in offs)
    for (_, end), (start, _) in zip(spans, spans[1:]):
        assert end <= start
    assert arena.usage()["blocks"] == len(sizes)


def test_free_lists_reuse_freed_blocks(arena):
    a = arena.alloc(100)
    b = arena.alloc(100)
    arena.free(a)
    assert arena.usage()["fragments"] == 1
    assert arena.alloc(90) == a
    assert arena.usage()["fragments"] == 0
    arena.free(b)
    arena.free(a)
    assert arena.usage()["used"] == 0


def test_double_free_and_bad_offsets_are_errors(arena):
    a = arena.alloc(10)
    arena.free(a)
    with pytest.raises(ShmError):
        arena.free(a)
    with pytest.raises(ShmError):
        arena.free(12)
    with pytest.raises(ShmError):
        arena.free(a + 1)


def test_exhaustion_raises_shmfull_counts_it_and_recovers_after_free(arena):
    offs = []
    with pytest.raises(ShmFull):
        while True:
            offs.append(arena.alloc(1000))
    assert len(offs) > 100
    assert arena.full_errors == 1
    with pytest.raises(ShmFull):
        arena.alloc(1000)
    assert arena.full_errors == 2
    assert arena.usage()["full_errors"] == 2
    for off in offs[:10]:
        arena.free(off)
    again = [arena.alloc(1000) for _ in range(10)]
    assert sorted(again) == sorted(offs[:10])
    with pytest.raises(ShmFull):
        arena.alloc(1000)


def test_a_request_larger_than_the_arena_is_shmfull(arena):
    with pytest.raises(ShmFull):
        arena.alloc(1 << 30)
    with pytest.raises(ShmFull):
        arena.alloc(1 << 60)
    assert arena.full_errors == 2


def test_large_free_blocks_are_split_for_small_requests(arena):
    big = []
    with pytest.raises(ShmFull):
        while True:
            big.append(arena.alloc(8000))
    with pytest.raises(ShmFull):
        while True:
            arena.alloc(100)
    arena.free(big.pop())
    small = [arena.alloc(100) for _ in range(8192 // 128)]
    assert len(set(small)) == len(small)
    with pytest.raises(ShmFull):
        arena.alloc(100)


def test_usage_accounts_for_every_byte(arena):
    total = arena.usage()["total"]
    a = arena.alloc(100)
    s = arena.alloc_static(1000)
    u = arena.usage()
    assert u["used"] == 128 + 1024
    assert u["used"] + u["free"] == total
    arena.free(a)
    assert arena.usage()["used"] == 1024
    assert s % 64 == 0


def test_children_inherit_the_mapping_and_attach_sees_it(arena):
    off = arena.alloc(16)

    def child() -> None:
        arena.mm[off:off + 5] = b"hello"
        mine = arena.alloc(16)
        arena.free(mine)

    assert wait(fork(child)) == 0
    assert arena.mm[off:off + 5] == b"hello"
    other = Arena.attach(arena.name)
    try:
        assert other.mm[off:off + 5] == b"hello"
        assert other.usage()["blocks"] == 1
        other.free(off)
        assert arena.usage()["blocks"] == 0
    finally:
        other.close()


def test_closed_arena_raises_instead_of_crashing():
    a = Arena.create(segment_name("closed-" + uuid.uuid4().hex[:8]), 1 << 20)
    a.close()
    a.unlink()
    with pytest.raises((ShmError, ValueError)):
        a.alloc(10)


def test_remove_stale_removes_only_dead_masters_segments():
    pid = fork(lambda: None)
    assert wait(pid) == 0
    dead = segment_name("stale", pid)
    tag = "alive-" + uuid.uuid4().hex[:8]
    alive = segment_name(tag)
    for name in (dead, alive):
        posix_ipc.SharedMemory(name, posix_ipc.O_CREX, size=4096).close_fd()
    try:
        assert remove_stale(prefix=f"ser-{os.getpid()}-{tag}") == []
        assert remove_stale(prefix=f"ser-{pid}-") == [dead]
        assert not os.path.exists("/dev/shm" + dead)
        assert os.path.exists("/dev/shm" + alive)
    finally:
        for name in (dead, alive):
            try:
                posix_ipc.unlink_shared_memory(name)
            except posix_ipc.ExistentialError:
                pass


def test_word_view_stores_are_never_seen_half_done(arena):
    """The commit points rely on one ``u64[i] = v`` being one store: an
    unlocked reader in another process never sees 0 or a mix of the values
    (``struct.pack_into`` fails this: it zeroes the target first)."""
    off = arena.alloc(8)
    i = off >> 3
    a, b = 0x1111111111111111, 0x2222222222222222
    arena.u64[i] = a

    def writer() -> None:
        w = arena.u64
        for _ in range(300000):
            w[i] = b
            w[i] = a

    pid = fork(writer)
    seen = set()
    while os.waitpid(pid, os.WNOHANG) == (0, 0):
        for _ in range(2000):
            seen.add(arena.u64[i])
    assert seen <= {a, b}
    assert seen == {a, b}


# Functions allowed to use struct.pack_into on the segment: each writes only
# memory that no other process can reach yet (see arena.py, crash safety).
_PACK_INTO_ALLOWED = {"create", "create_table"}


def test_live_shared_memory_is_written_only_with_single_stores():
    import ast
    import pathlib

    import ser.shm

    offenders = []
    for path in pathlib.Path(ser.shm.__file__).parent.glob("*.py"):
        tree = ast.parse(path.read_text())
        for fn in ast.walk(tree):
            if not isinstance(fn, ast.FunctionDef):
                continue
            for node in ast.walk(fn):
                if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                        and node.func.attr == "pack_into"
                        and fn.name not in _PACK_INTO_ALLOWED):
                    offenders.append(f"{path.name}:{node.lineno} in {fn.name}()")
    assert offenders == []
