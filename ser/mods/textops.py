"""textops: operations on the message text (Kamailio's textops module).

``is_method`` and ``is_present_hf`` are real; ``append_hf`` and ``remove_hf``
use the recorded-edit API of the message (``add_header``/``remove_header``).
"""

from __future__ import annotations

from typing import Any

from ser.core.module import Arg, FixedArg, FixupError, Function, Module, RouteType

R = RouteType


def _methods_fixup(args: list[FixedArg]) -> list[FixedArg]:
    a = args[0]
    if a.is_const:
        methods = frozenset(m.strip().upper() for m in str(a.const).split("|") if m.strip())
        if not methods:
            raise FixupError("no method given", 0)
        return [FixedArg(const=methods, pos=a.pos, text=a.text)]
    get = a.get
    assert get is not None

    def methods_of(ctx: Any) -> frozenset[str]:
        return frozenset(m.strip().upper() for m in str(get(ctx)).split("|"))
    return [FixedArg(get=methods_of, pos=a.pos, text=a.text)]


def is_method(ctx: Any, methods: frozenset[str]) -> int:
    return 1 if ctx.msg.method.upper() in methods else -1


def is_present_hf(ctx: Any, name: str) -> int:
    return 1 if ctx.msg.header(name) is not None else -1


def append_hf(ctx: Any, text: str, after: str = "") -> int:
    name, _, value = text.rstrip("\r\n").partition(":")
    ctx.msg.add_header(name.strip(), value.strip())
    return 1


def remove_hf(ctx: Any, name: str) -> int:
    if ctx.msg.header(name) is None:
        return -1
    ctx.msg.remove_header(name)
    return 1


exports = Module(
    name="textops",
    doc="Operations on the message text.",
    functions=(
        Function("is_method", is_method, (Arg("methods"),), fixup=_methods_fixup,
                 doc="True if the method is one of \"A|B|C\"."),
        Function("is_present_hf", is_present_hf, (Arg("name"),),
                 doc="True if the message has the header."),
        Function("append_hf", append_hf, (Arg("text"), Arg("after", optional=True)),
                 R.REQUEST | R.FAILURE | R.ONREPLY | R.BRANCH,
                 doc="Append a header (\"Name: value\\r\\n\")."),
        Function("remove_hf", remove_hf, (Arg("name"),),
                 R.REQUEST | R.FAILURE | R.ONREPLY | R.BRANCH,
                 doc="Remove every header of that name."),
    ),
)
