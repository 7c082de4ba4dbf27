"""cfg_rpc: read and change run-time configuration values (Kamailio's cfg_rpc).

The values live in shared memory (ser.core.cfgvars): ``cfg.seti core debug 3``
stores the value, and every process applies it at once (the control process
signals them), so the log level changes in every worker.
"""

from __future__ import annotations

from typing import Any

from ser.core.module import Module, RPCMethod
from ser.core.rpc import INVALID_PARAMS, RpcContext, RpcError


def _cv(ctx: RpcContext) -> Any:
    cv = ctx.cfg.modules["cfg_rpc"].state.get("cfgvars")
    if cv is None:
        raise RpcError(500, "the run-time configuration is not available")
    return cv


def _group(group: str) -> str:
    return group.partition("[")[0]          # "foo[5]": group instances are not used


def _var(ctx: RpcContext, group: str, name: str) -> Any:
    cv = _cv(ctx)
    d = cv.var(_group(group), name)
    if d is None:
        raise RpcError(400, f"no such variable: {group}.{name}")
    return cv, d


def cfg_get(ctx: RpcContext, group: str, name: str = "") -> Any:
    cv = _cv(ctx)
    if not name:
        g = _group(group)
        vals = {d.name: cv.get(d.group, d.name) for d in cv.decls if d.group == g}
        if not vals:
            raise RpcError(400, f"no such group: {group}")
        return vals
    cv, d = _var(ctx, group, name)
    return cv.get(d.group, d.name)


def cfg_set(ctx: RpcContext, group: str, name: str, value: Any) -> int:
    cv, d = _var(ctx, group, name)
    try:
        n = int(value)
    except (TypeError, ValueError):
        raise RpcError(INVALID_PARAMS, f"{d.key} needs an integer value") from None
    try:
        cv.set(d.group, d.name, n)
    except ValueError as e:
        raise RpcError(INVALID_PARAMS, str(e)) from None
    cv.notify(int(str(r["PID"])) for r in ctx.procs.rows())
    return 0


def cfg_seti(ctx: RpcContext, group: str, name: str, value: Any) -> int:
    if isinstance(value, str) and not value.lstrip("-").isdigit():
        raise RpcError(INVALID_PARAMS, "cfg.seti needs an integer value")
    return cfg_set(ctx, group, name, value)


def cfg_sets(ctx: RpcContext, group: str, name: str, value: Any) -> int:
    return cfg_set(ctx, group, name, str(value))


def cfg_reset(ctx: RpcContext, group: str) -> int:
    cv = _cv(ctx)
    g = _group(group)
    decls = [d for d in cv.decls if d.group == g]
    if not decls:
        raise RpcError(400, f"no such group: {group}")
    for d in decls:
        cv.set(d.group, d.name, int(cv.initial.get(d.key, 0)))
    cv.notify(int(str(r["PID"])) for r in ctx.procs.rows())
    return 0


def cfg_list(ctx: RpcContext, group: str = "") -> list[str]:
    cv = _cv(ctx)
    g = _group(group)
    return [f"{d.group}: {d.name}" for d in cv.decls if not g or d.group == g]


def cfg_help(ctx: RpcContext, group: str, name: str) -> str:
    _, d = _var(ctx, group, name)
    return f"{d.doc} (parameter type is integer)"


_set = ("group", "name", "value")

exports = Module(
    name="cfg_rpc",
    doc="Read and change run-time configuration values (core.debug) in every process.",
    rpc=(
        RPCMethod("cfg.list", cfg_list, "The run-time variables (of a group).", ("group",)),
        RPCMethod("cfg.get", cfg_get, "A variable's value, or every value of a group.",
                  ("group", "name")),
        RPCMethod("cfg.set", cfg_set, "Set a variable now, in every process.", _set),
        RPCMethod("cfg.seti", cfg_seti, "Set an integer variable now.", _set),
        RPCMethod("cfg.set_now_int", cfg_seti, "Same as cfg.seti.", _set),
        RPCMethod("cfg.sets", cfg_sets, "Set a variable from a string now.", _set),
        RPCMethod("cfg.set_now_string", cfg_sets, "Same as cfg.sets.", _set),
        RPCMethod("cfg.reset", cfg_reset, "Set a group's variables back to their start "
                  "values.", ("group",)),
        RPCMethod("cfg.help", cfg_help, "What a variable means.", ("group", "name")),
    ),
)
