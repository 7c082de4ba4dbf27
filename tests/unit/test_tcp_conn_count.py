"""The global stream connection count (ser.core.tcp.ConnTable) over real shm,
including workers in other processes racing for the last places."""

from __future__ import annotations

import os

from ser.core.tcp import TABLE, ConnTable

from .test_shm_support import temp_shm


def test_reserve_release_and_a_dead_rank():
    with temp_shm(1 << 20) as shm:
        t = ConnTable(shm.create_table(TABLE, 4))
        assert [t.reserve(r, False, 3, 1) for r in (5, 6, 5, 6)] == [True, True, True, False]
        assert t.counts() == (3, 0)
        t.release(6, False)
        assert t.reserve(6, True, 3, 1) is True          # one tls place
        assert t.reserve(5, True, 9, 1) is False         # tls limit, not the total
        assert t.counts() == (3, 1)
        assert t.release_rank(5) == (2, 0)              # rank 5 died with two
        assert t.counts() == (1, 1)
        assert t.release_rank(5) == (0, 0)
        t.release(6, True)
        assert t.counts() == (0, 0)
        t.release(6, False)                               # never below zero
        assert t.counts() == (0, 0)


def test_processes_racing_never_exceed_the_limit():
    with temp_shm(1 << 20) as shm:
        t = ConnTable(shm.create_table(TABLE, 4))
        pids = []
        for rank in range(4):
            pid = os.fork()
            if pid == 0:                                  # a worker: grab what it can
                got = 255
                try:
                    got = sum(t.reserve(rank, False, 50, 50) for _ in range(40))
                finally:
                    os._exit(got)
            pids.append(pid)
        got = sum(os.waitstatus_to_exitcode(os.waitpid(p, 0)[1]) for p in pids)
        assert got == 50 and t.counts() == (50, 0)


def test_per_ip_count_is_shared_by_the_ranks_and_dropped_with_a_dead_one():
    with temp_shm(1 << 20) as shm:
        t = ConnTable(shm.create_table(TABLE, 4))
        a, b = "127.0.0.5", "::1"
        assert [t.admit(r, a, False, 10, 10, 2) for r in (5, 6, 5)] == \
            [None, None, "tcp_max_connections_per_ip"]
        assert t.admit(6, b, False, 10, 10, 2) is None   # another address has its own
        assert (t.per_ip(a), t.per_ip(b), t.counts()) == (2, 1, (3, 0))
        t.release(6, False, a)
        assert t.per_ip(a) == 1 and t.admit(6, a, False, 10, 10, 2) is None
        # the total refuses: the address's place is given back
        assert t.admit(5, "127.0.0.6", False, 4, 10, 9) is None
        assert t.admit(5, "127.0.0.7", False, 4, 10, 9) == "tcp_max_connections"
        assert t.admit(5, "127.0.0.7", True, 9, 0, 9) == "tls_max_connections"
        assert t.per_ip("127.0.0.7") == 0
        assert t.release_rank(6) == (2, 0)              # rank 6 died with a and b
        assert (t.per_ip(a), t.per_ip(b), t.counts()) == (1, 0, (2, 0))
        t.release(5, False, a)
        t.release(5, False, "127.0.0.6")
        assert t.counts() == (0, 0)
        assert not [r.key for r in t.t.snapshot() if r.key.startswith(b"n|")]
