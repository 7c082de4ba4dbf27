"""sl: stateless replies (Kamailio's sl module).

Replies are built from the request (ser.core.parser.build_reply) and sent
back the way the request came (ser.core.receive.Core.reply). Outside a worker
(no ``ctx.rt.core``: unit tests of the script) the reply is recorded in
``ctx.actions`` as ``("reply", code, reason)``.
"""

from __future__ import annotations

from typing import Any

from ser.core.log import log
from ser.core.module import Arg, FixedArg, FixupError, Function, Module, Param, RouteType
from ser.core.parser import ProtocolError

R = RouteType


def _code_fixup(args: list[FixedArg]) -> list[FixedArg]:
    code = args[0]
    if code.is_const and not 100 <= int(code.const) <= 699:
        raise FixupError(f"bad reply code {code.const} (100..699)", 0)
    return args


def sl_send_reply(ctx: Any, code: int, reason: str) -> int:
    core = ctx.rt.core
    if core is None:
        ctx.actions.append(("reply", code, reason))
        return 1
    try:
        return 1 if core.reply(ctx, int(code), reason) else -1
    except (ProtocolError, ValueError) as e:
        # a request without a readable Via or To cannot be answered; raised
        # into the route, the receive loop would try to answer it again (and fail
        # again, killing the worker)
        log.warning("sl_send_reply: cannot answer %s from %s:%s: %s", ctx.msg.method,
                    ctx.src_ip, ctx.src_port, getattr(e, "reason", e))
        return -1


def sl_reply_error(ctx: Any) -> int:
    params = ctx.rt.modules["sl"].params if "sl" in ctx.rt.modules else {}
    return sl_send_reply(ctx, int(params.get("default_code", 500)),
                         str(params.get("default_reason", "Server Internal Error")))


def send_reply(ctx: Any, code: int, reason: str) -> int:
    """Statefully through tm's exported ``t_reply`` when the message has a
    transaction (and ``bind_tm`` is on), statelessly otherwise."""
    tm = ctx.rt.modules.get("tm")
    sl = ctx.rt.modules.get("sl")
    bind = sl is None or sl.params.get("bind_tm", 1)
    if tm is not None and bind and ctx.cache.get("tm_txn") is not None:
        t_reply = tm.decl.function("t_reply")
        if t_reply is not None:
            return t_reply.call(ctx, int(code), reason)
    return sl_send_reply(ctx, code, reason)


_reply = (Arg("code", "int", doc="SIP status code"), Arg("reason", doc="reason phrase"))

exports = Module(
    name="sl",
    doc="Stateless replies.",
    params=(
        Param("bind_tm", int, 1, "Use tm to send a reply when a transaction exists."),
        Param("default_code", int, 500, "Code of sl_reply_error when none is known."),
        Param("default_reason", str, "Server Internal Error", "Reason of sl_reply_error."),
    ),
    functions=(
        Function("sl_send_reply", sl_send_reply, _reply, R.REQUEST, _code_fixup,
                 "Send a reply statelessly."),
        Function("sl_reply_error", sl_reply_error, (), R.REQUEST,
                 doc="Reply with the code and reason of the last internal error."),
        Function("send_reply", send_reply, _reply, R.REQUEST | R.FAILURE, _code_fixup,
                 "Reply statefully when a transaction exists, statelessly otherwise."),
    ),
)
