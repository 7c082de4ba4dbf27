"""Functions of the script that belong to the core (no loadmodule needed).

Declared with the same :class:`ser.core.module.Module` API as modules. Outside
a worker process (no ``ctx.rt.core``: unit tests) ``forward`` records what it
was asked to do in ``ctx.actions``.
"""

from __future__ import annotations

from typing import Any

from ser.core.corerpc import CORE_RPC
from ser.core.module import Arg, FixedArg, FixupError, Function, Module, RouteType

R = RouteType


def _flag_fixup(args: list[FixedArg]) -> list[FixedArg]:
    for i, a in enumerate(args):
        if a.is_const and not 0 <= int(a.const) <= 31:
            raise FixupError(f"flag {a.const} out of range 0..31", i)
    return args


def setflag(ctx: Any, flag: int) -> int:
    ctx.flags |= 1 << flag
    return 1


def resetflag(ctx: Any, flag: int) -> int:
    ctx.flags &= ~(1 << flag)
    return 1


def isflagset(ctx: Any, flag: int) -> int:
    return 1 if ctx.flags & (1 << flag) else -1


def setbflag(ctx: Any, flag: int, branch: int = 0) -> int:
    ctx.bflags |= 1 << flag
    return 1


def resetbflag(ctx: Any, flag: int, branch: int = 0) -> int:
    ctx.bflags &= ~(1 << flag)
    return 1


def isbflagset(ctx: Any, flag: int, branch: int = 0) -> int:
    return 1 if ctx.bflags & (1 << flag) else -1


def _option(name: str, doc: str) -> Function:
    def call(ctx: Any) -> int:
        ctx.options[name] = True
        return 1
    return Function(name, call, doc=doc)


def forward(ctx: Any, host: str = "", port: int = 0) -> int:
    core = ctx.rt.core
    if core is None:                 # compiled but not running in a worker (tests, ser -c)
        ctx.actions.append(("forward", host, port))
        return 1
    return 1 if core.forward(ctx, host, port) else -1


def _set_ruri(ctx: Any, uri: str) -> int:
    ctx.ruri = uri
    if hasattr(ctx.msg, "set_ruri"):
        ctx.msg.set_ruri(uri)
    return 1


def setdsturi(ctx: Any, uri: str) -> int:
    ctx.dst_uri = uri
    return 1


def resetdsturi(ctx: Any) -> int:
    ctx.dst_uri = None
    return 1


def isdsturiset(ctx: Any) -> int:
    return 1 if ctx.dst_uri else -1


def force_tcp_alias(ctx: Any, port: int = 0) -> int:
    """Make ``port`` of the sender (default: its top Via port) reach it over the
    stream connection this request came in on, so that a later request to
    that address reuses the connection instead of opening a new one."""
    rcv = ctx.rcv
    if rcv is None or rcv.conn is None or rcv.proto not in ("tcp", "tls"):
        return -1
    if not port:
        via = getattr(ctx.msg, "via", None)
        port = via.port if via is not None and via.port else (5061 if rcv.proto == "tls"
                                                                else 5060)
    if not 0 < port < 65536:
        return -1
    core = ctx.rt.core
    alias = getattr(core, "tcp_alias", None) if core is not None else None
    if alias is None:
        return -1
    alias(rcv.conn, port)
    return 1


_flag = (Arg("flag", "int"),)
_bflag = (Arg("flag", "int"), Arg("branch", "int", optional=True))

exports = Module(
    name="core",
    doc="Functions of the core.",
    rpc=CORE_RPC,
    functions=(
        Function("setflag", setflag, _flag, fixup=_flag_fixup, doc="Set a message flag."),
        Function("resetflag", resetflag, _flag, fixup=_flag_fixup, doc="Reset a message flag."),
        Function("isflagset", isflagset, _flag, fixup=_flag_fixup,
                 doc="True if a message flag is set."),
        Function("setbflag", setbflag, _bflag, fixup=_flag_fixup, doc="Set a branch flag."),
        Function("resetbflag", resetbflag, _bflag, fixup=_flag_fixup,
                 doc="Reset a branch flag."),
        Function("isbflagset", isbflagset, _bflag, fixup=_flag_fixup,
                 doc="True if a branch flag is set."),
        _option("force_rport", "Add rport to the Via header (RFC 3581) as if the "
                "client had asked for it."),
        _option("add_local_rport", "Add rport to the Via header ser adds."),
        _option("set_reply_no_connect", "Do not open a new connection to send the reply."),
        _option("set_forward_no_connect", "Do not open a new connection to forward."),
        _option("set_reply_close", "Close the connection after sending the reply."),
        _option("set_forward_close", "Close the connection after forwarding."),
        Function("force_tcp_alias", force_tcp_alias, (Arg("port", "int", optional=True),),
                 routes=R.REQUEST | R.FAILURE | R.BRANCH,
                 doc="Let the sender's port (default: its top Via port) reach it over the "
                     "TCP/TLS connection the request came in on; false on other transports."),
        Function("add_tcp_alias", force_tcp_alias, (Arg("port", "int", optional=True),),
                 routes=R.REQUEST | R.FAILURE | R.BRANCH, doc="Same as force_tcp_alias."),
        Function("forward", forward, (Arg("host", optional=True),
                                      Arg("port", "int", optional=True)),
                 routes=R.REQUEST | R.FAILURE | R.ONREPLY | R.BRANCH,
                 doc="Forward statelessly to the R-URI, the destination URI or host:port."),
        Function("rewriteuri", _set_ruri, (Arg("uri"),), doc="Set the R-URI."),
        Function("seturi", _set_ruri, (Arg("uri"),), doc="Same as rewriteuri."),
        Function("setdsturi", setdsturi, (Arg("uri"),), doc="Set the destination URI."),
        Function("resetdsturi", resetdsturi, doc="Clear the destination URI."),
        Function("isdsturiset", isdsturiset, doc="True if a destination URI is set."),
    ),
)
