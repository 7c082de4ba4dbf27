"""The shared state the master creates before the fork: one arena, its tables,
the core statistics (declared here, so every process can count them) and the
run-time configuration values (ser.core.cfgvars; each module instance finds
them as ``state["cfgvars"]``, as it finds the arena as ``state["shm"]``)."""

from __future__ import annotations

from typing import Any

from ser.core import testhooks
from ser.core.cfgvars import CfgVars
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


def create(cfg: Any, mb: int, debug: int | None = None) -> tuple[Shm, Any, CfgVars]:
    remove_stale()            # segments of masters that died without cleaning up
    shm = Shm.create(segment_name(), mb << 20, max_procs=MAX_PROCS)
    for name in CORE_STATS:
        shm.stats.declare(name)
    if debug is None:
        debug = int(cfg.settings.values.get("debug", 0))
    cfgvars = CfgVars.create(shm.arena, {"core.debug": max(-5, min(3, debug))})
    for inst in cfg.modules.values():
        inst.state["shm"] = shm
        inst.state["cfgvars"] = cfgvars
    shm.create_table(SHV_TABLE, 4)          # $shv(name)
    testhooks.create(shm)
    return shm, shm.stats, cfgvars
