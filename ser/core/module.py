"""The module declaration API: one ``exports`` object per module.

A module (``ser/mods/<name>.py`` or a package) defines exactly one
``exports = Module(...)`` naming everything it offers the core and the
script: parameters (type, default, check, doc), script functions (argument
spec, the route types that may call them, a fixup run once at load time, and
the callable), pseudo-variables, RPC methods and the hooks ``check``,
``mod_init``, ``child_init(rank)`` and ``destroy``. Nothing is registered anywhere else; the
config checker, the compiler, the RPC registry and the generated docs all
read these declarations.

Calling convention of a script function: ``call(ctx, *args) -> int`` where
``ctx`` is the per-message :class:`ser.core.cfg.runtime.Context` and ``args``
are the values of the script arguments after fixup (``str`` for ``"str"``
arguments, with any ``$pv`` inside already formatted; ``int`` for ``"int"``;
the resolved :class:`ser.core.pv.PVRef` for ``"pv"``; the literal text for
``"const"``). The return value follows Kamailio: negative is false, positive
is true, 0 stops the script. Module state lives in the module's
:class:`ModuleInstance` (``ctx.rt.modules[name].state``), never in globals.
"""

from __future__ import annotations

import importlib
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import IntFlag
from typing import Any

from ser.core.cfg.errors import CfgError, Pos, did_you_mean
from ser.core.pv import PVDecl


class RouteType(IntFlag):
    REQUEST = 1
    FAILURE = 2
    ONREPLY = 4
    BRANCH = 8
    ONSEND = 16
    EVENT = 32
    LOCAL = 64
    ANY = 127


ROUTE_KIND_TYPE: dict[str, RouteType] = {
    "request": RouteType.REQUEST, "failure": RouteType.FAILURE,
    "onreply": RouteType.ONREPLY, "reply": RouteType.ONREPLY,
    "branch": RouteType.BRANCH, "onsend": RouteType.ONSEND, "event": RouteType.EVENT,
}
ROUTE_TYPE_NAMES = {
    RouteType.REQUEST: "request_route", RouteType.FAILURE: "failure_route",
    RouteType.ONREPLY: "onreply_route", RouteType.BRANCH: "branch_route",
    RouteType.ONSEND: "onsend_route", RouteType.EVENT: "event_route",
    RouteType.LOCAL: "local_route",
}

ARG_KINDS = frozenset({"str", "int", "pv", "const"})



class CheckWarning(Exception):
    """Raised by a module's ``check`` hook: reported by `ser -c`, not an error."""

@dataclass(frozen=True)
class Param:
    """A module parameter set with ``modparam``."""
    name: str
    type: type | tuple[type, ...]    # int, str or (int, str)
    default: Any
    doc: str = ""
    check: Callable[[Any], str | None] | None = None   # returns an error message or None
    multi: bool = False              # may be given several times; the value is a list
    ignored: bool = False            # a Kamailio parameter without meaning in ser


@dataclass(frozen=True)
class Arg:
    """One argument of a script function.

    kind: "str"   a string; ``$pv`` inside is formatted per call
          "int"   a number (a string or pv is converted per call)
          "pv"    a pseudo-variable (writable ones for outputs)
          "const" a literal string, not formatted
    """
    name: str
    kind: str = "str"
    optional: bool = False
    doc: str = ""


@dataclass(frozen=True)
class FixedArg:
    """A script argument after fixup: a constant, or a getter called per message."""
    const: Any = None
    get: Callable[[Any], Any] | None = None
    pos: Pos = ("<none>", 0, 0)
    text: str = ""                   # the argument as written, for messages

    @property
    def is_const(self) -> bool:
        return self.get is None


class FixupError(Exception):
    """Raised by a fixup; ``arg`` is the index of the offending argument."""

    def __init__(self, message: str, arg: int | None = None) -> None:
        super().__init__(message)
        self.arg = arg


@dataclass(frozen=True)
class Function:
    name: str
    call: Callable[..., int]
    args: tuple[Arg, ...] = ()
    routes: RouteType = RouteType.ANY
    fixup: Callable[[list[FixedArg]], list[FixedArg]] | None = None
    doc: str = ""

    @property
    def min_args(self) -> int:
        return sum(1 for a in self.args if not a.optional)


@dataclass(frozen=True)
class RPCMethod:
    name: str                        # "module.verb"
    handler: Callable[..., Any]
    doc: str = ""
    params: tuple[str, ...] = ()


@dataclass(frozen=True)
class Timer:
    """A periodic task run by the timer process: ``fn(instance, now)`` every
    ``interval`` seconds (expiring shared-memory entries, retransmissions)."""
    name: str
    interval: float
    fn: Callable[[ModuleInstance, float], None]


@dataclass(frozen=True)
class ActionSite:
    """Where a script action is written, for a module's action hook: the route
    block (Kamailio's names: DEFAULT_ROUTE, REQINIT, ...), file, line and the
    action's name (a function's name, ``if``, ``assign``, ``return``...)."""
    route: str
    file: str
    line: int
    name: str


@dataclass(frozen=True)
class ScriptHooks:
    """What a module has the compiled script call (the debugger's): ``action``
    before every action, ``action(ctx, site)``; ``assigned`` after every
    assignment, ``assigned(ctx, site, get, name)`` (``site.name`` is the
    target as written; ``get(ctx, name)`` reads its value)."""
    action: Callable[[Any, ActionSite], None] | None = None
    assigned: Callable[[Any, ActionSite, Callable[[Any, Any], Any], Any], None] | None = None


@dataclass(frozen=True)
class Module:
    name: str
    doc: str = ""
    params: tuple[Param, ...] = ()
    functions: tuple[Function, ...] = ()
    pvs: tuple[PVDecl, ...] = ()
    rpc: tuple[RPCMethod, ...] = ()
    timers: tuple[Timer, ...] = ()
    # check(instance) -> error or None: what the parameters name outside the
    # script (files), without side effects; run by `ser -c` (mod_init makes
    # the same checks at start). It raises CheckWarning for a problem `ser -c`
    # only reports (a file not installed yet)
    check: Callable[[ModuleInstance], str | None] | None = None
    mod_init: Callable[[ModuleInstance], None] | None = None
    child_init: Callable[[ModuleInstance, int], None] | None = None
    destroy: Callable[[ModuleInstance], None] | None = None
    depends: tuple[str, ...] = ()
    # what an operator must know whenever the module is loaded (a Kamailio
    # module that ser only partly has): printed by ``ser -c`` and at start-up
    warning: str = ""
    # called once after the modparams: the calls the compiler writes into the
    # script (the debugger's cfgtrace and log_assign), or None; the code
    # compiled for a script whose modules give none has no such calls
    script_hooks: Callable[[ModuleInstance], ScriptHooks | None] | None = None

    def function(self, name: str) -> Function | None:
        for f in self.functions:
            if f.name == name:
                return f
        return None

    def param(self, name: str) -> Param | None:
        for p in self.params:
            if p.name == name:
                return p
        return None


@dataclass
class ModuleInstance:
    """A loaded module: its declaration, parameter values and private state."""
    decl: Module
    pos: Pos
    params: dict[str, Any] = field(default_factory=dict)
    state: dict[str, Any] = field(default_factory=dict)
    set_params: set[str] = field(default_factory=set)     # names given with modparam
    # parameter name -> where its (last) modparam value is, for messages
    param_pos: dict[str, Pos] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for p in self.decl.params:
            self.params.setdefault(p.name, [] if p.multi else p.default)


_MODNAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def module_name(spec: str) -> str:
    """'tm', 'tm.so', '/usr/lib/kamailio/modules/tm.so' -> 'tm'."""
    base = os.path.basename(spec.strip())
    if base.endswith(".so"):
        base = base[:-3]
    return base


def load_module(spec: str, pos: Pos) -> Module:
    """Import ``ser.mods.<name>`` and return its ``exports``; CfgError if absent."""
    name = module_name(spec)
    if not _MODNAME.fullmatch(name):
        raise CfgError.at(pos, f"bad module name '{spec}'")
    qual = f"ser.mods.{name}"
    try:
        mod = importlib.import_module(qual)
    except ModuleNotFoundError as e:
        if e.name in (qual, "ser.mods"):
            raise CfgError.at(pos, f"module '{name}' is not available in ser",
                              did_you_mean(name, available_modules())) from None
        raise
    exports = getattr(mod, "exports", None)
    if not isinstance(exports, Module):
        raise CfgError.at(pos, f"module '{name}' has no exports declaration")
    return exports


def available_modules() -> list[str]:
    import ser.mods
    out = []
    for entry in os.listdir(os.path.dirname(ser.mods.__file__)):
        if entry.endswith(".py") and entry != "__init__.py":
            out.append(entry[:-3])
        elif os.path.isfile(os.path.join(os.path.dirname(ser.mods.__file__), entry,
                                         "__init__.py")):
            out.append(entry)
    return sorted(out)


def check_param_value(mod: Module, param: Param, value: Any, pos: Pos) -> CfgError | None:
    """The error of setting ``param`` to ``value``, or None if it is fine."""
    types = param.type if isinstance(param.type, tuple) else (param.type,)
    if not isinstance(value, types):
        want = " or ".join("a number" if t is int else "a string" for t in types)
        got = "a number" if isinstance(value, int) else "a string"
        return CfgError.at(pos, f"modparam '{mod.name}.{param.name}' needs {want}, got {got}")
    if param.check is not None:
        msg = param.check(value)
        if msg:
            return CfgError.at(pos, f"modparam '{mod.name}.{param.name}': {msg}")
    return None
