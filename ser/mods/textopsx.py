"""textopsx: more operations on the message text (Kamailio's textopsx module).

``msg_apply_changes()`` serializes the message with its recorded edits and
parses the result into ``ctx.msg``, so that what follows in the script reads
the changed message (Kamailio re-parses its buffer the same way). No core
hook is needed: the context's message is replaced, and everything later
(replies, forwarding, pseudo-variables) uses ``ctx.msg``.
"""

from __future__ import annotations

import fnmatch as _fnmatch
import logging
import re
from typing import Any

from ser.core.cfg.runtime import EXIT
from ser.core.module import Arg, FixedArg, FixupError, Function, Module, RouteType
from ser.core.parser import ProtocolError, canonical_name, parse_message
from ser.core.posixre import posix_re

R = RouteType
log = logging.getLogger("ser.textopsx")

# headers keep_hf() never removes (Kamailio's list)
KEPT = frozenset(("via", "from", "to", "call-id", "cseq", "content-length", "content-type",
                  "max-forwards", "contact", "route", "record-route"))


def msg_apply_changes(ctx: Any) -> int:
    msg = ctx.msg
    if not msg.changed:
        return 1
    try:
        data = msg.serialize()
    except (ValueError, UnicodeError) as e:
        log.error("msg_apply_changes: cannot build the new message: %s", e)
        return -1
    try:
        ctx.msg = parse_message(data)
    except ProtocolError as e:
        # as in Kamailio: the message is no longer usable, the script stops
        log.error("msg_apply_changes: the new message does not parse: %s", e.reason)
        raise EXIT from None
    return 1


def remove_body(ctx: Any) -> int:
    msg = ctx.msg
    if not msg.body:
        return -1
    msg.set_body(b"")
    return 1


def _keep_fixup(args: list[FixedArg]) -> list[FixedArg]:
    if not args:
        return args
    a = args[0]
    if a.is_const:
        try:
            return [FixedArg(const=posix_re(str(a.const)), pos=a.pos, text=a.text)]
        except re.error as e:
            raise FixupError(f"bad regular expression '{a.const}': {e}", 0) from None
    get = a.get
    assert get is not None
    return [FixedArg(get=lambda ctx: posix_re(str(get(ctx))), pos=a.pos, text=a.text)]


def keep_hf(ctx: Any, regex: re.Pattern[str] | None = None) -> int:
    msg = ctx.msg
    drop = {canonical_name(n) for n, _ in msg.fields()
            if canonical_name(n) not in KEPT and not (regex is not None and regex.search(n))}
    for key in drop:
        msg.remove_header(key)
    return 1


def fnmatch(ctx: Any, value: str, expr: str, flags: str = "") -> int:
    if "i" in flags:
        value, expr = value.lower(), expr.lower()
    return 1 if _fnmatch.fnmatchcase(value, expr) else -1


exports = Module(
    name="textopsx",
    doc="More operations on the message text.",
    functions=(
        Function("msg_apply_changes", msg_apply_changes, (), R.REQUEST | R.ONREPLY,
                 doc="Apply the recorded changes now: what follows reads the changed "
                     "message. If the new message does not parse, the script stops."),
        Function("remove_body", remove_body, (),
                 doc="Remove the body (Content-Length becomes 0; Content-Type is kept). "
                     "False if there was none."),
        Function("keep_hf", keep_hf, (Arg("regexp", optional=True),), fixup=_keep_fixup,
                 doc="Remove every header whose name does not match regexp, except Via, "
                     "From, To, Call-ID, CSeq, Content-Length, Content-Type, "
                     "Max-Forwards, Contact, Route and Record-Route."),
        Function("fnmatch", fnmatch, (Arg("value"), Arg("expr"), Arg("flags", optional=True)),
                 doc="Shell-style wildcard match of value against expr; flags \"i\": "
                     "ignore case."),
    ),
)
