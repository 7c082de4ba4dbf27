"""tm: stateful processing -- SIP transactions in shared memory (Kamailio's tm).

The declaration is here; the transaction record and its matching keys are in
txn.py, the RFC 3261 §17 state tables in machine.py, and what a process does
with them in engine.py. Each process gets its own :class:`Engine` in
``child_init`` (``state["engine"]``); the core's receive loop hands it the
replies and the timer process its ticks.
"""

from __future__ import annotations

import re
from typing import Any

from ser.core.cfg.runtime import add_branch, parse_q
from ser.core.module import (
    Arg,
    FixedArg,
    FixupError,
    Function,
    Module,
    Param,
    RouteType,
    RPCMethod,
    Timer,
)
from ser.core.pv import PVDecl
from ser.mods.tm.engine import STATS, SWEEP, TICK, Engine
from ser.mods.tm.txn import F_CANCELED, F_DROP_REPLIES, Txn

R = RouteType
_REQ_FAIL = R.REQUEST | R.FAILURE


def _engine(ctx: Any) -> Engine | None:
    inst = ctx.rt.modules.get("tm")
    return inst.state.get("engine") if inst is not None else None


def _no_worker(ctx: Any, what: str, *args: Any) -> int:
    ctx.actions.append((what, *args))
    return 1


# ------------------------------------------------------------------ relaying
def t_relay(ctx: Any, host: str = "", port: int = 0) -> int:
    eng = _engine(ctx)
    if eng is None or eng.core is None:
        return _no_worker(ctx, "t_relay", host, port)
    return eng.relay(ctx, host, int(port or 0), "udp" if host else "")


def t_relay_to_udp(ctx: Any, host: str = "", port: int = 0) -> int:
    eng = _engine(ctx)
    if eng is None or eng.core is None:
        return _no_worker(ctx, "t_relay_to_udp", host, port)
    return eng.relay(ctx, host, int(port or 0), "udp")


def t_relay_to_tcp(ctx: Any, host: str = "", port: int = 0) -> int:
    eng = _engine(ctx)
    if eng is None or eng.core is None:
        return _no_worker(ctx, "t_relay_to_tcp", host, port)
    return eng.relay(ctx, host, int(port or 0), "tcp")


def t_relay_to_tls(ctx: Any, host: str = "", port: int = 0) -> int:
    eng = _engine(ctx)
    if eng is None or eng.core is None:
        return _no_worker(ctx, "t_relay_to_tls", host, port)
    return eng.relay(ctx, host, int(port or 5061), "tls")


_PROXY = re.compile(r"^(?:(udp|tcp|tls):)?(\[[^\]]+\]|[^:]+)(?::(\d+))?$", re.I)


def _proxy_fixup(args: list[FixedArg]) -> list[FixedArg]:
    if args and args[0].is_const and args[0].const and not _PROXY.match(str(args[0].const)):
        raise FixupError(f"bad proxy '{args[0].const}' (proto:host:port)", 0)
    return args


def t_relay_to(ctx: Any, proxy: str = "", flags: int = 0) -> int:
    eng = _engine(ctx)
    if eng is None or eng.core is None:
        return _no_worker(ctx, "t_relay_to", proxy, flags)
    if not proxy:
        return eng.relay(ctx)
    mt = _PROXY.match(proxy)
    if mt is None:
        return -1
    proto = (mt.group(1) or "udp").lower()
    return eng.relay(ctx, mt.group(2).strip("[]"),
                     int(mt.group(3) or (5061 if proto == "tls" else 5060)), proto)


def t_newtran(ctx: Any) -> int:
    eng = _engine(ctx)
    if eng is None or eng.core is None:
        return _no_worker(ctx, "t_newtran")
    return eng.newtran(ctx)


def t_check_trans(ctx: Any) -> int:
    """1: the request belongs to a transaction (CANCEL: its INVITE exists);
    0: a retransmission (last reply re-sent) or an absorbed ACK; -1 none."""
    eng = _engine(ctx)
    if eng is None or eng.core is None:
        return -1
    msg = ctx.msg
    if not msg.is_request:
        return 1 if ctx.cache.get("tm_txn") is not None else -1
    if ctx.route_type & (R.FAILURE | R.BRANCH):
        return 1
    if msg.method == "ACK":
        return 0 if eng.ack(ctx) else -1
    if msg.method == "CANCEL":
        from ser.mods.tm.txn import txn_id
        kt = eng.key_of(ctx)
        if kt is None:
            return -1
        return 1 if eng.table.get(txn_id(kt[0][:-6] + b"INVITE")) is not None else -1
    hit = eng.lookup(ctx)
    if hit is None:
        return -1
    eng.retransmission(ctx, hit[0])
    return 0


def t_reply(ctx: Any, code: int, reason: str) -> int:
    eng = _engine(ctx)
    if eng is None or eng.core is None:
        return _no_worker(ctx, "t_reply", code, reason)
    tid = ctx.cache.get("tm_txn")
    if tid is None:
        r = eng.newtran(ctx)
        if r <= 0:
            return r
        tid = ctx.cache["tm_txn"]
    return 1 if eng.local_reply(tid, int(code), reason, ctx) else -1


def _code_fixup(args: list[FixedArg]) -> list[FixedArg]:
    if args[0].is_const and not 100 <= int(args[0].const) <= 699:
        raise FixupError(f"bad reply code {args[0].const} (100..699)", 0)
    return args


def _route_setter(key: str) -> Any:
    def call(ctx: Any, name: str) -> int:
        ctx.cache[key] = name
        return 1
    return call


def t_check_status(ctx: Any, regex: str) -> int:
    code = _reply_code(ctx)
    if code is None:
        return -1
    try:
        return 1 if re.match(regex, str(code)) else -1
    except re.error:
        return -1


def _txn(ctx: Any) -> Txn | None:
    eng = _engine(ctx)
    tid = ctx.cache.get("tm_txn")
    if eng is None or tid is None:
        return None
    raw = eng.table.get(tid)
    return Txn.decode(raw) if raw is not None else None


def t_is_canceled(ctx: Any) -> int:
    txn = _txn(ctx)
    return 1 if txn is not None and txn.flags & F_CANCELED else -1


def t_set_fr(ctx: Any, fr_inv: int, fr: int = 0) -> int:
    ctx.cache["t_set_fr"] = (int(fr), int(fr_inv))
    eng = _engine(ctx)
    tid = ctx.cache.get("tm_txn")
    if eng is not None and tid is not None:
        def fn(t: Txn) -> None:
            t.fr, t.fr_inv = int(fr), int(fr_inv)
        eng.flag(tid, fn)
    return 1


def append_branch(ctx: Any, uri: str = "", q: str = "") -> int:
    target = uri or ctx.ruri or ctx.msg.ruri
    add_branch(ctx, target, "" if uri else (ctx.dst_uri or ""), parse_q(q), "", ctx.bflags)
    return 1


def _contacts_avp(ctx: Any) -> str:
    name = str(ctx.rt.modules["tm"].params.get("contacts_avp") or "tm_contacts")
    return name.removeprefix("$avp(").removesuffix(")")


def t_load_contacts(ctx: Any) -> int:
    """Serial forking: the R-URI and the branches, grouped by q (highest first),
    into the contacts AVP; the branches are cleared."""
    branches = ctx.cache.pop("branches", [])
    if not branches:
        return 1        # only the R-URI: nothing to order (Kamailio returns 1)
    q_ruri = parse_q(ctx.cache.get("ruri_q", ""))
    items = [(q_ruri, 0, ctx.ruri or ctx.msg.ruri, ctx.dst_uri or "")]
    items += [(b.q, i + 1, b.uri, b.dst_uri) for i, b in enumerate(branches)]
    items.sort(key=lambda x: (-x[0], x[1]))
    ctx.avps[_contacts_avp(ctx)] = [f"{q}\t{u}\t{d}" for q, _, u, d in items]
    return 1


def t_next_contacts(ctx: Any) -> int:
    """The next q group from the contacts AVP: the first becomes the R-URI,
    the rest branches. -1 when none are left."""
    name = _contacts_avp(ctx)
    items = ctx.avps.get(name) or []
    if not items:
        return -1
    first_q = items[0].split("\t", 1)[0]
    group = [i for i in items if i.split("\t", 1)[0] == first_q]
    rest = items[len(group):]
    if rest:
        ctx.avps[name] = rest
    else:
        ctx.avps.pop(name, None)
    _, uri, dst = group[0].split("\t")
    ctx.ruri = uri
    if ctx.msg.is_request:
        ctx.msg.set_ruri(uri)
    ctx.dst_uri = dst or None
    ctx.cache.pop("ruri_used", None)
    for g in group[1:]:
        _, u, d = g.split("\t")
        add_branch(ctx, u, d)
    eng = _engine(ctx)
    tid = ctx.cache.get("tm_txn")
    if eng is not None and tid is not None:
        avps = {k: list(v) for k, v in ctx.avps.items()}

        def fn(t: Txn) -> None:
            t.avps = avps
        eng.flag(tid, fn)
    return 1


def t_drop_replies(ctx: Any, mode: str = "a") -> int:
    eng = _engine(ctx)
    tid = ctx.cache.get("tm_txn")
    if eng is None or tid is None:
        return -1

    def fn(t: Txn) -> None:
        t.flags |= F_DROP_REPLIES
        for b in t.branches:
            b.reply = b""
            if b.code >= 300:
                b.code = 500 if mode == "a" else b.code
    eng.flag(tid, fn)
    return 1


def _branch(ctx: Any) -> Any:
    txn = ctx.cache.get("tm_txn_copy") or _txn(ctx)
    idx = ctx.cache.get("tm_branch")
    if txn is None or idx is None or not 0 <= idx < len(txn.branches):
        return txn, None
    return txn, txn.branches[idx]


def t_branch_timeout(ctx: Any) -> int:
    _, b = _branch(ctx)
    return 1 if b is not None and b.code == 408 and not b.reply else -1


def t_any_timeout(ctx: Any) -> int:
    txn = ctx.cache.get("tm_txn_copy") or _txn(ctx)
    return 1 if txn and any(b.code == 408 and not b.reply for b in txn.branches) else -1


def t_any_replied(ctx: Any) -> int:
    txn = ctx.cache.get("tm_txn_copy") or _txn(ctx)
    return 1 if txn and any(b.code and (b.reply or b.code != 408) for b in txn.branches) \
        else -1


def t_is_set(ctx: Any, target: str) -> int:
    key = {"failure_route": "t_on_failure", "branch_route": "t_on_branch",
           "onreply_route": "t_on_reply"}.get(target)
    if key is None:
        return -1
    if ctx.cache.get(key):
        return 1
    txn = _txn(ctx)
    attr = {"t_on_failure": "on_failure", "t_on_branch": "on_branch",
            "t_on_reply": "on_reply"}[key]
    return 1 if txn is not None and getattr(txn, attr) else -1


def t_save_lumps(ctx: Any) -> int:
    """The script's edits so far are saved with the transaction (in ser they
    always are: the stored request is the edited one)."""
    return 1


def _target_fixup(args: list[FixedArg]) -> list[FixedArg]:
    if args[0].is_const and args[0].const not in ("failure_route", "branch_route",
                                                    "onreply_route"):
        raise FixupError("target is failure_route, branch_route or onreply_route", 0)
    return args


# ----------------------------------------------------------------------- PVs
def _reply_code(ctx: Any) -> int | None:
    if not ctx.msg.is_request:
        return ctx.msg.status
    code = ctx.cache.get("tm_reply_code")
    if code:
        return int(code)
    txn = _txn(ctx)
    return txn.code if txn is not None and txn.code else None


def _pv_reply_code(ctx: Any, _: Any) -> Any:
    return _reply_code(ctx)


def _pv_branch_idx(ctx: Any, _: Any) -> Any:
    idx = ctx.cache.get("tm_branch")
    return 0 if idx is None else idx


def _inner_pv(inner: str | None, index: str | None, resolver: Any) -> Any:
    if not inner:
        raise ValueError("needs a pseudo-variable, as in $T_req($hdr(From))")
    return resolver.parse_text(inner, ("<pv>", 0, 0))


def _pv_t_req(ctx: Any, pv: Any) -> Any:
    txn = ctx.cache.get("tm_txn_copy") or _txn(ctx)
    if txn is None:
        return None
    from ser.core.cfg.runtime import Context
    from ser.core.parser import parse_message
    sub = Context(parse_message(txn.request), ctx.rt, txn.src[1], txn.src[2])
    return pv.get(sub)


def _pv_t_rpl(ctx: Any, pv: Any) -> Any:
    if not ctx.msg.is_request:
        return pv.get(ctx)
    txn, _ = _branch(ctx)
    if txn is None:
        return None
    best = [b for b in txn.branches if b.reply]
    if not best:
        return None
    from ser.core.cfg.runtime import Context
    from ser.core.parser import parse_message
    b = min(best, key=lambda b: b.code)
    return pv.get(Context(parse_message(b.reply), ctx.rt))


# ----------------------------------------------------------------------- RPC
def _stats(ctx: Any) -> dict[str, int]:
    s = ctx.stats.all()
    g = {k.split(":", 1)[1]: v for k, v in s.items() if k.startswith("tm:")}
    return {
        "current": g.get("current", 0), "waiting": g.get("waiting", 0),
        "total": g.get("total", 0), "total_local": g.get("total_local", 0),
        "rpl_received": g.get("rpl_received", 0), "rpl_generated": g.get("rpl_generated", 0),
        "rpl_sent": g.get("rpl_sent", 0), "6xx": g.get("6xx_transactions", 0),
        "5xx": g.get("5xx_transactions", 0), "4xx": g.get("4xx_transactions", 0),
        "3xx": g.get("3xx_transactions", 0), "2xx": g.get("2xx_transactions", 0),
        "created": g.get("created", 0), "freed": g.get("freed", 0),
        "delayed_free": 0, "full_errors": g.get("full_errors", 0),
    }


def rpc_stats(ctx: Any) -> dict[str, int]:
    return _stats(ctx)


def rpc_list(ctx: Any) -> list[dict[str, Any]]:
    from ser.core.parser import ProtocolError, parse_message
    out = []
    for rec in ctx.shm.table("tm").snapshot():
        t = Txn.decode(rec.value)
        first = t.request.split(b"\r\n", 1)[0].decode("utf-8", "replace")
        try:
            req = parse_message(t.request)
            hdrs = {"from": req.header("from") or "", "to": req.header("to") or "",
                    "callid": req.call_id or "", "cseq": req.header("cseq") or ""}
        except ProtocolError:
            hdrs = {"from": "", "to": "", "callid": "", "cseq": ""}
        out.append({
            "tindex": rec.key.hex(), "method": t.method, "ruri": first.split(" ")[1]
            if " " in first else "", **hdrs, "state": int(t.state), "code": t.code,
            "branches": [{"uri": b.uri, "dst": f"{b.proto}:{b.host}:{b.port}",
                          "state": int(b.state), "code": b.code} for b in t.branches],
            "created": t.created, "canceled": bool(t.flags & F_CANCELED),
            "src": f"{t.src[0]}:{t.src[1]}:{t.src[2]}",
        })
    return out


# --------------------------------------------------------------------- hooks
def _mod_init(inst: Any) -> None:
    shm = inst.state["shm"]
    shm.create_table("tm", 16)
    shm.create_table("tm_timer", 10)
    for name in STATS:
        shm.stats.declare(name)


def _child_init(inst: Any, rank: int) -> None:
    inst.state["engine"] = Engine(inst)


def _timer(inst: Any, now: float) -> None:
    eng = inst.state.get("engine")
    if eng is None or eng.core is None:
        return
    eng.timer_tick(now)


def _expire(inst: Any, now: float) -> None:
    """The safety net (engine.py): records past their lifetime whose wheel
    entry was lost, and wheel slots never popped. It walks every bucket, so it
    runs every SWEEP seconds, not every tick: a record outlives its lifetime
    by that much at most, and nothing reads an expired record meanwhile."""
    eng = inst.state.get("engine")
    if eng is None:
        return
    n = eng.table.expire(now)
    if n:
        eng.stats.inc("tm:freed", n)
        eng.stats.inc("tm:current", -n)
    eng.wheel.expire(now)


def _positive(v: Any) -> str | None:
    return None if int(v) > 0 else "must be positive"


_hostport = (Arg("host", optional=True), Arg("port", "int", optional=True))
_route = (Arg("name", "const"),)

exports = Module(
    name="tm",
    doc="Stateful processing: SIP transactions kept in shared memory, so any process "
        "handles any message of a transaction; retransmissions and timeouts are driven "
        "by the timer process.",
    params=(
        Param("fr_timer", int, 30000, "Milliseconds to wait for a final reply when no "
              "provisional reply came (timers B and F); then a local 408.", _positive),
        Param("fr_inv_timer", int, 120000, "Milliseconds to wait for a final reply to an "
              "INVITE after a provisional reply.", _positive),
        Param("restart_fr_on_each_reply", int, 1, "Restart fr_inv_timer on every "
              "provisional reply."),
        Param("auto_inv_100", int, 1, "Answer every new INVITE transaction with 100 Trying."),
        Param("auto_inv_100_reason", str, "trying -- your call is important to us",
              "Reason phrase of the automatic 100."),
        Param("failure_reply_mode", int, 3, "Which replies of earlier branches count "
              "after failure_route forked again (Kamailio's modes; ser keeps all)."),
        Param("remap_503_500", int, 1, "Send a 503 from downstream upstream as 500 "
              "(RFC 3261 16.7)."),
        Param("wt_timer", int, 5000, "Milliseconds a completed transaction lingers to "
              "absorb retransmissions.", _positive),
        Param("retr_timer1", int, 500, "T1 in milliseconds: first retransmission "
              "interval.", _positive),
        Param("retr_timer2", int, 4000, "T2 in milliseconds: the retransmission interval "
              "cap.", _positive),
        Param("max_inv_lifetime", int, 180000, "Milliseconds an INVITE transaction may "
              "live at most.", _positive),
        Param("max_noninv_lifetime", int, 32000, "Milliseconds a non-INVITE transaction "
              "may live at most.", _positive),
        Param("contacts_avp", str, "", "AVP of t_load_contacts/t_next_contacts."),
        Param("contact_flows_avp", str, "", "AVP of contacts with flows (RFC 5626)."),
    ),
    functions=(
        Function("t_relay", t_relay, _hostport, _REQ_FAIL,
                 doc="Relay the request statefully to the R-URI, $du or host:port."),
        Function("t_relay_to_udp", t_relay_to_udp, _hostport, _REQ_FAIL,
                 doc="Relay statefully over UDP."),
        Function("t_relay_to_tcp", t_relay_to_tcp, _hostport, _REQ_FAIL,
                 doc="Relay statefully over TCP."),
        Function("t_relay_to_tls", t_relay_to_tls, _hostport, _REQ_FAIL,
                 doc="Relay statefully over TLS."),
        Function("t_relay_to", t_relay_to, (Arg("proxy", optional=True),
                                            Arg("flags", "int", optional=True)),
                 _REQ_FAIL, _proxy_fixup, "Relay statefully to proto:host:port."),
        Function("t_newtran", t_newtran, (), R.REQUEST,
                 doc="Create the transaction of the request (0: a retransmission)."),
        Function("t_check_trans", t_check_trans, (), R.ANY,
                 doc="Does the message belong to a transaction? A retransmission gets "
                     "the last reply again and stops the script."),
        Function("t_reply", t_reply, (Arg("code", "int"), Arg("reason")),
                 _REQ_FAIL | R.ONREPLY, _code_fixup, "Reply statefully."),
        Function("t_on_failure", _route_setter("t_on_failure"), _route, _REQ_FAIL | R.BRANCH,
                 doc="failure_route to run when every branch failed."),
        Function("t_on_reply", _route_setter("t_on_reply"), _route, _REQ_FAIL | R.BRANCH,
                 doc="onreply_route to run for the replies of the transaction."),
        Function("t_on_branch", _route_setter("t_on_branch"), _route, _REQ_FAIL,
                 doc="branch_route to run for each new branch of the transaction (also "
                     "those added in failure_route): it edits that branch's request, $ru "
                     "and $du only (t_on_reply/t_on_failure there set the transaction's); "
                     "drop there discards that branch alone."),
        Function("t_check_status", t_check_status, (Arg("regex"),),
                 R.FAILURE | R.ONREPLY | R.REQUEST | R.BRANCH,
                 doc="Does the reply code match the regular expression?"),
        Function("t_is_canceled", t_is_canceled, (), R.ANY,
                 doc="Was the transaction cancelled?"),
        Function("t_set_fr", t_set_fr, (Arg("fr_inv", "int"), Arg("fr", "int", optional=True)),
                 _REQ_FAIL | R.BRANCH, doc="fr_inv_timer (and fr_timer) in ms for this "
                 "transaction."),
        Function("append_branch", append_branch, (Arg("uri", optional=True),
                                                  Arg("q", optional=True)),
                 _REQ_FAIL, doc="Add a branch (parallel forking): the URI, or the current "
                 "R-URI and $du."),
        Function("t_load_contacts", t_load_contacts, (), _REQ_FAIL,
                 doc="Order the R-URI and branches by q for serial forking."),
        Function("t_next_contacts", t_next_contacts, (), _REQ_FAIL,
                 doc="Take the next (highest q) group of contacts; false when none left."),
        Function("t_drop_replies", t_drop_replies, (Arg("mode", optional=True),), R.FAILURE,
                 doc="Forget the replies received so far."),
        Function("t_branch_timeout", t_branch_timeout, (), R.FAILURE,
                 doc="Did the failed branch time out?"),
        Function("t_any_timeout", t_any_timeout, (), R.ANY, doc="Did any branch time out?"),
        Function("t_any_replied", t_any_replied, (), R.ANY, doc="Did any branch get a reply?"),
        Function("t_is_set", t_is_set, (Arg("target", "const"),), R.ANY, _target_fixup,
                 "Is a failure_route, branch_route or onreply_route set?"),
        Function("t_save_lumps", t_save_lumps, (), R.REQUEST,
                 doc="Keep the script's changes with the transaction."),
    ),
    pvs=(
        PVDecl("T_reply_code", _pv_reply_code, doc="code of the reply in failure/onreply "
               "route (the best one in failure_route)"),
        PVDecl("T_branch_idx", _pv_branch_idx, doc="index of the branch being handled"),
        PVDecl("T_req", _pv_t_req, parse_name=_inner_pv, doc="$T_req(pv): pv of the "
               "transaction's request"),
        PVDecl("T_rpl", _pv_t_rpl, parse_name=_inner_pv, doc="$T_rpl(pv): pv of the "
               "winning reply"),
    ),
    rpc=(
        RPCMethod("tm.stats", rpc_stats, "Transaction counters."),
        RPCMethod("tm.list", rpc_list, "Every transaction in memory."),
    ),
    timers=(
        Timer("tm_timer", TICK, _timer),
        Timer("tm_expire", SWEEP, _expire),
    ),
    mod_init=_mod_init,
    child_init=_child_init,
    depends=(),
)

