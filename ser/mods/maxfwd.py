"""maxfwd: the Max-Forwards header (Kamailio's maxfwd module, RFC 3261 16.6 step 3).

``mf_process_maxfwd_header(max)`` adds ``Max-Forwards: max`` to a request
that has none (2), or writes the received value minus one (1) — capped at
``max_limit`` — as a recorded edit; a received 0 gives -1 (the script
answers 483 Too Many Hops) and an unreadable value -2. The value this
message will leave with is kept in ``ctx.cache`` so that ``is_maxfwd_lt``
sees a header added or decremented earlier in the same script run.
"""

from __future__ import annotations

from typing import Any

from ser.core.module import Arg, FixedArg, FixupError, Function, Module, Param, RouteType

R = RouteType
MAX_VALUE = 255            # RFC 3261 20.22: 0..255 in practice; Kamailio allows 256
_KEY = "maxfwd"


def _value_fixup(args: list[FixedArg]) -> list[FixedArg]:
    a = args[0]
    if a.is_const and not 0 <= int(a.const) <= 256:
        raise FixupError(f"bad Max-Forwards value {a.const} (0..256)", 0)
    return args


def received_value(msg: Any) -> int | None:
    """The request's Max-Forwards as a number; None when absent; -1 when unreadable."""
    raw = msg.header("max-forwards")
    if raw is None:
        return None
    raw = raw.strip()
    if not raw.isascii() or not raw.isdigit() or len(raw) > 3 or int(raw) > 256:
        return -1
    return int(raw)


def process_maxfwd(ctx: Any, max_value: int) -> int:
    msg = ctx.msg
    if not msg.is_request:
        return -2
    done = ctx.cache.get(_KEY)
    if done is not None:          # already processed in this run: nothing more to do
        return 2 if done[1] else 1
    value = received_value(msg)
    if value is None:
        if not 0 <= int(max_value) <= 256:
            return -2
        msg.add_header("Max-Forwards", str(int(max_value)))
        ctx.cache[_KEY] = (int(max_value), True)
        return 2
    if value < 0:
        return -2
    if value == 0:
        return -1
    new = value - 1
    inst = ctx.rt.modules.get("maxfwd")
    limit = int(inst.params.get("max_limit", 70)) if inst is not None else 70
    if limit and new > limit:
        new = limit
    msg.replace_header("Max-Forwards", str(new))
    ctx.cache[_KEY] = (new, False)
    return 1


def is_maxfwd_lt(ctx: Any, max_value: int) -> int:
    done = ctx.cache.get(_KEY)
    if done is not None:
        value = done[0]
    else:
        value = received_value(ctx.msg) if ctx.msg.is_request else None
        if value is None:
            return -2
        if value < 0:
            return -3
    return 1 if value < int(max_value) else -1


def _limit(v: Any) -> str | None:
    return None if 1 <= int(v) <= 256 else "must be 1..256"


_value = (Arg("max_value", "int", doc="value to add when the header is missing"),)
_lt = (Arg("max_value", "int", doc="the value to compare with"),)
_process_doc = ("Add Max-Forwards (value max_value) when missing (2), else decrement it "
                "(1); -1 when it is 0 (answer 483), -2 on a bad value.")
_lt_doc = ("True when the Max-Forwards value (as received, or as set by "
           "mf_process_maxfwd_header) is less than max_value; -2 without the header, "
           "-3 on a bad value.")

exports = Module(
    name="maxfwd",
    doc="The Max-Forwards header: add, decrement, check (loop protection).",
    params=(
        Param("max_limit", int, 70,
              "Upper limit of the decremented value; a higher one is lowered to it.",
              _limit),
    ),
    functions=tuple(
        [Function(name, process_maxfwd, _value, R.REQUEST, _value_fixup, _process_doc)
         for name in ("mf_process_maxfwd_header", "maxfwd_process", "process_maxfwd")]
        + [Function(name, is_maxfwd_lt, _lt, R.REQUEST | R.FAILURE | R.BRANCH, _value_fixup,
                    _lt_doc)
           for name in ("is_maxfwd_lt", "maxfwd_at_least", "mf_lowlimit")]),
)
