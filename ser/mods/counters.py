"""counters: script counters (Kamailio's counters module).

Each ``script_counter`` is declared in the master before the fork as a
shared-memory statistic ``group:name`` (ser.shm.Stats), so every process
counts in its own slot without a lock and ``stats.get_statistics`` shows the
counters next to the core ones. The ``cnt.*`` RPC methods read every
statistic group, as Kamailio's read every counter group.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from ser.core.module import Arg, Function, Module, ModuleInstance, Param, RPCMethod
from ser.core.rpc import RpcContext, RpcError

log = logging.getLogger("ser.counters")
_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")
DEFAULT_DESC = "custom script counter"


def parse_decl(text: str, default_group: str) -> tuple[str, str, str]:
    """'[group.]name[( |:)description]' -> (group, name, description)."""
    text = text.strip()
    m = re.match(r"^([^\s:]+)(?:[\s:]+(.*))?$", text, re.S)
    if m is None:
        raise ValueError(f"bad script_counter {text!r}")
    full, desc = m.group(1), (m.group(2) or "").strip() or DEFAULT_DESC
    group, dot, name = full.rpartition(".")
    if dot and not group:
        raise ValueError(f"bad counter name {full!r}")
    group = group or default_group
    if not _NAME.match(group) or not _NAME.match(name) or "." in group:
        raise ValueError(f"bad counter name {full!r}")
    return group, name, desc


def _check_decl(value: Any) -> str | None:
    try:
        parse_decl(str(value), "script")
    except ValueError as e:
        return str(e)
    return None


def mod_init(inst: ModuleInstance) -> None:
    stats = inst.state["shm"].stats
    default = str(inst.params["script_cnt_grp_name"])
    names: dict[str, str] = {}
    helps: dict[str, str] = {}
    for text in inst.params["script_counter"]:
        group, name, desc = parse_decl(str(text), default)
        key = f"{group}:{name}"
        stats.declare(key)
        names[f"{group}.{name}"] = key
        if group == default:
            names.setdefault(name, key)
        helps[key] = desc
    inst.state["names"] = names
    inst.state["help"] = helps


def _key(ctx: Any, name: str) -> str | None:
    key = ctx.rt.modules["counters"].state.get("names", {}).get(name)
    if key is None:
        log.error("counter '%s' is not declared (modparam script_counter)", name)
    return key


def _stats(ctx: Any) -> Any:
    return ctx.rt.modules["counters"].state["shm"].stats


def cnt_inc(ctx: Any, name: str) -> int:
    return cnt_add(ctx, name, 1)


def cnt_add(ctx: Any, name: str, n: int) -> int:
    key = _key(ctx, name)
    if key is None:
        return -1
    _stats(ctx).inc(key, int(n))
    return 1


def cnt_reset(ctx: Any, name: str) -> int:
    key = _key(ctx, name)
    if key is None:
        return -1
    _stats(ctx).reset(key)
    return 1


# -- RPC -----------------------------------------------------------------------------------

def _group(ctx: RpcContext, group: str) -> dict[str, int]:
    values = ctx.stats.get_group(group)
    if not values:
        raise RpcError(400, f"no such group: {group}")
    return {k.split(":", 1)[1]: v for k, v in values.items()}


def rpc_get(ctx: RpcContext, group: str, name: str) -> int:
    values = _group(ctx, group)
    if name not in values:
        raise RpcError(400, f"no such counter: {group}.{name}")
    return values[name]


def rpc_reset(ctx: RpcContext, group: str, name: str) -> None:
    rpc_get(ctx, group, name)
    ctx.stats.reset(f"{group}:{name}")


def rpc_list_groups(ctx: RpcContext) -> list[str]:
    return ctx.stats.groups()


def rpc_list_vars(ctx: RpcContext, group: str) -> list[str]:
    return list(_group(ctx, group))


def rpc_get_vars(ctx: RpcContext, group: str) -> dict[str, int]:
    return _group(ctx, group)


def rpc_help(ctx: RpcContext, group: str, name: str) -> str:
    rpc_get(ctx, group, name)
    helps = ctx.cfg.modules["counters"].state.get("help", {})
    return str(helps.get(f"{group}:{name}", "statistic of ser"))


_grp = ("group",)
_grp_name = ("group", "name")

exports = Module(
    name="counters",
    doc="Counters the script increments; shared by all processes and shown by "
        "stats.get_statistics as group:name.",
    params=(
        Param("script_counter", str, None, "Declare a counter: "
              "\"[group.]name[( |:)description]\"; may be repeated.", check=_check_decl,
              multi=True),
        Param("script_cnt_grp_name", str, "script",
              "Group of the script counters declared without one."),
    ),
    functions=(
        Function("cnt_inc", cnt_inc, (Arg("name", doc="[group.]name"),),
                 doc="Add 1 to a declared counter."),
        Function("cnt_add", cnt_add, (Arg("name", doc="[group.]name"), Arg("number", "int")),
                 doc="Add a number to a declared counter."),
        Function("cnt_reset", cnt_reset, (Arg("name", doc="[group.]name"),),
                 doc="Set a declared counter back to 0."),
    ),
    rpc=(
        RPCMethod("cnt.get", rpc_get, "The value of a counter.", _grp_name),
        RPCMethod("cnt.reset", rpc_reset, "Set a counter back to 0.", _grp_name),
        RPCMethod("cnt.list_groups", rpc_list_groups, "Every counter group."),
        RPCMethod("cnt.grps_list", rpc_list_groups, "Same as cnt.list_groups."),
        RPCMethod("cnt.list_vars", rpc_list_vars, "The counters of a group.", _grp),
        RPCMethod("cnt.var_list", rpc_list_vars, "Same as cnt.list_vars.", _grp),
        RPCMethod("cnt.get_vars", rpc_get_vars, "The counters of a group with their values.",
                  _grp),
        RPCMethod("cnt.grp_get_all", rpc_get_vars, "Same as cnt.get_vars.", _grp),
        RPCMethod("cnt.help", rpc_help, "The description of a counter.", _grp_name),
    ),
    mod_init=mod_init,
)
