"""usrloc timer benchmark (``python -m bench.usrloc``): microseconds per timer
pass over 100,000 AoRs (one contact each, hash_size 16) on a real segment,
when no contact is due and when 1% are due (those are removed, then put back
before the next pass), and per one-second tick of the timer process, which
sweeps 1/timer_interval (60) of the table; db_mode 0, as the timer of a
memory-only registrar."""

from __future__ import annotations

import time
import uuid
from typing import Any

from ser.mods import usrloc
from ser.mods.usrloc import Ucontact, new_ruid
from ser.shm import Shm, segment_name

N_AORS = 100_000
DUE_EVERY = 100


def _ul(shm: Shm) -> usrloc.UsrLoc:
    class Inst:
        params: dict[str, Any]
        state: dict[str, Any]
    inst = Inst()
    inst.params = {"db_mode": 0, "db_url": "", "use_domain": 1, "case_sensitive": 0,
                   "hash_size": 16}
    inst.state = {"shm": shm}
    usrloc.mod_init(inst)
    return inst.state["ul"]


def _fill(ul: usrloc.UsrLoc, now: float, aors: list[str], exp: float) -> None:
    for aor in aors:
        ul.modify("location", aor, lambda old, a=aor: (
            [Ucontact(f"sip:{a}:5060", exp, ruid=new_ruid(), last_modified=now)], None))


def _pass(ul: usrloc.UsrLoc, when: float, runs: int) -> float:
    best = float("inf")
    for _ in range(runs):
        t0 = time.perf_counter()
        ul.timer(when)
        best = min(best, time.perf_counter() - t0)
    return best * 1e6


def main() -> None:
    shm = Shm.create(segment_name("bench-ul-" + uuid.uuid4().hex[:8]), 256 << 20)
    try:
        ul = _ul(shm)
        now = time.time()
        aors = [f"user{i:06d}@example.com" for i in range(N_AORS)]
        due = [a for i, a in enumerate(aors) if i % DUE_EVERY == 0]
        _fill(ul, now, [a for i, a in enumerate(aors) if i % DUE_EVERY], now + 3600)
        _fill(ul, now, due, now + 30)
        print(f"usrloc timer pass, {N_AORS} AoRs (one contact each), db_mode 0:")
        print(f"  {'nothing due':40s} {_pass(ul, now, 5):12.0f} us")
        best = float("inf")
        for _ in range(3):
            _fill(ul, now, due, now + 30)
            t0 = time.perf_counter()
            ul.timer(now + 60)
            best = min(best, time.perf_counter() - t0)
            assert len(ul.table) == N_AORS - len(due)
        print(f"  {f'{len(due)} due (1%), removed':40s} {best * 1e6:12.0f} us")
        # what the timer process does each second with timer_interval 60
        n = ul.table.nbuckets
        step = -(-n // 60)
        times = []
        for first in range(0, n, step):
            t0 = time.perf_counter()
            ul.timer(now, (first, step), db_expire=False)
            times.append(time.perf_counter() - t0)
        print(f"  {'one tick: 1/60 of the buckets, mean':40s} "
              f"{sum(times) / len(times) * 1e6:12.0f} us")
        print(f"  {'one tick: 1/60 of the buckets, max':40s} {max(times) * 1e6:12.0f} us")
    finally:
        shm.close()
        shm.unlink()


if __name__ == "__main__":
    main()
