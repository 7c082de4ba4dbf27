"""kex: extensions of the core (Kamailio's kex module).

The flag and destination-URI functions Kamailio keeps here (``setbflag``,
``setdsturi``, ...) and the ``core.*``/``stats.*`` RPC methods are part of
ser's core and work without this module. kex adds the per-process log level
(``setdebug``/``resetdebug``, over the shared ``core.debug`` value of
ser.core.cfgvars), ``km_append_branch``, ``is_myself``, ``pv_printf`` and the
memory RPC methods. ser has no private-memory allocator: ``pkg.stats``
reports each process's resident and virtual size from /proc, and
``mod.stats`` cannot split memory by module (its totals are null).
"""

from __future__ import annotations

import logging
import os
from typing import Any

from ser.core.cfg.runtime import add_branch, parse_q
from ser.core.module import Arg, Function, Module, RouteType, RPCMethod
from ser.core.parser import ProtocolError, parse_uri
from ser.core.rpc import INVALID_PARAMS, RpcContext, RpcError

R = RouteType
log = logging.getLogger("ser.kex")


def _cfgvars(ctx: Any) -> Any:
    inst = ctx.rt.modules.get("kex")
    return inst.state.get("cfgvars") if inst is not None else None


def setdebug(ctx: Any, level: int) -> int:
    level = max(-5, min(3, int(level)))
    cv = _cfgvars(ctx)
    if cv is None:
        from ser.core import log as logmod
        logmod.set_level(level)
    else:
        cv.set_local_debug(level)
    return 1


def resetdebug(ctx: Any) -> int:
    cv = _cfgvars(ctx)
    if cv is not None:
        cv.set_local_debug(None)
    return 1


def km_append_branch(ctx: Any, uri: str = "", q: str = "") -> int:
    """A new branch (uri, q) for forking: t_relay forks to it."""
    target = uri or (ctx.ruri if ctx.ruri is not None else ctx.msg.ruri)
    if not target:
        return -1
    add_branch(ctx, target, "", parse_q(q))
    return 1


def is_myself(ctx: Any, text: str) -> int:
    host, port = text.strip(), None
    if ":" in host and not host.startswith("["):
        try:
            uri: Any = parse_uri(host)
            host, port = uri.host, uri.port
        except (ProtocolError, AttributeError):
            if host.count(":") == 1:
                h, _, p = host.partition(":")
                host, port = h, int(p) if p.isdigit() else None
    return 1 if ctx.rt.is_myself(host, port) else -1


def pv_printf(ctx: Any, var: Any, text: str) -> int:
    try:
        var.set(ctx, text)
    except (AssertionError, TypeError, ValueError) as e:
        log.error("pv_printf: cannot set %s: %s", var, e)
        return -1
    return 1


# -- RPC -----------------------------------------------------------------------------------

def _proc_mem(pid: int) -> dict[str, int]:
    out = {"VmRSS": 0, "VmSize": 0}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key, _, val = line.partition(":")
                if key in out:
                    out[key] = int(val.split()[0]) * 1024
    except OSError:
        pass
    return out


def pkg_stats(ctx: RpcContext, what: str = "", value: Any = None) -> list[dict[str, Any]]:
    rows = ctx.procs.rows()
    if what:
        if what not in ("pid", "rank", "index") or value is None:
            raise RpcError(INVALID_PARAMS, "filter is: pid N, rank N or index N")
        try:
            n = int(value)
        except (TypeError, ValueError):
            raise RpcError(INVALID_PARAMS, f"{what} must be a number") from None
        key = "PID" if what == "pid" else "IDX"
        rows = [r for r in rows if r[key] == n]
    out = []
    for entry, r in enumerate(rows):
        mem = _proc_mem(int(str(r["PID"])))
        out.append({"entry": entry, "pid": r["PID"], "rank": r["IDX"], "used": mem["VmRSS"],
                    "free": max(0, mem["VmSize"] - mem["VmRSS"]), "real_used": mem["VmRSS"],
                    "total_size": mem["VmSize"], "total_frags": 0, "desc": r["DSC"]})
    return out


def pkg_info(ctx: RpcContext) -> dict[str, Any]:
    return {"name": "python", "size": _proc_mem(os.getpid())["VmSize"]}


def mod_stats(ctx: RpcContext, module: str = "all", kind: str = "all") -> list[dict[str, Any]]:
    if kind not in ("pkg", "shm", "all"):
        raise RpcError(INVALID_PARAMS, "the second parameter is pkg, shm or all")
    names = ["core", *ctx.cfg.modules]
    if module != "all":
        if module not in names:
            raise RpcError(500, f"module '{module}' is not loaded")
        names = [module]
    out = []
    for name in names:
        row: dict[str, Any] = {"module": name}
        if kind in ("pkg", "all"):
            row["pkg"] = {"Total": None}
        if kind in ("shm", "all"):
            row["shm"] = {"Total": None}
        out.append(row)
    return out


def stats_clear(ctx: RpcContext, *names: str) -> list[str]:
    from ser.core.corerpc import stats_get, stats_reset
    values = stats_get(ctx, *names)
    stats_reset(ctx, *names)
    return values


def core_modules(ctx: RpcContext) -> list[str]:
    return list(ctx.cfg.modules)


exports = Module(
    name="kex",
    doc="Core extensions: per-process log level, branches, memory RPC methods.",
    functions=(
        Function("setdebug", setdebug, (Arg("level", "int"),),
                 doc="Set the log level of this process (-5 .. 3) until resetdebug()."),
        Function("resetdebug", resetdebug,
                 doc="Back to the shared log level (the debug parameter, or what "
                     "cfg.seti core debug set)."),
        Function("km_append_branch", km_append_branch,
                 (Arg("uri", optional=True), Arg("q", optional=True)),
                 R.REQUEST | R.FAILURE,
                 doc="Add a branch (the R-URI when no uri is given) for forking. ser records "
                     "it for tm's t_relay; tm does not exist yet, so nothing sends it now."),
        Function("is_myself", is_myself, (Arg("uri"),),
                 doc="True if the URI or address is one of this server's (no port check "
                     "when it has no port)."),
        Function("pv_printf", pv_printf, (Arg("var", "pv"), Arg("str")),
                 doc="Set the variable to the formatted string."),
    ),
    rpc=(
        RPCMethod("pkg.stats", pkg_stats, "Memory of each process (resident and virtual "
                  "size from /proc); filter: pid N, rank N or index N.", ("filter", "value")),
        RPCMethod("pkg.info", pkg_info, "The private memory manager (python)."),
        RPCMethod("mod.stats", mod_stats, "Memory by module: ser cannot split memory by "
                  "module, the totals are null; see pkg.stats and core.shmmem.",
                  ("module|all", "pkg|shm|all")),
        RPCMethod("mod.mem_stats", mod_stats, "Same as mod.stats.",
                  ("module|all", "pkg|shm|all")),
        RPCMethod("stats.clear_statistics", stats_clear,
                  "Return statistics and reset them (as stats.get_statistics).",
                  ("name ...",)),
        RPCMethod("core.modules", core_modules, "The loaded modules."),
    ),
)
