"""tmx: tm extensions (Kamailio's tmx): route-type checks, branch cancelling,
``$T(name)`` and the transaction statistics (counted by tm, shown with
``stats.get_statistics tm:``)."""

from __future__ import annotations

from typing import Any

from ser.core.log import log
from ser.core.module import Arg, FixedArg, FixupError, Function, Module, RouteType
from ser.core.pv import PVDecl

R = RouteType


def _engine(ctx: Any) -> Any:
    inst = ctx.rt.modules.get("tm")
    return inst.state.get("engine") if inst is not None else None


def t_precheck_trans(ctx: Any) -> int:
    """True when the request (not ACK/CANCEL) already has a transaction:
    a retransmission to stop early."""
    eng = _engine(ctx)
    if eng is None or ctx.msg.method in ("ACK", "CANCEL"):
        return -1
    return 1 if eng.lookup(ctx) is not None else -1


def _route_is(kind: RouteType) -> Any:
    def call(ctx: Any) -> int:
        return 1 if ctx.route_type & kind else -1
    return call


def t_cancel_branches(ctx: Any, which: str = "all") -> int:
    from ser.mods.tm.engine import cancel_branches_of
    eng = _engine(ctx)
    tid = ctx.cache.get("tm_txn")
    if eng is None or tid is None:
        return -1
    if which not in ("all", "others", "this"):
        log.error("t_cancel_branches: which is all, others or this, not %r", which)
        return -1
    idx = ctx.cache.get("tm_branch")
    if which != "all" and idx is None:
        return -1
    cancel_branches_of(eng, tid, which, -1 if idx is None else int(idx))
    return 1


def t_flush_flags(ctx: Any) -> int:
    eng = _engine(ctx)
    tid = ctx.cache.get("tm_txn")
    if eng is None or tid is None:
        return -1
    flags = ctx.flags

    def fn(t: Any) -> None:
        t.mflags = flags
    return 1 if eng.flag(tid, fn) else -1


def t_reply_callid(ctx: Any, callid: str, cseq: str, code: int, reason: str) -> int:
    """Reply to the transaction of another request, found by Call-ID and CSeq
    number (a snapshot walk: meant for rare, administrative use)."""
    eng = _engine(ctx)
    if eng is None:
        return -1
    from ser.core.parser import parse_message
    from ser.mods.tm.txn import Txn
    for rec in eng.table.snapshot():
        t = Txn.decode(rec.value)
        req = parse_message(t.request)
        if req.call_id == callid and req.cseq is not None and str(req.cseq.num) == str(cseq):
            return 1 if eng.local_reply(rec.key, int(code), reason) else -1
    return -1


def _which_fixup(args: list[FixedArg]) -> list[FixedArg]:
    if args and args[0].is_const and args[0].const not in ("all", "others", "this"):
        raise FixupError("which is all, others or this", 0)
    return args


_T_NAMES = ("id_index", "reply_code", "reply_reason", "branch_index", "ruid", "reply_type")


def _t_name(inner: str | None, index: str | None, resolver: Any) -> str:
    if inner not in _T_NAMES:
        raise ValueError(f"$T(name) takes one of {', '.join(_T_NAMES)}")
    return inner


def _t_get(ctx: Any, name: str) -> Any:
    tid = ctx.cache.get("tm_txn")
    if name == "id_index":
        return tid.hex() if tid else None
    if name == "reply_code":
        if not ctx.msg.is_request:
            return ctx.msg.status
        return ctx.cache.get("tm_reply_code")
    if name == "reply_reason":
        return None if ctx.msg.is_request else ctx.msg.reason
    if name == "branch_index":
        return ctx.cache.get("tm_branch", 0)
    if name == "reply_type":
        return 1 if ctx.msg.is_request else 0
    return None


exports = Module(
    name="tmx",
    doc="Extensions of tm: route-type checks, cancelling branches, $T(name).",
    functions=(
        Function("t_precheck_trans", t_precheck_trans, (), R.REQUEST,
                 doc="Is the request a retransmission of a transaction being handled?"),
        Function("t_is_failure_route", _route_is(R.FAILURE), (), R.ANY,
                 doc="Running in a failure_route?"),
        Function("t_is_branch_route", _route_is(R.BRANCH), (), R.ANY,
                 doc="Running in a branch_route?"),
        Function("t_is_reply_route", _route_is(R.ONREPLY), (), R.ANY,
                 doc="Running in an onreply_route?"),
        Function("t_cancel_branches", t_cancel_branches, (Arg("which", optional=True),),
                 R.FAILURE | R.ONREPLY, _which_fixup, "CANCEL the pending branches: all, "
                 "others (all but the branch of the reply) or this (only that one)."),
        Function("t_flush_flags", t_flush_flags, (), R.REQUEST | R.FAILURE,
                 doc="Store the message flags in the transaction."),
        Function("t_reply_callid", t_reply_callid,
                 (Arg("callid"), Arg("cseq"), Arg("code", "int"), Arg("reason")), R.ANY,
                 doc="Reply to the transaction with this Call-ID and CSeq number."),
    ),
    pvs=(PVDecl("T", _t_get, parse_name=_t_name, doc="$T(name): transaction attributes "
                "(id_index, reply_code, reply_reason, branch_index, reply_type)"),),
    depends=("tm",),
)
