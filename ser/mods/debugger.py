"""debugger: the config trace (Kamailio's debugger module, its cfgtrace part).

Theory of operation. Loaded, the module gives the compiler an action hook
(:class:`Tracer`): the compiled script calls it before every action it runs
— each statement, each function or ``route()`` call — with where the action
is written. When tracing is on in this process the hook logs one line, as
Kamailio's cfgtrace does::

    exec: *** cfgtrace:request_route=[REQINIT] c=[/etc/kamailio/kamailio.cfg] l=598 n=set_reply_no_connect

(the route type being run, the route block, file, line and the action's name
— a function's name, ``route``, ``if``, ``assign``, ``return``, ``exit``...).
Kamailio's ``a=`` (its internal action number) is not written: ser has none.
The line is logged at ``log_level`` under the level name ``log_level_name``
(the level's own name when empty) and, when ser logs to syslog, with the
facility ``log_facility``. A script whose modules give no hook has no hook
calls compiled in: without this module nothing is paid.

Whether a process traces is one word per process rank in shared memory,
set to ``cfgtrace`` at start; ``dbg.trace on|off [pid]`` changes it for
every process or one, at once and without a restart; ``dbg.ls [pid]``
lists them.

With ``log_assign`` every assignment of the script logs the new value at
debug level, as Kamailio does: ``$var(x):1``, ``$var(s):"text"``,
``$avp(a): $null``. Interactive breakpoints (``dbg.bp``,
``dbg_breakpoint``), the per-module log levels and the cfgt test hooks are
not in ser; turning one of them on fails the config check, saying so.
"""

from __future__ import annotations

import logging
import logging.handlers
from typing import Any

from ser.core import log as logmod
from ser.core.cfg.globals import FACILITIES
from ser.core.module import (
    ROUTE_TYPE_NAMES,
    ActionSite,
    Module,
    ModuleInstance,
    Param,
    RPCMethod,
    ScriptHooks,
)
from ser.core.procs import MAX_PROCS
from ser.core.rpc import INVALID_PARAMS, RpcContext, RpcError

log = logging.getLogger("ser.cfgtrace")
assign_log = logging.getLogger("ser.debugger")


class Tracer:
    """The action hook. Before the shared memory exists (``ser -c``, unit
    tests) the on/off switch is a plain attribute; after ``mod_init`` it is
    this process's word of the shared block."""

    def __init__(self, on: bool, level: int, level_name: str, prefix: str) -> None:
        self.on = on
        self.level = logmod.level_of(level)
        self.level_name = level_name
        self.prefix = prefix
        self.words: Any = None         # the shared int64 view, once in shm
        self.base = 0                  # index of rank 0's word
        self.rank = 0

    def tracing(self, rank: int | None = None) -> bool:
        if self.words is None:
            return self.on
        return bool(self.words[self.base + (self.rank if rank is None else rank)])

    def set(self, on: bool, rank: int | None = None) -> None:
        """Tracing on or off for one rank, or (rank None) for every one."""
        if self.words is None:
            self.on = on
            return
        ranks = range(MAX_PROCS) if rank is None else (rank,)
        for r in ranks:
            self.words[self.base + r] = int(on)

    def line(self, route_type: int, site: ActionSite) -> str:
        rtype = ROUTE_TYPE_NAMES.get(route_type, "route")   # type: ignore[call-overload]
        return (f"{self.prefix}{rtype}=[{site.route}] c=[{site.file}] l={site.line} "
                f"n={site.name}")

    def __call__(self, ctx: Any, site: ActionSite) -> None:
        if self.words is None:
            if not self.on:
                return None
        elif not self.words[self.base + self.rank]:
            return None
        if not log.isEnabledFor(self.level):
            return None
        record = log.makeRecord(log.name, self.level, site.file, site.line,
                                self.line(ctx.route_type, site), (), None)
        if self.level_name:
            record.levelname = self.level_name
        log.handle(record)
        return None


def assigned(ctx: Any, site: ActionSite, get: Any, name: Any) -> None:
    """log_assign: the value an assignment left in its target."""
    if not assign_log.isEnabledFor(logging.DEBUG):
        return
    value = get(ctx, name)
    if value is None:
        assign_log.debug("%s: $null", site.name)
    elif isinstance(value, int):
        assign_log.debug("%s:%d", site.name, value)
    else:
        assign_log.debug('%s:"%s"', site.name, value)


def _hooks(inst: ModuleInstance) -> ScriptHooks:
    return ScriptHooks(_tracer(inst), assigned if inst.params["log_assign"] else None)


def _tracer(inst: ModuleInstance) -> Tracer:
    p = inst.params
    tracer = inst.state.get("tracer")
    if tracer is None:
        tracer = Tracer(bool(p["cfgtrace"]), int(p["log_level"]), str(p["log_level_name"]),
                        str(p["log_prefix"]))
        inst.state["tracer"] = tracer
    return tracer


# Python's level -> syslog severity name (SysLogHandler.priority_map's values)
_SEVERITY = {logging.DEBUG: "debug", logging.INFO: "info", logmod.NOTICE: "notice",
             logging.WARNING: "warning", logging.ERROR: "error", logging.CRITICAL: "critical",
             logmod.ALERT: "alert"}


def _syslog_setup(tracer: Tracer, facility: str) -> None:
    """When ser logs to syslog: the trace lines go with ``facility`` (a
    handler of their own) and, under ``log_level_name``, with the severity of
    ``log_level`` (a handler maps an unknown level name to "warning")."""
    log.handlers.clear()
    log.propagate = True
    core = [h for h in logging.getLogger("ser").handlers
            if isinstance(h, logging.handlers.SysLogHandler)]
    if not core:
        return                       # stderr: a facility means nothing there
    handlers = core
    if facility:
        own = logging.handlers.SysLogHandler(
            core[0].address, getattr(logging.handlers.SysLogHandler, facility),
            core[0].socktype)
        own.setFormatter(core[0].formatter)
        log.addHandler(own)
        log.propagate = False
        handlers = [own]
    if tracer.level_name:
        for h in handlers:
            # a copy per handler instance: the class's table stays as it is
            h.priority_map = {**h.priority_map,  # type: ignore[misc]
                              tracer.level_name: _SEVERITY.get(tracer.level, "error")}


def mod_init(inst: ModuleInstance) -> None:
    tracer = _tracer(inst)
    shm = inst.state.get("shm")
    if shm is not None:
        tracer.words = shm.arena.i64
        tracer.base = shm.arena.alloc_static(8 * MAX_PROCS) >> 3
        tracer.set(tracer.on)
    _syslog_setup(tracer, str(inst.params["log_facility"]))


def child_init(inst: ModuleInstance, rank: int) -> None:
    _tracer(inst).rank = rank


def _state(ctx: RpcContext) -> Tracer:
    inst = ctx.cfg.modules.get("debugger")
    if inst is None or "tracer" not in inst.state:
        raise RpcError(500, "the debugger is not initialised")
    return inst.state["tracer"]


def _rows(ctx: RpcContext, pid: Any) -> list[dict[str, Any]]:
    rows = ctx.procs.rows()
    if pid is None or pid == "":
        return rows
    try:
        want = int(pid)
    except (TypeError, ValueError):
        raise RpcError(INVALID_PARAMS, f"bad pid '{pid}'") from None
    rows = [r for r in rows if r["PID"] == want]
    if not rows:
        raise RpcError(INVALID_PARAMS, f"no process with pid {want}")
    return rows


def dbg_ls(ctx: RpcContext, pid: Any = None) -> list[dict[str, Any]]:
    """Kamailio's fields: entry (the process's rank here), pid, set (1: cfg
    trace on), state, in.pid, in.cmd (breakpoint state: always 0 in ser)."""
    tracer = _state(ctx)
    return [{"entry": r["IDX"], "pid": r["PID"], "set": int(tracer.tracing(int(r["IDX"]))),
             "state": 0, "in.pid": 0, "in.cmd": 0} for r in _rows(ctx, pid)]


def dbg_trace(ctx: RpcContext, cmd: str, pid: Any = None) -> str:
    tracer = _state(ctx)
    if cmd not in ("on", "off"):
        raise RpcError(INVALID_PARAMS, f"unknown command '{cmd}' (use on or off)")
    if pid is None or pid == "":
        tracer.set(cmd == "on")
    else:
        for r in _rows(ctx, pid):
            tracer.set(cmd == "on", int(r["IDX"]))
    return "200 ok"


def _off(feature: str) -> Any:
    """The check of a parameter turning on a feature ser does not have."""
    return lambda v: f"{feature} are not available in ser (set 0 or remove the line)" \
        if v else None


def _facility(v: str) -> str | None:
    return None if not v or v in FACILITIES else f"unknown facility '{v}' (LOG_LOCAL0 ...)"


def _level(v: int) -> str | None:
    return None if -5 <= v <= 3 else "a log level is -5 (alert) .. 3 (debug)"


exports = Module(
    name="debugger",
    doc="The config trace: with cfgtrace on (or after dbg.trace on), every script action "
        "a process runs is logged before it runs, as "
        "'exec: *** cfgtrace:request_route=[REQINIT] c=[/etc/ser/ser.cfg] l=598 "
        "n=force_rport': the route type, the route block, the file, the line and the action "
        "(a function's name, route, if, switch, while, assign, return, exit, drop, break). "
        "Kamailio's a= field (its internal action number) is not written. A config without "
        "this module runs no trace code at all.",
    params=(
        Param("cfgtrace", int, 0, "1: trace the script from the start (dbg.trace changes "
              "it at run time)."),
        Param("log_level", int, -1, "Log level of the trace lines: -5 (alert) .. 3 (debug).",
              check=_level),
        Param("log_level_name", str, "", "The level name written in the trace lines "
              "(\"exec\"); empty: the level's own name."),
        Param("log_facility", str, "", "Syslog facility of the trace lines when ser logs "
              "to syslog; empty: the core's.", check=_facility),
        Param("log_prefix", str, "*** cfgtrace:", "Written before every trace line."),
        Param("breakpoint", int, 0, "Interactive breakpoints: not in ser, only 0.",
              check=_off("interactive breakpoints")),
        Param("step_usleep", int, 100000, "Breakpoint polling interval (no breakpoints in "
              "ser).", ignored=True),
        Param("step_loops", int, 200, "Breakpoint RPC wait (no breakpoints in ser).",
              ignored=True),
        Param("mod_hash_size", int, 0, "Size of the per-module log level table (not in ser).",
              ignored=True),
        Param("mod_level_mode", int, 0, "Per-module log levels: not in ser, only 0.",
              check=_off("per-module log levels")),
        Param("mod_level", str, "", "A module's log level (without mod_level_mode: unused).",
              multi=True, ignored=True),
        Param("mod_facility_mode", int, 0, "Per-module log facilities: not in ser, only 0.",
              check=_off("per-module log facilities")),
        Param("mod_facility", str, "", "A module's facility (without mod_facility_mode: "
              "unused).", multi=True, ignored=True),
        Param("log_assign", int, 0, "1: log the value every assignment of the script "
              "leaves, at debug level ($var(x):1, $var(s):\"text\", $avp(a): $null)."),
        Param("cfgpkgcheck", int, 0, "Private memory check per action (no such memory in "
              "ser).", ignored=True),
        Param("reset_msgid", int, 0, "Allow dbg.reset_msgid (not in ser).", ignored=True),
        Param("cfgtest", int, 0, "The cfgt module's test hooks: not in ser, only 0.",
              check=_off("the cfgt test hooks")),
    ),
    rpc=(
        RPCMethod("dbg.ls", dbg_ls, "The processes and whether each traces the script.",
                  ("pid",)),
        RPCMethod("dbg.trace", dbg_trace, "Config trace on or off, in every process or the "
                  "one with the pid.", ("cmd", "pid")),
    ),
    mod_init=mod_init,
    child_init=child_init,
    script_hooks=_hooks,
)
