"""Compiler: a checked script -> Python callables, once per process.

Theory of operation: :class:`Compiler` walks the AST of every route, resolves
every name on the way (core and module functions, ``route(NAME)``,
pseudo-variables, transformations), runs the argument fixups, and writes
Python source: one ``def`` per route. The source is ``compile()``d once;
every constant the code needs (a function, a resolved pseudo-variable, a
compiled regex, an IP network) is bound in the namespace of that code under a
short name, so a message runs straight-line Python with no lookups by name
and no re-parsing. Errors are collected (``Compiler.errors``); the code of a
statement that failed to compile is left out, so one run reports them all.

A module may give :class:`ScriptHooks` (the debugger): with an ``action``
hook a call ``_dbg(ctx, site)`` is written before every action — each
statement, and each function or route call inside an expression — with the
action's :class:`ActionSite`; with an ``assigned`` hook a call
``_dbga(ctx, site, get, name)`` after every assignment. Without them no such
call exists.

Kamailio's semantics kept here: a function or route returning 0 stops the
script (as ``exit``); a negative value is false, a positive one true;
``$retcode``/``$rc`` hold the last return value; a string literal in an
expression is taken as written, a string argument of a function has its
``$pv`` formatted per call; ``==`` compares as numbers when the left operand
is a number and as strings otherwise; ``=~`` is a case-insensitive regular
expression search.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ser.core.cfg import ast
from ser.core.cfg.errors import CfgError, Pos, did_you_mean
from ser.core.cfg.lexer import scan_pv
from ser.core.cfg.parser import KEYWORDS
from ser.core.cfg.runtime import EXIT, Context, ScriptExit
from ser.core.module import (
    ROUTE_KIND_TYPE,
    ROUTE_TYPE_NAMES,
    ActionSite,
    FixedArg,
    FixupError,
    Function,
    Module,
    RouteType,
    ScriptHooks,
)
from ser.core.pv import PVRef, PVResolver, to_str

# ------------------------------------------------------------ runtime helpers


def _s(v: Any) -> str:
    return "" if v is None else v if isinstance(v, str) else str(v)


def _int(v: Any) -> int:
    if isinstance(v, int):
        return v
    if v is None:
        return 0
    return _str_int(str(v)) or 0


def _str_int(text: str) -> int | None:
    """A decimal (or 0x hex) number in a string, None if it is not one."""
    text = text.strip()
    try:
        return int(text, 10)
    except ValueError:
        pass
    try:
        return int(text, 16) if text[:2].lower() == "0x" else None
    except ValueError:
        return None


def _truth(v: Any) -> bool:
    if isinstance(v, int):
        return v > 0
    return bool(v)


def _eq(a: Any, b: Any) -> bool:
    if a is None or b is None:
        return a is b
    if isinstance(a, int):
        if isinstance(b, int):
            return a == b
        return a == _str_int(str(b))
    return a == (b if isinstance(b, str) else str(b))


def _cmp(a: Any, b: Any) -> int:
    if isinstance(a, int) or (a is None and isinstance(b, int)):
        x, y = _int(a), _int(b)
    else:
        x, y = _s(a), _s(b)   # type: ignore[assignment]
    return (x > y) - (x < y)


def _add(a: Any, b: Any) -> Any:
    if isinstance(a, str):
        return a + _s(b)
    if a is None and isinstance(b, str):
        return b
    return _int(a) + _int(b)


def _div(a: Any, b: Any) -> int:
    d = _int(b)
    return 0 if d == 0 else int(_int(a) / d)


def _mod(a: Any, b: Any) -> int:
    d = _int(b)
    return 0 if d == 0 else _int(a) % d


_rx_cache: dict[str, re.Pattern[str]] = {}


def _match(a: Any, pattern: Any) -> bool:
    p = _s(pattern)
    rx = _rx_cache.get(p)
    if rx is None:
        try:
            rx = _rx_cache[p] = re.compile(p, re.IGNORECASE)
        except re.error:
            return False
    return rx.search(_s(a)) is not None


def _ip_eq_str(ip: str, other: Any) -> bool:
    try:
        return ipaddress.ip_address(ip) == ipaddress.ip_address(_s(other).strip("[]"))
    except ValueError:
        return False


def _ip_in(value: Any, net: Any) -> bool:
    try:
        return ipaddress.ip_address(_s(value).strip("[]")) in net
    except ValueError:
        return False


def _ruri(ctx: Context) -> str:
    return ctx.ruri if ctx.ruri is not None else (ctx.msg.ruri if ctx.msg.is_request else "")


def _from_uri(ctx: Context) -> str:
    na = ctx.msg.from_
    return "" if na is None else str(na.uri)


def _to_uri(ctx: Context) -> str:
    na = ctx.msg.to
    return "" if na is None else str(na.uri)


def _uri_myself(ctx: Context, uri: str) -> bool:
    from ser.core.parser import parse_uri
    try:
        u = parse_uri(uri)
    except Exception:
        return False
    if not u.host:
        return False
    return bool(ctx.rt.is_myself(u.host, u.port))


def _ret(ctx: Context, r: int) -> int:
    ctx.retcode = r
    if r == 0:
        raise EXIT
    return r


def _switch_index(table: dict[Any, int], value: Any, default: int) -> int:
    i = table.get(value)
    if i is None and isinstance(value, str):
        n = _str_int(value)
        i = None if n is None else table.get(n)
    if i is None and isinstance(value, int):
        i = table.get(str(value))
    return default if i is None else i


_HELPERS: dict[str, Any] = {
    "_s": _s, "_int": _int, "_truth": _truth, "_eq": _eq, "_cmp": _cmp, "_add": _add,
    "_div": _div, "_mod": _mod, "_match": _match, "_ip_eq_str": _ip_eq_str, "_ip_in": _ip_in,
    "_ruri": _ruri, "_from_uri": _from_uri, "_to_uri": _to_uri, "_uri_myself": _uri_myself,
    "_ret": _ret, "_switch_index": _switch_index, "EXIT": EXIT, "_to_str": to_str,
}

# ------------------------------------------------------------------ results

RouteFn = Callable[[Context], int]


@dataclass
class Routes:
    """The compiled script. ``run(kind, name, ctx)`` runs one route block."""
    table: dict[tuple[str, str], RouteFn] = field(default_factory=dict)
    source: str = ""

    def get(self, kind: str, name: str = "") -> RouteFn | None:
        return self.table.get((kind, name))

    def run(self, kind: str, name: str, ctx: Context) -> int:
        """Run a route to its end; the return code (0 after exit/drop)."""
        fn = self.table[(kind, name)]
        ctx.route_type = ROUTE_KIND_TYPE.get(kind, RouteType.REQUEST)
        try:
            return fn(ctx)
        except ScriptExit as e:
            e.__traceback__ = None     # the one EXIT instance must not collect tracebacks
            return 0

    def request(self, ctx: Context) -> int:
        """Run request_route (the hot path of a worker)."""
        try:
            return self.table[("request", "")](ctx)
        except ScriptExit as e:
            e.__traceback__ = None
            return 0


# ----------------------------------------------------------------- compiler

_KW_VALUES = {
    "method": ("ctx.msg.method", "str"), "uri": ("_ruri(ctx)", "str"),
    "from_uri": ("_from_uri(ctx)", "str"), "to_uri": ("_to_uri(ctx)", "str"),
    "status": ("ctx.msg.status", "int"), "src_ip": ("ctx.src_ip", "str"),
    "dst_ip": ("ctx.dst_ip", "str"), "src_port": ("ctx.src_port", "int"),
    "dst_port": ("ctx.dst_port", "int"), "proto": ("ctx.proto", "int"),
    "af": ("ctx.af", "int"),
}
_CMP_OPS = {"<": "<", ">": ">", "<=": "<=", ">=": ">="}
_INT_OPS = {"-": "-", "*": "*", "|": "|", "&": "&", "^": "^"}


class _Fail(Exception):
    pass


class Compiler:
    def __init__(self, script: ast.Script, modules: list[Module], resolver: PVResolver,
                 max_while_loops: int = 100, hooks: ScriptHooks | None = None) -> None:
        self.script = script
        self.resolver = resolver
        self.errors: list[CfgError] = []
        self.functions: dict[str, Function] = {}
        for mod in modules:
            for f in mod.functions:
                self.functions.setdefault(f.name, f)
        self.max_while = max_while_loops
        self.ns: dict[str, Any] = dict(_HELPERS)
        self.hook = hooks.action if hooks is not None else None
        self.assigned = hooks.assigned if hooks is not None else None
        self.ns["_dbg"] = self.hook
        self.ns["_dbga"] = self.assigned
        self._ids: dict[int, str] = {}
        self.lines: list[str] = []
        self.tmp = 0
        self.route_names: dict[tuple[str, str], str] = {}
        self.named: dict[str, ast.Route] = {}
        self.uses: dict[tuple[str, str], list[tuple[Function, Pos]]] = {}
        self.calls: dict[tuple[str, str], set[str]] = {}
        self.current: tuple[str, str] = ("", "")
        self.loop_depth = 0
        # how exit/drop/0 leave: a plain return in a top-level route, an
        # exception through the callers in a route[NAME] called with route()
        self.stop = "raise EXIT"

    # -- helpers -------------------------------------------------------------
    def bind(self, obj: Any, prefix: str = "K") -> str:
        key = id(obj)
        name = self._ids.get(key)
        if name is None:
            name = f"{prefix}{len(self._ids)}"
            self._ids[key] = name
            self.ns[name] = obj
            self.ns.setdefault("_keep", []).append(obj)
        return name

    def fail(self, pos: Pos, message: str, hint: str | None = None) -> _Fail:
        self.errors.append(CfgError.at(pos, message, hint))
        return _Fail()

    def emit(self, indent: int, line: str) -> None:
        self.lines.append("    " * indent + line)

    def site(self, pos: Pos, name: str) -> str:
        """The bound :class:`ActionSite` of an action at ``pos``."""
        return self.bind(ActionSite(self.resolver.route, pos[0], pos[1], name), "D")

    def new_tmp(self, prefix: str) -> str:
        self.tmp += 1
        return f"{prefix}{self.tmp}"

    # -- driver --------------------------------------------------------------
    def compile(self) -> Routes:
        routes = self.script.routes
        for r in routes:
            key = (r.kind, r.name)
            if key in self.route_names:
                self.errors.append(CfgError.at(
                    r.pos, f"route block {_route_label(r.kind, r.name)} is defined twice"))
                continue
            self.route_names[key] = f"R{len(self.route_names)}"
            if r.kind == "route":
                self.named[r.name] = r
        done: set[tuple[str, str]] = set()
        for r in routes:
            key = (r.kind, r.name)
            if key in done:
                continue
            done.add(key)
            self.current = key
            self.stop = "raise EXIT" if r.kind == "route" and r.name else "return 0"
            self.uses[key] = []
            self.calls[key] = set()
            self.resolver.route = _cfg_route_name(r.kind, r.name)
            self.emit(0, f"def {self.route_names[key]}(ctx):")
            self.block(r.body, 1)
            self.emit(1, "return 1")
        self.check_route_types()
        source = "\n".join(self.lines) + "\n"
        code = compile(source, "<ser routing script>", "exec")
        exec(code, self.ns)
        table = {key: self.ns[name] for key, name in self.route_names.items()}
        return Routes(table, source)

    def check_route_types(self) -> None:
        types: dict[tuple[str, str], RouteType] = {}
        for key in self.route_names:
            types[key] = ROUTE_KIND_TYPE.get(key[0], RouteType(0))
        changed = True
        while changed:
            changed = False
            for key, callees in self.calls.items():
                for name in callees:
                    ck = ("route", name)
                    if ck in types and types[ck] | types[key] != types[ck]:
                        types[ck] |= types[key]
                        changed = True
        for key, uses in self.uses.items():
            t = types.get(key, RouteType(0))
            for fn, pos in uses:
                bad = t & ~fn.routes
                if bad:
                    where = ", ".join(n for rt, n in ROUTE_TYPE_NAMES.items() if bad & rt)
                    self.errors.append(CfgError.at(
                        pos, f"function '{fn.name}' cannot be used in {where}"))

    # -- statements ----------------------------------------------------------
    def block(self, block: ast.Block, ind: int) -> None:
        n = len(self.lines)
        for stmt in block.stmts:
            self.statement(stmt, ind)
        if len(self.lines) == n:
            self.emit(ind, "pass")

    def statement(self, st: ast.Stmt, ind: int) -> None:
        mark = len(self.lines)
        try:
            self._statement(st, ind)
        except _Fail:
            del self.lines[mark:]
            self.emit(ind, "pass")

    def _statement(self, st: ast.Stmt, ind: int) -> None:
        name = _ACTION_NAMES.get(type(st))
        if self.hook is not None and name is not None:
            self.emit(ind, f"_dbg(ctx, {self.site(st.pos, name)})")
        if isinstance(st, ast.ExprStmt):
            code = self.call(st.expr, statement=True)
            self.emit(ind, f"_r = {code}")
            self.emit(ind, "ctx.retcode = _r")
            self.emit(ind, f"if _r == 0: {self.stop}")
        elif isinstance(st, ast.Assign):
            self.assign(st, ind)
        elif isinstance(st, ast.If):
            cond = self.hoisted_cond(st.cond, ind)
            self.emit(ind, f"if {cond}:")
            self.block(st.then, ind + 1)
            if st.else_ is not None:
                self.emit(ind, "else:")
                self.block(st.else_, ind + 1)
        elif isinstance(st, ast.Block):
            for s in st.stmts:
                self.statement(s, ind)
        elif isinstance(st, ast.Exit):
            self.emit(ind, self.stop)
        elif isinstance(st, ast.Drop):
            self.emit(ind, "ctx.dropped = True")
            self.emit(ind, self.stop)
        elif isinstance(st, ast.Return):
            if st.value is None:
                self.emit(ind, "return 1")
            else:
                code, typ = self.expr(st.value)
                self.emit(ind, f"return {code if typ in ('int', 'call') else f'_int({code})'}")
        elif isinstance(st, ast.Break):
            if not self.loop_depth:
                raise self.fail(st.pos, "'break' outside of switch or while",
                                "use 'return' to leave a route")
            self.emit(ind, "break")
        elif isinstance(st, ast.While):
            cond = self.cond(st.cond)
            w = self.new_tmp("_w")
            self.emit(ind, f"{w} = 0")
            self.emit(ind, f"while {cond}:")
            self.emit(ind + 1, f"{w} += 1")
            self.emit(ind + 1, f"if {w} > {self.max_while}: break")
            self.loop_depth += 1
            try:
                self.block(st.body, ind + 1)
            finally:
                self.loop_depth -= 1
        elif isinstance(st, ast.Switch):
            self.switch(st, ind)
        else:   # pragma: no cover - the parser makes no other statements
            raise self.fail(st.pos, f"cannot compile {type(st).__name__}")

    def assign(self, st: ast.Assign, ind: int) -> None:
        ref = self.pv(st.target)
        if not ref.writable:
            raise self.fail(st.pos, f"pseudo-variable '{st.target.raw}' is read-only")
        code, _ = self.expr(st.value)
        s = self.bind(ref.decl.set, "S")
        n = self.bind_const(ref.pname)
        if st.op == "+=":
            g = self.bind(ref.decl.get, "G")
            code = f"_add({g}(ctx, {n}), {code})"
        self.emit(ind, f"{s}(ctx, {n}, {code})")
        if self.assigned is not None:
            g = self.bind(ref.decl.get, "G")
            self.emit(ind, f"_dbga(ctx, {self.site(st.pos, st.target.raw)}, {g}, {n})")

    def bind_const(self, value: Any) -> str:
        if value is None or isinstance(value, int | str):
            return repr(value)
        return self.bind(value)

    def switch(self, st: ast.Switch, ind: int) -> None:
        code, _ = self.expr(st.expr)
        table: dict[Any, int] = {}
        default = len(st.cases)
        for i, case in enumerate(st.cases):
            if case.value is None:
                default = i
                continue
            v = case.value
            val: Any = v.value if isinstance(v, ast.Int | ast.Str) else (
                -v.operand.value if isinstance(v, ast.UnOp) and isinstance(v.operand, ast.Int)
                else None)
            if val is None:
                raise self.fail(v.pos, "a case label must be a number or a string")
            if val in table:
                self.errors.append(CfgError.at(v.pos, f"duplicate case {val!r}"))
            table.setdefault(val, i)
        t = self.bind(table, "T")
        idx = self.new_tmp("_i")
        self.emit(ind, f"{idx} = _switch_index({t}, {code}, {default})")
        self.emit(ind, "while True:")
        self.loop_depth += 1
        try:
            for i, case in enumerate(st.cases):
                self.emit(ind + 1, f"if {idx} <= {i}:")
                self.block(ast.Block(case.body, case.pos), ind + 2)
        finally:
            self.loop_depth -= 1
        self.emit(ind + 1, "break")

    def hoisted_cond(self, e: ast.Expr, ind: int) -> str:
        """The condition of an if; a call that is the whole condition (or its
        negation) runs as a statement before it, saving a helper call."""
        neg = False
        inner = e
        if isinstance(inner, ast.UnOp) and inner.op == "!":
            neg, inner = True, inner.operand
        if not isinstance(inner, ast.Call):
            return self.cond(e)
        code = self.call(inner, statement=True)
        self.emit(ind, f"_r = {code}")
        self.emit(ind, "ctx.retcode = _r")
        self.emit(ind, f"if _r == 0: {self.stop}")
        return "_r <= 0" if neg else "_r > 0"

    # -- expressions ---------------------------------------------------------
    def cond(self, e: ast.Expr) -> str:
        code, typ = self.expr(e)
        return self.as_bool(code, typ)

    @staticmethod
    def as_bool(code: str, typ: str) -> str:
        if typ == "bool":
            return code
        if typ in ("int", "call"):
            return f"({code}) > 0"
        if typ == "str":
            return f"bool({code})"
        return f"_truth({code})"

    def expr(self, e: ast.Expr) -> tuple[str, str]:
        if isinstance(e, ast.Int):
            return repr(e.value), "int"
        if isinstance(e, ast.Str):
            return repr(e.value), "str"
        if isinstance(e, ast.Null):
            return "None", "any"
        if isinstance(e, ast.PV):
            return self.pv_get(e), "any"
        if isinstance(e, ast.Keyword):
            if e.name == "myself":
                raise self.fail(e.pos, "'myself' can only be compared with == or != "
                                "(uri==myself, src_ip==myself)")
            if e.name not in _KW_VALUES:
                raise self.fail(e.pos, f"'{e.name}' is not supported in ser yet")
            return _KW_VALUES[e.name]
        if isinstance(e, ast.IPNet):
            return repr(e.text), "str"
        if isinstance(e, ast.Name):
            raise self.fail(e.pos, f"unknown name '{e.value}' in expression",
                            did_you_mean(e.value, list(KEYWORDS) + list(self.functions)))
        if isinstance(e, ast.Call):
            return self.call(e), "call"
        if isinstance(e, ast.Defined):
            return f"({self.pv_get(e.pv)} is not None)", "bool"
        if isinstance(e, ast.UnOp):
            code, typ = self.expr(e.operand)
            if e.op == "!":
                return f"(not {self.as_bool(code, typ)})", "bool"
            conv = code if typ == "int" else f"_int({code})"
            return f"({e.op}{conv})", "int"
        if isinstance(e, ast.BinOp):
            return self.binop(e)
        raise self.fail(e.pos, "cannot compile this expression")  # pragma: no cover

    def binop(self, e: ast.BinOp) -> tuple[str, str]:
        op = e.op
        if op in ("&&", "||"):
            a = self.cond(e.left)
            b = self.cond(e.right)
            return f"({a} {'and' if op == '&&' else 'or'} {b})", "bool"
        if op in ("==", "!="):
            code = self.equality(e)
            return (code if op == "==" else f"(not {code})"), "bool"
        if op in ("=~", "!~"):
            a, _ = self.expr(e.left)
            if isinstance(e.right, ast.Str):
                try:
                    rx = re.compile(e.right.value, re.IGNORECASE)
                except re.error as err:
                    raise self.fail(e.right.pos, f"bad regular expression: {err}") from None
                code = f"({self.bind(rx, 'X')}.search(_s({a})) is not None)"
            else:
                b, _ = self.expr(e.right)
                code = f"_match({a}, {b})"
            return (code if op == "=~" else f"(not {code})"), "bool"
        a, ta = self.expr(e.left)
        b, tb = self.expr(e.right)
        if op in _CMP_OPS:
            if ta == tb and ta in ("int", "str"):
                return f"({a} {op} {b})", "bool"
            return f"(_cmp({a}, {b}) {op} 0)", "bool"
        if op == "+":
            if ta == "str":
                return f"({a} + {b if tb == 'str' else f'_s({b})'})", "str"
            if ta in ("int", "call") and tb in ("int", "call"):
                return f"({a} + {b})", "int"
            return f"_add({a}, {b})", "any"
        if op in _INT_OPS:
            a = a if ta in ("int", "call") else f"_int({a})"
            b = b if tb in ("int", "call") else f"_int({b})"
            return f"({a} {op} {b})", "int"
        if op == "/":
            return f"_div({a}, {b})", "int"
        if op == "%":
            return f"_mod({a}, {b})", "int"
        raise self.fail(e.pos, f"unknown operator '{op}'")  # pragma: no cover

    def equality(self, e: ast.BinOp) -> str:
        left, right = e.left, e.right
        if isinstance(left, ast.IPNet) or (isinstance(left, ast.Keyword)
                                           and left.name == "myself"):
            left, right = right, left
        if isinstance(right, ast.Keyword) and right.name == "myself":
            if not isinstance(left, ast.Keyword):
                a, _ = self.expr(left)
                return f"_uri_myself(ctx, _s({a}))"
            if left.name in ("uri", "from_uri", "to_uri"):
                a, _ = self.expr(left)
                return f"_uri_myself(ctx, {a})"
            if left.name in ("src_ip", "dst_ip"):
                return f"ctx.rt.is_myself({_KW_VALUES[left.name][0]})"
            raise self.fail(right.pos, f"'{left.name}' cannot be compared with myself")
        if isinstance(right, ast.Null):
            a, _ = self.expr(left)
            return f"({a} is None)"
        if isinstance(left, ast.Null):
            b, _ = self.expr(right)
            return f"({b} is None)"
        if isinstance(right, ast.IPNet):
            net = right.net
            a, _ = self.expr(left)
            full = net.prefixlen == net.max_prefixlen
            is_ipkw = isinstance(left, ast.Keyword) and left.name in ("src_ip", "dst_ip")
            if full and net.version == 4 and is_ipkw:
                return f"({a} == {str(net.network_address)!r})"
            if is_ipkw:
                assert isinstance(left, ast.Keyword)
                getter = "ctx.src_addr()" if left.name == "src_ip" else "ctx.dst_addr()"
                if net.version == 4 and left.name == "src_ip":
                    mask = int(net.netmask) | (1 << 32)
                    return f"((ctx.src4() & {mask}) == {int(net.network_address)})"
                if full:
                    return f"({getter} == {self.bind(net.network_address, 'A')})"
                return f"({getter} in {self.bind(net, 'N')})"
            return f"_ip_in({a}, {self.bind(net, 'N')})"
        if isinstance(left, ast.Keyword) and left.name in ("src_ip", "dst_ip"):
            a, _ = self.expr(left)
            b, tb = self.expr(right)
            if tb == "str" and isinstance(right, ast.Str):
                try:
                    addr = ipaddress.ip_address(right.value)
                except ValueError:
                    return f"({a} == {b})"
                if addr.version == 4:
                    return f"({a} == {str(addr)!r})"
            return f"_ip_eq_str({a}, {b})"
        if isinstance(left, ast.Keyword) and left.name == "method" and isinstance(right, ast.Str):
            return f"(ctx.msg.method.upper() == {right.value.upper()!r})"
        a, ta = self.expr(left)
        b, tb = self.expr(right)
        if ta == tb and ta in ("int", "str"):
            return f"({a} == {b})"
        if ta == "call" and tb == "int":
            return f"({a} == {b})"
        return f"_eq({a}, {b})"

    # -- pseudo-variables ----------------------------------------------------
    def pv(self, pv: ast.PV) -> PVRef:
        try:
            return self.resolver.resolve(pv)
        except CfgError as e:
            self.errors.append(e)
            raise _Fail() from None

    def pv_get(self, pv: ast.PV) -> str:
        ref = self.pv(pv)
        if ref.transforms:
            return f"{self.bind(ref, 'P')}.get(ctx)"
        if ref.decl.inline is not None:
            return "(" + ref.decl.inline.format(name=self.bind_const(ref.pname)) + ")"
        return f"{self.bind(ref.decl.get, 'G')}(ctx, {self.bind_const(ref.pname)})"

    # -- calls ---------------------------------------------------------------
    def call(self, c: ast.Call, statement: bool = False) -> str:
        if c.name == "route":
            return self.route_call(c, statement)
        fn = self.functions.get(c.name)
        if fn is None:
            raise self.fail(c.pos, f"unknown function '{c.name}'",
                            did_you_mean(c.name, list(self.functions) + list(KEYWORDS)))
        n = len(c.args)
        if not fn.min_args <= n <= len(fn.args):
            want = (str(len(fn.args)) if fn.min_args == len(fn.args)
                    else f"{fn.min_args} to {len(fn.args)}")
            raise self.fail(c.pos, f"function '{c.name}' takes {want} argument"
                            f"{'' if want == '1' else 's'}, got {n}")
        fixed = [self.fix_arg(fn, i, a) for i, a in enumerate(c.args)]
        if fn.fixup is not None:
            try:
                fixed = fn.fixup(fixed)
            except FixupError as err:
                pos = c.args[err.arg].pos if err.arg is not None and err.arg < n else c.pos
                raise self.fail(pos, f"{c.name}: {err}") from None
        self.uses[self.current].append((fn, c.pos))
        args = ["ctx"]
        for fa in fixed:
            if fa.is_const:
                args.append(self.bind_const(fa.const))
            else:
                args.append(f"{self.bind(fa.get, 'A')}(ctx)")
        code = self.traced(c, f"{self.bind(fn.call, 'F')}({', '.join(args)})")
        return code if statement else f"_ret(ctx, {code})"

    def route_call(self, c: ast.Call, statement: bool) -> str:
        if len(c.args) != 1:
            raise self.fail(c.pos, f"route() takes 1 argument, got {len(c.args)}")
        a = c.args[0]
        if isinstance(a, ast.Name | ast.Str | ast.Int):
            name = str(a.value)
        else:
            raise self.fail(a.pos, "route() needs the name of a route block")
        if name not in self.named:
            raise self.fail(a.pos, f"route '{name}' is not defined",
                            did_you_mean(name, self.named))
        self.calls[self.current].add(name)
        code = self.traced(c, f"{self.route_names[('route', name)]}(ctx)")
        return code if statement else f"_ret(ctx, {code})"

    def traced(self, c: ast.Call, code: str) -> str:
        """A call with the action hook run first (the hook returns None)."""
        return code if self.hook is None else f"(_dbg(ctx, {self.site(c.pos, c.name)}) or {code})"

    def fix_arg(self, fn: Function, i: int, a: ast.Expr) -> FixedArg:
        spec = fn.args[i]
        kind = spec.kind
        text = getattr(a, "raw", None) or str(getattr(a, "value", ""))
        if kind == "pv":
            if isinstance(a, ast.Str) and a.value.startswith("$") \
                    and scan_pv(a.value, 0) == len(a.value):
                # "$var(x)" quoted, as Kamailio's configs write variable arguments
                try:
                    ref = self.resolver.parse_text(a.value, a.pos)
                except CfgError as e:
                    self.errors.append(e)
                    raise _Fail() from None
                return FixedArg(const=ref, pos=a.pos, text=text)
            if not isinstance(a, ast.PV):
                raise self.fail(a.pos, f"argument {i + 1} of '{fn.name}' must be a "
                                "pseudo-variable")
            return FixedArg(const=self.pv(a), pos=a.pos, text=text)
        if kind == "const":
            if isinstance(a, ast.Str | ast.Name | ast.Int):
                return FixedArg(const=str(a.value), pos=a.pos, text=text)
            raise self.fail(a.pos, f"argument {i + 1} of '{fn.name}' must be a literal")
        if isinstance(a, ast.Int):
            return FixedArg(const=a.value if kind == "int" else str(a.value), pos=a.pos,
                            text=text)
        if isinstance(a, ast.Name):
            if kind == "int":
                raise self.fail(a.pos, f"argument {i + 1} of '{fn.name}' must be a number")
            return FixedArg(const=a.value, pos=a.pos, text=text)
        if isinstance(a, ast.Str):
            try:
                fmt = self.resolver.format(a.value, a.pos)
            except CfgError as e:
                self.errors.append(e)
                raise _Fail() from None
            if fmt.const is not None:
                if kind == "int":
                    try:
                        return FixedArg(const=int(fmt.const.strip(), 0), pos=a.pos, text=text)
                    except ValueError:
                        raise self.fail(a.pos, f"argument {i + 1} of '{fn.name}' must be a "
                                        f"number, got \"{fmt.const}\"") from None
                return FixedArg(const=fmt.const, pos=a.pos, text=text)
            if kind == "int":
                return FixedArg(get=_as_int(fmt.render), pos=a.pos, text=text)
            return FixedArg(get=fmt.render, pos=a.pos, text=text)
        if isinstance(a, ast.PV):
            ref = self.pv(a)
            if kind == "int":
                return FixedArg(get=_as_int(ref.get), pos=a.pos, text=text)
            return FixedArg(get=_as_str(ref.get), pos=a.pos, text=text)
        # any other expression: evaluated per call
        code, _ = self.expr(a)
        getter = eval(f"lambda ctx: {code}", self.ns)   # noqa: S307 - our own generated code
        if kind == "int":
            return FixedArg(get=_as_int(getter), pos=a.pos, text=text)
        return FixedArg(get=_as_str(getter), pos=a.pos, text=text)


# the statements traced by the action hook as themselves; a call statement is
# traced by its call (``n=`` is the function's name, as Kamailio's cfgtrace)
_ACTION_NAMES: dict[type, str] = {
    ast.Assign: "assign", ast.If: "if", ast.Switch: "switch", ast.While: "while",
    ast.Return: "return", ast.Exit: "exit", ast.Drop: "drop", ast.Break: "break",
}


def _as_int(get: Callable[[Context], Any]) -> Callable[[Context], int]:
    return lambda ctx: _int(get(ctx))


def _as_str(get: Callable[[Context], Any]) -> Callable[[Context], str]:
    return lambda ctx: _s(get(ctx))


def _route_label(kind: str, name: str) -> str:
    base = {"request": "request_route", "route": "route", "failure": "failure_route",
            "onreply": "onreply_route", "reply": "reply_route", "branch": "branch_route",
            "onsend": "onsend_route", "event": "event_route"}[kind]
    return f"{base}[{name}]" if name else base


_DEFAULT_ROUTE_NAMES = {
    "request": "DEFAULT_ROUTE", "onreply": "DEFAULT_ONREPLY", "reply": "DEFAULT_ONREPLY",
    "failure": "DEFAULT_FAILURE", "branch": "DEFAULT_BRANCH", "onsend": "DEFAULT_SEND",
    "event": "DEFAULT_EVENT", "route": "DEFAULT_ROUTE",
}


def _cfg_route_name(kind: str, name: str) -> str:
    """The route block name $cfg(route) gives, as Kamailio names them."""
    return name or _DEFAULT_ROUTE_NAMES[kind]


def compile_script(script: ast.Script, modules: list[Module], resolver: PVResolver,
                   max_while_loops: int = 100,
                   hooks: ScriptHooks | None = None) -> tuple[Routes, list[CfgError]]:
    c = Compiler(script, modules, resolver, max_while_loops, hooks)
    routes = c.compile()
    return routes, c.errors
