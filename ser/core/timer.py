"""The timer process: runs every periodic task modules declare; owns all expiry.

Workers never sweep tables: the module declares a ``Timer(name, interval,
fn)`` and this process calls ``fn(instance, now)`` every ``interval``
seconds. A task that raises is logged and runs again at its next turn.
The process has a :class:`ser.core.receive.Core` of its own over the
inherited sockets (it never receives on them): tm's retransmissions, local
408s and the failure_route of a timed-out transaction are sent from here.
"""

from __future__ import annotations

import heapq
import time

from ser.core.log import log
from ser.core.receive import Core
from ser.core.roles import Env, Role


class TimerProcess(Role):
    kind = "timer"

    def __init__(self, rank: int) -> None:
        super().__init__(rank, "timer")

    def run(self, env: Env) -> int:
        if env.rt is not None:
            Core(env.cfg, env.rt, env.sockets, env.stats, env)
        now = time.monotonic()
        heap: list[tuple[float, int, object, object]] = []
        n = 0
        for inst in env.cfg.modules.values():
            for t in inst.decl.timers:
                heapq.heappush(heap, (now + t.interval, n, t, inst))
                n += 1
        for t in env.options.get("core_timers", ()):
            heapq.heappush(heap, (now + t.interval, n, t, None))
            n += 1
        poll = env.cfgvars.poll if env.cfgvars is not None else lambda: False
        if not heap:
            while True:
                time.sleep(3600)
        while True:
            due, i, t, inst = heap[0]
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            poll()                        # run-time values changed (SIGUSR2)
            heapq.heapreplace(heap, (max(due + t.interval, time.monotonic()), i, t, inst))  # type: ignore[attr-defined]
            try:
                t.fn(inst, time.time())  # type: ignore[attr-defined]
            except Exception:
                log.exception("timer task %s failed", t.name)  # type: ignore[attr-defined]
