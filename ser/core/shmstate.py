"""The shared state the master creates before the fork: one arena, its tables,
and the core statistics (declared here, so every process can count them)."""

from __future__ import annotations

from typing import Any

from ser.core import testhooks
from ser.core.procs import MAX_PROCS
from ser.core.pv import SHV_TABLE
from ser.shm import Shm, remove_stale, segment_name

CORE_STATS = (
    "core:rcv_requests", "core:rcv_replies", "core:fwd_requests", "core:fwd_replies",
    "core:drop_requests", "core:drop_replies", "core:err_requests", "core:err_replies",
    "core:tcp_refused", "core:child_restarts",
    "sl:1xx_replies", "sl:2xx_replies", "sl:3xx_replies", "sl:4xx_replies",
    "sl:5xx_replies", "sl:6xx_replies", "sl:sent_replies", "sl:failures",
)


def create(cfg: Any, mb: int) -> tuple[Shm, Any]:
    remove_stale()            # segments of masters that died without cleaning up
    shm = Shm.create(segment_name(), mb << 20, max_procs=MAX_PROCS)
    for name in CORE_STATS:
        shm.stats.declare(name)
    for inst in cfg.modules.values():
        inst.state["shm"] = shm
    shm.create_table(SHV_TABLE, 4)          # $shv(name)
    testhooks.create(shm)
    return shm, shm.stats
