"""The core RPC methods (Kamailio's names) and the registry every process builds."""

from __future__ import annotations

import os
import time
from typing import Any

from ser import __version__
from ser.core.module import RPCMethod
from ser.core.rpc import INVALID_PARAMS, RpcContext, RpcError, RpcRegistry


def core_version(ctx: RpcContext) -> str:
    return f"ser {__version__} (python/{os.uname().machine}/{os.uname().sysname.lower()})"


def core_uptime(ctx: RpcContext) -> dict[str, Any]:
    now = time.time()
    return {"now": time.ctime(now), "up_since": time.ctime(ctx.started),
            "uptime": int(now - ctx.started)}


def core_ps(ctx: RpcContext) -> list[dict[str, Any]]:
    return [{"IDX": r["IDX"], "PID": r["PID"], "DSC": r["DSC"]} for r in ctx.procs.rows()]


def core_psx(ctx: RpcContext) -> list[dict[str, Any]]:
    return [{"IDX": r["IDX"], "PID": r["PID"], "RANK": r["IDX"], "ROLE": r["ROLE"],
             "DSC": r["DSC"], "STARTED": int(float(str(r["STARTED"])))}
            for r in ctx.procs.rows()]


def core_shmmem(ctx: RpcContext, unit: str = "") -> dict[str, Any]:
    shm = ctx.shm
    if shm is None:
        raise RpcError(500, "shared memory is not available")
    u = shm.arena.usage()
    div = {"": 1, "b": 1, "k": 1024, "m": 1024 ** 2, "g": 1024 ** 3}.get(unit.lower())
    if div is None:
        raise RpcError(INVALID_PARAMS, "unit is one of b, k, m, g")
    return {k: (v // div if isinstance(v, int) else v) for k, v in u.items()}


def core_echo(ctx: RpcContext, *args: Any) -> list[Any]:
    return list(args)


def system_list_methods(ctx: RpcContext) -> list[str]:
    return sorted(ctx.registry.methods)


def _select(ctx: RpcContext, names: tuple[str, ...]) -> dict[str, int]:
    allstats: dict[str, int] = ctx.stats.all()
    if not names or "all" in names:
        return allstats
    out: dict[str, int] = {}
    for n in names:
        if n.endswith(":"):
            out.update({k: v for k, v in allstats.items() if k.startswith(n)})
        elif ":" in n:
            if n in allstats:
                out[n] = allstats[n]
        else:
            hit = {k: v for k, v in allstats.items()
                   if k.startswith(n + ":") or k.split(":", 1)[1] == n}
            out.update(hit)
    if not out:
        raise RpcError(500, "statistics not found")
    return out


def stats_get(ctx: RpcContext, *names: str) -> list[str]:
    return [f"{k} = {v}" for k, v in sorted(_select(ctx, names).items())]


def stats_reset(ctx: RpcContext, *names: str) -> list[str]:
    sel = _select(ctx, names)
    for k in sel:
        ctx.stats.reset(k)
    return sorted(sel)


def core_tcp_info(ctx: RpcContext) -> dict[str, Any]:
    """Kamailio's core.tcp_info: the stream workers, limits and open connections."""
    from ser.core.tcp import TABLE, ConnTable
    try:
        table = ConnTable(ctx.shm.table(TABLE))
    except (AttributeError, KeyError):
        raise RpcError(500, "no TCP/TLS workers are running") from None
    values = ctx.cfg.settings.values
    opened, opened_tls = table.counts()
    return {"readers": sum(1 for r in ctx.procs.rows() if r["ROLE"] == "tcp"),
            "max_connections": int(values.get("tcp_max_connections", 2048)),
            "max_tls_connections": int(values.get("tls_max_connections", 2048)),
            "max_connections_per_ip": int(values.get("tcp_max_connections_per_ip", 256)),
            "opened_connections": opened, "opened_tls_connections": opened_tls,
            "write_queued_bytes": 0}


# declared here, listed in the core's module declaration (core_functions.exports)
CORE_RPC = (
    RPCMethod("core.version", core_version, "Version of ser."),
    RPCMethod("core.uptime", core_uptime, "Now, start time and seconds running."),
    RPCMethod("core.ps", core_ps, "Processes: index, pid, description."),
    RPCMethod("core.psx", core_psx, "Processes with rank, role and start time."),
    RPCMethod("core.shmmem", core_shmmem, "Shared memory usage.", ("unit: b, k, m or g",)),
    RPCMethod("core.echo", core_echo, "Returns its parameters."),
    RPCMethod("core.tcp_info", core_tcp_info, "TCP/TLS workers, connection limits and "
              "the connections open now (all workers together)."),
    RPCMethod("system.listMethods", system_list_methods, "Every RPC method."),
    RPCMethod("stats.get_statistics", stats_get,
              "Statistics: all, a group (grp: or grp) or names.", ("name ...",)),
    RPCMethod("stats.fetch", stats_get, "Same as stats.get_statistics.", ("name ...",)),
    RPCMethod("stats.reset_statistics", stats_reset,
              "Reset statistics: all, a group or names.", ("name ...",)),
)


def rpc_context(env: Any, registry: RpcRegistry) -> RpcContext:
    """What an RPC handler sees, in any process that has the master's Env."""
    return RpcContext(env=env, procs=env.procs, stats=env.stats, shm=env.shm, cfg=env.cfg,
                      registry=registry, started=env.started, rt=env.rt)


def build_registry(cfg: Any) -> RpcRegistry:
    """Core methods and those of every loaded module."""
    from ser.core.cfg.core_functions import exports as core_exports

    reg = RpcRegistry()
    for decl in [core_exports, *(inst.decl for inst in cfg.modules.values())]:
        for m in decl.rpc:
            reg.add(m.name, m.handler, m.doc)
    return reg
