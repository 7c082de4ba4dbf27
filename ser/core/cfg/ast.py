"""The syntax tree of a routing script: small frozen dataclasses.

Every node carries ``pos`` = (file, line, col) of its first token in the
original source. Nothing here knows about modules; names are resolved by
``load.py`` and turned into Python by ``compile.py``.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from ser.core.cfg.errors import Pos

# ----------------------------------------------------------------- expressions


@dataclass(frozen=True, slots=True)
class Str:
    value: str
    pos: Pos


@dataclass(frozen=True, slots=True)
class Int:
    value: int
    pos: Pos


@dataclass(frozen=True, slots=True)
class Null:
    pos: Pos


@dataclass(frozen=True, slots=True)
class Name:
    """A bare identifier used as a value (``route(RELAY)``, ``proto==TLS``)."""
    value: str
    pos: Pos


@dataclass(frozen=True, slots=True)
class IPNet:
    """An IPv4/IPv6 address or CIDR network literal (``10.1.1.0/24``, ``[::1]``)."""
    text: str
    net: ipaddress.IPv4Network | ipaddress.IPv6Network
    pos: Pos


@dataclass(frozen=True, slots=True)
class Transform:
    name: str                 # "s.len", "uri.user", ...
    args: tuple[str, ...]
    pos: Pos


@dataclass(frozen=True, slots=True)
class PV:
    """A pseudo-variable: ``$name``, ``$name(inner)[index]``, ``$(name...{tr})``."""
    raw: str
    name: str
    inner: str | None
    index: str | None
    transforms: tuple[Transform, ...]
    pos: Pos


@dataclass(frozen=True, slots=True)
class Keyword:
    """A core keyword operand: method, uri, status, src_ip, proto, af, myself..."""
    name: str
    pos: Pos


@dataclass(frozen=True, slots=True)
class BinOp:
    op: str
    left: Expr
    right: Expr
    pos: Pos


@dataclass(frozen=True, slots=True)
class UnOp:
    op: str                   # "!", "-", "~"
    operand: Expr
    pos: Pos


@dataclass(frozen=True, slots=True)
class Defined:
    pv: PV
    pos: Pos


@dataclass(frozen=True, slots=True)
class Call:
    """``name(args)``: a core or module function, or ``route(NAME)``."""
    name: str
    args: tuple[Expr, ...]
    pos: Pos


Expr = Str | Int | Null | Name | IPNet | PV | Keyword | BinOp | UnOp | Defined | Call

# ------------------------------------------------------------------ statements


@dataclass(frozen=True, slots=True)
class Assign:
    target: PV
    op: str                   # "=" or "+="
    value: Expr
    pos: Pos


@dataclass(frozen=True, slots=True)
class ExprStmt:
    expr: Call
    pos: Pos


@dataclass(frozen=True, slots=True)
class If:
    cond: Expr
    then: Block
    else_: Block | None
    pos: Pos


@dataclass(frozen=True, slots=True)
class Case:
    value: Expr | None        # None: default
    body: tuple[Stmt, ...]
    pos: Pos


@dataclass(frozen=True, slots=True)
class Switch:
    expr: Expr
    cases: tuple[Case, ...]
    pos: Pos


@dataclass(frozen=True, slots=True)
class While:
    cond: Expr
    body: Block
    pos: Pos


@dataclass(frozen=True, slots=True)
class Return:
    value: Expr | None
    pos: Pos


@dataclass(frozen=True, slots=True)
class Exit:
    pos: Pos


@dataclass(frozen=True, slots=True)
class Drop:
    pos: Pos


@dataclass(frozen=True, slots=True)
class Break:
    pos: Pos


@dataclass(frozen=True, slots=True)
class Block:
    stmts: tuple[Stmt, ...]
    pos: Pos


Stmt = Assign | ExprStmt | If | Switch | While | Return | Exit | Drop | Break | Block

# ------------------------------------------------------------------- top level


@dataclass(frozen=True, slots=True)
class GlobalParam:
    name: str
    value: object             # int | str | tuple (listen/alias); see parser._global_value
    text: str                 # the value as written (tokens joined)
    pos: Pos
    value_pos: Pos


@dataclass(frozen=True, slots=True)
class LoadModule:
    path: str
    pos: Pos


@dataclass(frozen=True, slots=True)
class ModParam:
    module: str
    name: str
    value: str | int
    pos: Pos
    name_pos: Pos
    value_pos: Pos


@dataclass(frozen=True, slots=True)
class Route:
    kind: str                 # "request", "route", "failure", "onreply", "branch",
                              # "onsend", "event", "reply"
    name: str                 # "" for request_route / reply_route / onsend_route
    body: Block
    pos: Pos


@dataclass(frozen=True, slots=True)
class Script:
    globals: tuple[GlobalParam, ...]
    loadmodules: tuple[LoadModule, ...]
    modparams: tuple[ModParam, ...]
    routes: tuple[Route, ...]
