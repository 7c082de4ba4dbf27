"""sl: stateless replies (Kamailio's sl module).

STUB until the transport layer exists: the functions record the reply they
were asked to send in ``ctx.actions`` as ``("reply", code, reason)``.
"""

from __future__ import annotations

from typing import Any

from ser.core.module import Arg, FixedArg, FixupError, Function, Module, Param, RouteType

R = RouteType


def _code_fixup(args: list[FixedArg]) -> list[FixedArg]:
    code = args[0]
    if code.is_const and not 100 <= int(code.const) <= 699:
        raise FixupError(f"bad reply code {code.const} (100..699)", 0)
    return args


def sl_send_reply(ctx: Any, code: int, reason: str) -> int:
    ctx.actions.append(("reply", code, reason))   # STUB: recorded, not sent yet
    return 1


def sl_reply_error(ctx: Any) -> int:
    ctx.actions.append(("reply", 500, "Server Internal Error"))   # STUB
    return 1


def send_reply(ctx: Any, code: int, reason: str) -> int:
    ctx.actions.append(("reply", code, reason))   # STUB: stateful when a transaction exists
    return 1


_reply = (Arg("code", "int", doc="SIP status code"), Arg("reason", doc="reason phrase"))

exports = Module(
    name="sl",
    doc="Stateless replies.",
    params=(
        Param("bind_tm", int, 1, "Use tm to send a reply when a transaction exists."),
        Param("default_code", int, 500, "Code of sl_reply_error when none is known."),
        Param("default_reason", str, "Internal Server Error", "Reason of sl_reply_error."),
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
