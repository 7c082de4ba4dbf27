"""Per-process statistics counters: own-row writes, summed reads, reset."""

from __future__ import annotations

import os
import time

import pytest

from ser.shm import Shm, ShmError

from .test_shm_support import fork, run_children, temp_shm, wait


@pytest.fixture
def shm():
    with temp_shm(1 << 20, max_procs=8, max_counters=16) as s:
        for name in ("core:rcv_requests", "core:fwd_requests", "sl:1xx_replies",
                     "sl:200_replies"):
            s.stats.declare(name)
        yield s


def test_each_process_counts_in_its_own_row_and_readers_sum(shm):
    stats = shm.stats

    def work(rank: int) -> None:
        shm.child_init(rank)
        for _ in range(3000):
            stats.inc("core:rcv_requests")
        stats.inc("sl:1xx_replies", rank)

    stats.inc("core:rcv_requests", 5)
    run_children(4, work)
    assert stats.get("core:rcv_requests") == 12005
    assert stats.get("sl:1xx_replies") == 1 + 2 + 3 + 4
    assert stats.get_group("sl") == {"sl:1xx_replies": 10, "sl:200_replies": 0}
    assert stats.all() == {"core:rcv_requests": 12005, "core:fwd_requests": 0,
                           "sl:1xx_replies": 10, "sl:200_replies": 0}
    assert stats.groups() == ["core", "sl"]


def test_a_reader_never_sees_a_counter_go_backwards(shm):
    stats = shm.stats
    stats.inc("core:fwd_requests", 1 << 40)

    def work(rank: int) -> None:
        shm.child_init(rank)
        stats.inc("core:fwd_requests", 1 << 40)
        for _ in range(40000):
            stats.inc("core:fwd_requests")

    final = 3 * (1 << 40) + 80000
    pids = [fork(work, rank) for rank in (1, 2)]
    last, reads = 0, 0
    deadline = time.monotonic() + 30
    while last != final and time.monotonic() < deadline:
        now = stats.get("core:fwd_requests")
        assert now >= last, "a reader saw a counter go backwards (torn or zeroed slot)"
        last = now
        reads += 1
    assert [wait(pid) for pid in pids] == [0, 0]
    assert stats.get("core:fwd_requests") == final
    assert reads > 100


def test_reset_reads_zero_and_counting_goes_on(shm):
    stats = shm.stats
    run_children(2, lambda rank: (shm.child_init(rank), stats.inc("sl:200_replies", 7)))
    assert stats.get("sl:200_replies") == 14
    stats.reset("sl:200_replies")
    assert stats.get("sl:200_replies") == 0
    run_children(1, lambda rank: (shm.child_init(rank), stats.inc("sl:200_replies", 3)))
    assert stats.get("sl:200_replies") == 3
    assert stats.all()["sl:200_replies"] == 3


def test_a_child_must_pick_its_row_before_counting(shm):
    stats = shm.stats

    def child() -> None:
        with pytest.raises(ShmError):
            stats.inc("core:rcv_requests")
        with pytest.raises(ShmError):
            shm.child_init(8)
        shm.child_init(7)
        stats.inc("core:rcv_requests")

    assert wait(fork(child)) == 0
    assert stats.get("core:rcv_requests") == 1


def test_names_are_declared_in_the_master_before_fork(shm):
    stats = shm.stats
    assert stats.declare("core:rcv_requests") == 0
    with pytest.raises(ValueError):
        stats.declare("no_group")
    with pytest.raises(ShmError):
        stats.inc("core:undeclared")

    def child() -> None:
        shm.child_init(1)
        with pytest.raises(ShmError):
            stats.declare("late:counter")

    assert wait(fork(child)) == 0
    for i in range(12):
        stats.declare(f"many:c{i}")
    with pytest.raises(ShmError):
        stats.declare("many:one_too_many")


def test_an_attached_reader_sees_names_and_sums(shm):
    shm.stats.inc("core:fwd_requests", 42)
    other = Shm.attach(shm.arena.name)
    try:
        assert other.stats.get("core:fwd_requests") == 42
        assert list(other.stats.all())[:2] == ["core:rcv_requests", "core:fwd_requests"]
    finally:
        other.close()
    assert os.path.exists("/dev/shm" + shm.arena.name)
