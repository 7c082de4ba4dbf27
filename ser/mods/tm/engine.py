"""The per-process side of tm: matching, relaying, replies and timers.

Theory of operation. Every worker (and the timer process) has one
:class:`Engine` over the same shm tables. Whatever a message does to a
transaction happens inside one ``Table.update`` call: the record is decoded,
the state machines of machine.py are stepped, the record is encoded again,
and what must be *done* (send these bytes there, run failure_route, build a
local reply, queue a timer) is collected as a list of outbound actions that
run after the bucket lock is released. So two workers holding two replies of
the same transaction serialize on the record, never on the network.

Timers: a second table ``tm_timer`` is a wheel of 50 ms slots, each holding
the ids of the transactions that have something due in it, so the timer's
work is proportional to the transactions due, not to the table. A change that
brings a transaction's earliest deadline forward queues its id (``sched`` in
the record is the entry it knows of); one that pushes it back queues nothing.
The timer process pops the elapsed slots and feeds each transaction the timer
events that are due (retransmission, final-response timeout, wait). An entry
that finds nothing due -- the deadline moved, as when the first reply stops
the retransmissions -- costs one read: it queues the next deadline without
rewriting the record. Records also carry a table expiry
(``max_inv_lifetime`` / ``max_noninv_lifetime`` past their creation), and
wheel slots one of ``WHEEL_LINGER``, so shared memory is reclaimed even if a
wheel entry was lost with a killed process (swept every ``SWEEP`` seconds).
"""

from __future__ import annotations

import logging
import struct
import time
from collections.abc import Callable
from typing import Any

from ser.core.cfg.runtime import Context
from ser.core.log import RateLimited, log
from ser.core.parser import ProtocolError, SipMessage, build_reply, parse_message
from ser.core.receive import Dest
from ser.mods.tm import machine as m
from ser.mods.tm.txn import (
    F_CANCELED,
    F_DROP_REPLIES,
    F_IN_FAILURE,
    F_LOCAL_FINAL,
    F_WAITING,
    Branch,
    Txn,
    branch_param,
    branch_request,
    match_key,
    parse_branch,
    txn_id,
)
from ser.shm import ShmFull

A, E, S = m.members(m.A), m.members(m.E), m.members(m.S)
TICK = 0.05
WHEEL_LINGER = 60.0     # a wheel slot the timer never popped is swept after this
SWEEP = 10.0            # seconds between two sweeps of expired records (tm_expire)
_slot = struct.Struct("<q")
_full_log = RateLimited(interval=10.0, burst=3)

STATS = ("tm:current", "tm:waiting", "tm:total", "tm:total_local", "tm:rpl_received",
         "tm:rpl_generated", "tm:rpl_sent", "tm:2xx_transactions", "tm:3xx_transactions",
         "tm:4xx_transactions", "tm:5xx_transactions", "tm:6xx_transactions", "tm:created",
         "tm:freed", "tm:full_errors")
_CLASS_STAT = {c: f"tm:{c}xx_transactions" for c in range(2, 7)}

Out = list[tuple[Any, ...]]


def _prio(code: int) -> tuple[int, int]:
    """Best-reply order (RFC 3261 16.7.6 as Kamailio applies it): 6xx, then
    the lowest class; 401/407 first among 4xx, a local 408 last."""
    cls = code // 100
    rank = {6: 0, 2: 1, 3: 2, 4: 3, 5: 4}.get(cls, 5)
    if code in (401, 407):
        return rank, 0
    if code == 408:
        return rank, 999
    return rank, code


def to_tag(tid: bytes) -> str:
    return f"ser-tm-{tid.hex()[:10]}"


class Engine:
    def __init__(self, inst: Any) -> None:
        p = inst.params
        shm = inst.state["shm"]
        self.inst = inst
        self.table = shm.table("tm")
        self.wheel = shm.table("tm_timer")
        self.stats = shm.stats
        self.t1 = int(p["retr_timer1"]) / 1000.0
        self.t2 = int(p["retr_timer2"]) / 1000.0
        self.fr = int(p["fr_timer"]) / 1000.0
        self.fr_inv = int(p["fr_inv_timer"]) / 1000.0
        self.wt = int(p["wt_timer"]) / 1000.0
        self.max_inv = int(p["max_inv_lifetime"]) / 1000.0
        self.max_noninv = int(p["max_noninv_lifetime"]) / 1000.0
        self.auto_100 = bool(p["auto_inv_100"])
        self.reason_100 = str(p["auto_inv_100_reason"])
        self.remap_503 = bool(p["remap_503_500"])
        self.restart_fr = bool(p["restart_fr_on_each_reply"])
        self.core: Any = None
        self.routes: Any = None
        self.has_onreply = False
        self.last_slot = 0
        # the timer process gathers the entries a tick queues, one wheel write a slot
        self.batch: dict[int, bytes] | None = None
        self.on_final: list[Callable[[Context, int, str], None]] = []

    def bind(self, core: Any) -> None:
        """Called by the process's ``receive.Core``: the sender and the script."""
        self.core = core
        self.routes = core.routes
        table = getattr(core.routes, "table", {}) if core.routes is not None else {}
        self.has_onreply = any(k[0] == "onreply" for k in table)
        # completion hook: fn(request ctx, final code, reason) from any module's
        # state["tm_on_final"] (acc), run when a final reply goes upstream
        mods = getattr(core.rt, "modules", None) or {}
        self.on_final = [fn for i in mods.values() for fn in i.state.get("tm_on_final", ())]

    # ------------------------------------------------------------------ helpers
    def _sock_index(self, si: Any) -> int:
        for i, s in enumerate(self.core.sockets):
            if s is si:
                return i
        return -1

    def _dest(self, proto: str, host: str, port: int, sock: int) -> Any:
        socks = self.core.sockets
        return Dest(proto, host, port, socks[sock] if 0 <= sock < len(socks) else None)

    def _send(self, proto: str, host: str, port: int, sock: int, data: bytes) -> bool:
        return bool(self.core.send(self._dest(proto, host, port, sock), data))

    def _expires(self, invite: bool, now: float) -> float:
        return now + (self.max_inv if invite else self.max_noninv) + 5.0

    def _schedule(self, tid: bytes, due: float) -> None:
        # never a slot the timer has passed already (a deadline that is due now)
        n = max(int(due / TICK), int(time.time() / TICK)) + 1
        if self.batch is not None:
            self.batch[n] = self.batch.get(n, b"") + tid
        else:
            self._queue(n, tid)

    def _queue(self, n: int, tids: bytes) -> None:
        """Append transaction ids to wheel slot ``n``."""
        try:
            self.wheel.update(_slot.pack(n), lambda old: (old or b"") + tids,
                              expires=n * TICK + WHEEL_LINGER)
        except ShmFull:
            self.stats.inc("tm:full_errors")
            _full_log(logging.ERROR, "tm: shared memory full, timer of %s lost (the "
                      "transaction ends at its lifetime)", tids[:8].hex())

    def _update(self, tid: bytes, fn: Callable[[bytes | None], bytes | None],
                out: Out | None = None) -> bool:
        """``table.update`` of a transaction; when shared memory is full the
        record stays as it was, the error is counted and logged, and the
        actions collected for the change are dropped (False)."""
        try:
            self.table.update(tid, fn)
            return True
        except ShmFull:
            self.stats.inc("tm:full_errors")
            _full_log(logging.ERROR, "tm: shared memory full, transaction %s not updated",
                      tid.hex())
            if out is not None:
                out.clear()
            return False

    def _reschedule(self, txn: Txn, tid: bytes, out: Out) -> None:
        """Queue the transaction's earliest deadline unless a wheel entry
        the record knows of comes first. A later deadline is not queued: the
        earlier entry fires, finds nothing due and queues it then (fire)."""
        nd = txn.next_due()
        if nd and (not txn.sched or nd < txn.sched or txn.sched <= time.time()):
            txn.sched = nd
            out.append(("sched", tid, nd))

    def _run(self, tid: bytes, out: Out) -> None:
        """Carry out the outbound actions of an update."""
        for act in out:
            kind = act[0]
            try:
                if kind == "send":
                    self._send(*act[1:])
                elif kind == "up":          # a reply upstream
                    if self._send(*act[1:]):
                        self.stats.inc("tm:rpl_sent")
                elif kind == "sched":
                    self._schedule(act[1], act[2])
                elif kind == "cancel":
                    self._send_cancel(act[1], act[2])
                elif kind == "ack":
                    self._send_ack(act[1], act[2], act[3])
                elif kind == "local":
                    self.local_reply(act[1], act[2], act[3])
                elif kind == "failure":
                    self._run_failure(act[1], act[2])
                elif kind == "final":
                    txn, code, raw = act[1:]
                    ctx = self._ctx_for(txn, tid)
                    ctx.cache["tm_final_reply"] = raw
                    reason = raw.split(b"\r\n", 1)[0].split(b" ", 2)[2:]
                    for fn in self.on_final:
                        fn(ctx, code, reason[0].decode("utf-8", "replace") if reason else "")
                elif kind == "freed":
                    self.stats.inc("tm:freed")
                    self.stats.inc("tm:current", -1)
                    if act[1]:
                        self.stats.inc("tm:waiting", -1)
            except Exception:
                log.exception("tm: action %s of %s failed", kind, tid.hex())

    def _send_up_now(self, out: Out) -> None:
        """Send the replies upstream while the record is still locked: two
        workers relaying a 180 and a 200 of one transaction must not swap
        them on the wire (a send is one non-blocking datagram)."""
        keep = []
        for act in out:
            if act[0] == "up":
                if self._send(*act[1:]):
                    self.stats.inc("tm:rpl_sent")
            else:
                keep.append(act)
        out[:] = keep

    # --------------------------------------------------------- server side
    def _server(self, txn: Txn, code: int, raw: bytes, now: float, out: Out,
                local: bool = False) -> bool:
        """Feed the server machine a reply the TU sends; True if it was sent."""
        st, acts = m.step(m.server_table(txn.invite), txn.state, m.reply_event(code, True))
        if not acts:
            return False
        txn.state = st
        for a in acts:
            if a is A.SEND_REPLY:
                txn.reply, txn.code = raw, code
                out.append(("up", txn.proto, txn.host, txn.port, txn.sock, raw))
                if local:
                    self.stats.inc("tm:rpl_generated")
                if code >= 200:
                    self.stats.inc(_CLASS_STAT.get(code // 100, "tm:6xx_transactions"))
                    if self.on_final:
                        out.append(("final", txn, code, raw))
                    if local:
                        txn.flags |= F_LOCAL_FINAL
                        self.stats.inc("tm:total_local")
            elif a is A.START_RETR:
                if txn.proto == "udp":
                    txn.retr_iv = self.t1
                    txn.retr_at = now + self.t1
                txn.end_at = now + 64 * self.t1
            elif a is A.START_WAIT:
                txn.wait_at = now + self.wt
                if not txn.flags & F_WAITING:
                    txn.flags |= F_WAITING
                    self.stats.inc("tm:waiting")
        return True

    def _all_done(self, txn: Txn) -> bool:
        return all(b.state >= S.COMPLETED for b in txn.branches)

    def _maybe_final(self, tid: bytes, txn: Txn, now: float, out: Out) -> None:
        """Every branch has ended without a 2xx: run failure_route or send the
        best reply upstream."""
        if txn.code >= 200 or txn.flags & F_IN_FAILURE or not self._all_done(txn):
            return
        if not txn.branches:
            return
        best = min(txn.branches, key=lambda b: _prio(b.code or 500))
        code = best.code or 500
        if txn.on_failure and code >= 300:
            txn.flags |= F_IN_FAILURE
            txn.best = code
            route, txn.on_failure = txn.on_failure, ""
            out.append(("failure", tid, route))
            return
        self._final_best(tid, txn, best, now, out)

    def _final_best(self, tid: bytes, txn: Txn, best: Branch, now: float, out: Out) -> None:
        code = best.code or 500
        if not best.reply:
            reason = "Request Timeout" if code == 408 else "Request Terminated" \
                if code == 487 else "Server Internal Error"
            out.append(("local", tid, code, reason))
            return
        raw = best.reply
        if code in (401, 407):
            raw = _merge_challenges(raw, [b.reply for b in txn.branches
                                          if b is not best and b.code in (401, 407)])
        if code == 503 and self.remap_503:
            raw = b"SIP/2.0 500" + raw[len(b"SIP/2.0 503"):]     # the reason phrase stays
            code = 500
        self._server(txn, code, raw, now, out)

    # ------------------------------------------------------------ creation
    def _new(self, ctx: Context, key: bytes, now: float) -> Txn:
        msg = ctx.msg
        rcv = ctx.rcv
        sock = self._sock_index(rcv.si) if rcv is not None else -1
        proto = rcv.proto if rcv is not None else "udp"
        via = msg.via
        port = ctx.src_port
        if proto == "udp" and via is not None and via.rport is None \
                and not ctx.options.get("force_rport"):
            port = via.port or 5060
        txn = Txn(key, msg.method, now, b"", (proto, ctx.src_ip, ctx.src_port, sock),
                  (proto, ctx.src_ip, port, sock))
        txn.mflags = ctx.flags
        txn.avps = {k: list(v) for k, v in ctx.avps.items()} if ctx.avps else {}
        c = ctx.cache
        txn.on_failure = c.get("t_on_failure", "")
        txn.on_reply = c.get("t_on_reply", "")
        txn.on_branch = c.get("t_on_branch", "")
        txn.fr, txn.fr_inv = c.get("t_set_fr", (0, 0))
        txn.fixups = list(c.get("send_fixups", ()))
        forced = ctx.options.get("force_send_socket")
        if forced is not None:
            txn.fsock = self._sock_index(forced)
        return txn

    def _reply_bytes(self, ctx: Context, tid: bytes, code: int, reason: str,
                     msg: SipMessage | None = None) -> bytes:
        return build_reply(msg or ctx.msg, code, reason, to_tag=to_tag(tid),
                           server=self.core.server, received=ctx.src_ip, rport=ctx.src_port,
                           headers=ctx.cache.get("reply_headers") or ())

    def newtran(self, ctx: Context) -> int:
        """t_newtran: 1 created (or already there for this message), 0 a
        retransmission (absorbed), -1 error."""
        if ctx.cache.get("tm_txn") is not None:
            return 1
        msg = ctx.msg
        if msg.method == "ACK":
            return 0 if self.ack(ctx) else -1
        kt = self.key_of(ctx)
        if kt is None:
            return -1
        key, tid = kt
        now = time.time()
        txn = self._new(ctx, key, now)
        txn.request = self._base(ctx)
        out: Out = []
        if txn.invite and self.auto_100:
            raw = self._reply_bytes(ctx, tid, 100, self.reason_100)
            self._server(txn, 100, raw, now, out, local=True)
        return self._insert(ctx, tid, txn, out, now)

    def _insert(self, ctx: Context, tid: bytes, txn: Txn, out: Out, now: float) -> int:
        self._reschedule(txn, tid, out)
        try:
            added = self.table.add(tid, txn.encode(), self._expires(txn.invite, now))
        except ShmFull:
            self.stats.inc("tm:full_errors")
            _full_log(logging.ERROR, "tm: shared memory full, %s answered 500", ctx.msg.method)
            self.core.reply(ctx, 500, "Server Internal Error (out of memory)")
            return -1
        if not added:
            self.retransmission(ctx, tid)
            return 0
        self.stats.inc("tm:created")
        self.stats.inc("tm:total")
        self.stats.inc("tm:current")
        ctx.cache["tm_txn"] = tid
        self._run(tid, out)
        return 1

    def key_of(self, ctx: Context) -> tuple[bytes, bytes] | None:
        """(17.2.3 matching key, transaction id) of the request, computed once
        per message: t_check_trans() and t_relay() both need them."""
        msg = ctx.msg
        kt = ctx.cache.get("tm_key")
        if kt is None or kt[0] is not msg:      # msg_apply_changes() makes a new one
            key = match_key(msg)
            if key is None:
                return None
            kt = ctx.cache["tm_key"] = (msg, key, txn_id(key))
        return kt[1], kt[2]

    def retransmission(self, ctx: Context, tid: bytes) -> None:
        """A request that matched an existing transaction: re-send the last reply."""
        out: Out = []

        def fn(old: bytes | None) -> bytes | None:
            if old is None:
                return None
            txn = Txn.decode(old)
            st, acts = m.step(m.server_table(txn.invite), txn.state, E.REQ_RETR)
            if A.RESEND_REPLY in acts and txn.reply:
                out.append(("up", txn.proto, txn.host, txn.port, txn.sock, txn.reply))
            return old
        self._update(tid, fn, out)
        self._run(tid, out)

    def lookup(self, ctx: Context) -> tuple[bytes, Txn] | None:
        """The transaction of a request (17.2.3), if any."""
        tid = ctx.cache.get("tm_txn")
        if tid is None:
            kt = self.key_of(ctx)
            if kt is None:
                return None
            tid = kt[1]
        raw = self.table.get(tid)
        if raw is None:
            return None
        return tid, Txn.decode(raw)

    # ---------------------------------------------------------------- ACK
    def ack(self, ctx: Context) -> bool:
        """An ACK for a non-2xx final reply of ours: absorbed (True)."""
        kt = self.key_of(ctx)
        if kt is None:
            return False
        key, tid = kt
        absorbed = False
        out: Out = []

        def fn(old: bytes | None) -> bytes | None:
            nonlocal absorbed
            if old is None:
                return None
            txn = Txn.decode(old)
            if txn.key != key or not txn.invite or txn.code < 300:
                return old
            absorbed = True
            st, acts = m.step(m.INVITE_SERVER, txn.state, E.ACK)
            txn.state = st
            for a in acts:
                if a is A.STOP_RETR:
                    txn.retr_at = 0.0
                    txn.end_at = 0.0
                elif a is A.START_WAIT:
                    txn.wait_at = time.time() + self.wt
            self._reschedule(txn, tid, out)
            return txn.encode()
        self._update(tid, fn, out)
        self._run(tid, out)
        return absorbed

    # -------------------------------------------------------------- relay
    def _base(self, ctx: Context) -> bytes:
        """The request as the script left it, previous hop's Via fixed, no Via of ours."""
        self.core.fix_received(ctx)
        return ctx.msg.serialize()

    def _targets(self, ctx: Context, host: str, port: int, proto: str) -> list[tuple]:
        """(uri, dst_uri, bflags) of every branch to create now."""
        msg = ctx.msg
        uri = ctx.ruri or msg.ruri
        out = []
        if not ctx.cache.get("ruri_used"):
            h = f"[{host}]" if ":" in host and not host.startswith("[") else host
            dst = f"sip:{h}:{port or 5060};transport={proto or 'udp'}" if host else \
                (ctx.dst_uri or "")
            out.append((uri, dst, ctx.bflags))
        for b in ctx.cache.pop("branches", ()):
            out.append((b.uri, b.dst_uri, b.flags))
        return out

    def relay(self, ctx: Context, host: str = "", port: int = 0, proto: str = "") -> int:
        """t_relay and friends."""
        msg = ctx.msg
        method = msg.method
        if method == "ACK":
            if self.ack(ctx):
                return 0
            return 1 if self.core.forward(ctx, host, port) else -1
        if method == "CANCEL" and ctx.cache.get("tm_txn") is None:
            r = self.cancel(ctx)
            if r is not None:
                return r
        now = time.time()
        tid = ctx.cache.get("tm_txn")
        targets = self._targets(ctx, host, port, proto)
        if not targets:
            log.error("tm: t_relay: no destination for %s", method)
            return -1
        if tid is None:
            kt = self.key_of(ctx)
            if kt is None:
                return -1
            key, tid = kt
            base = self._base(ctx)
            prepared = self._branch_routes(ctx, tid, base, 0, targets,
                                           ctx.cache.get("t_on_branch", ""))
            if not prepared:
                return -1
            txn = self._new(ctx, key, now)
            txn.request = base
            out: Out = []
            if txn.invite and self.auto_100:
                raw = self._reply_bytes(ctx, tid, 100, self.reason_100)
                self._server(txn, 100, raw, now, out, local=True)
            if not self._add_branches(ctx, tid, txn, prepared, now, out):
                return -1
            r = self._insert(ctx, tid, txn, out, now)
            ctx.cache["ruri_used"] = True
            return r
        # an existing transaction: t_newtran before, or failure_route
        base = None if ctx.route_type & 2 else self._base(ctx)
        raw0 = self.table.get(tid)
        if raw0 is None:
            return -1
        txn0 = Txn.decode(raw0)
        prepared = self._branch_routes(ctx, tid, base or txn0.request, len(txn0.branches),
                                       targets, ctx.cache.get("t_on_branch") or txn0.on_branch)
        if not prepared:
            return -1
        out = []
        ok = False
        forced = ctx.options.get("force_send_socket")

        def fn(old: bytes | None) -> bytes | None:
            nonlocal ok
            out.clear()
            if old is None:
                return None
            txn = Txn.decode(old)
            if txn.flags & F_CANCELED:
                return old
            if base is not None:
                txn.request = base
            if ctx.cache.get("t_on_failure") is not None:
                txn.on_failure = ctx.cache["t_on_failure"]
            if ctx.cache.get("t_on_reply") is not None:
                txn.on_reply = ctx.cache["t_on_reply"]
            if ctx.cache.get("t_on_branch") is not None:
                txn.on_branch = ctx.cache["t_on_branch"]
            if forced is not None:
                txn.fsock = self._sock_index(forced)
            ok = self._add_branches(ctx, tid, txn, prepared, now, out)
            self._reschedule(txn, tid, out)
            return txn.encode()
        if not self._update(tid, fn, out):
            return -1
        ctx.cache["ruri_used"] = True
        self._run(tid, out)
        return 1 if ok else -1

    def _branch_routes(self, ctx: Context, tid: bytes, base: bytes, first: int,
                       targets: list[tuple], route: str) -> list[tuple]:
        """Run the branch_route (t_on_branch, kept with the transaction as in
        Kamailio, so branches added in failure_route get it too) once per new
        branch, on a copy of the request for that branch only, before any
        bucket lock is taken. Returns (uri, dst_uri, bflags, own request or
        b"", send fixups, forced send socket) per branch kept; ``drop`` there
        discards that branch alone."""
        fixups = list(ctx.cache.get("send_fixups", ()))
        forced = ctx.options.get("force_send_socket")
        if not route or self.routes is None:
            return [(u, d, f, b"", fixups, forced) for u, d, f in targets]
        kept = []
        for uri, dst, bflags in targets:
            bctx = self._branch_ctx(ctx, tid, base, uri, dst, bflags, first + len(kept))
            self._run_route("branch", route, bctx)
            if bctx.dropped:
                log.debug("tm: branch_route[%s] dropped the branch to %s", route, uri)
                continue
            for key in ("t_on_reply", "t_on_failure"):
                # set in branch_route: ser keeps one per transaction
                if bctx.cache.get(key) != ctx.cache.get(key):
                    ctx.cache[key] = bctx.cache[key]
            msg = bctx.msg
            own = msg.serialize() if msg.changed else b""
            kept.append((bctx.ruri or uri, bctx.dst_uri or "", bctx.bflags, own,
                         list(bctx.cache.get("send_fixups", ())),
                         bctx.options.get("force_send_socket")))
        if not kept:
            log.info("tm: branch_route[%s] dropped every branch of %s", route,
                     ctx.msg.method)
        return kept

    def _branch_ctx(self, ctx: Context, tid: bytes, base: bytes, uri: str, dst: str,
                    bflags: int, idx: int) -> Context:
        bctx = Context(parse_message(base), ctx.rt, ctx.src_ip, ctx.src_port, ctx.dst_ip,
                       ctx.dst_port, ctx.proto)
        bctx.rcv = ctx.rcv
        bctx.flags = ctx.flags
        bctx.bflags = bflags
        bctx.avps = ctx.avps
        bctx.options = dict(ctx.options)
        bctx.ruri = uri
        bctx.dst_uri = dst or None
        bctx.cache = {k: v for k, v in ctx.cache.items() if k != "branches"}
        bctx.cache["send_fixups"] = list(ctx.cache.get("send_fixups", ()))
        bctx.cache["tm_txn"] = tid
        bctx.cache["tm_branch"] = idx
        return bctx

    def _add_branches(self, ctx: Context, tid: bytes, txn: Txn, targets: list[tuple],
                      now: float, out: Out) -> bool:
        core = self.core
        added = False
        fr = (txn.fr / 1000.0) if txn.fr else self.fr
        socks = core.sockets
        in_si = socks[txn.src[3]] if 0 <= txn.src[3] < len(socks) else None
        for uri, dst, bflags, own, fixups, forced in targets:
            target = core.resolve_target(dst or uri)
            if target is None:
                log.error("tm: cannot resolve the destination of %s", dst or uri)
                continue
            proto, ip, port, si = target
            if forced is not None and forced.proto == proto and forced.family == si.family:
                si = forced                 # set_send_socket() / $fs
            idx = len(txn.branches)
            rport = ";rport" if ctx.options.get("add_local_rport") else ""
            via = f"SIP/2.0/{proto.upper()} {si.hostport};branch={branch_param(tid, idx)}{rport}"
            req = own or txn.request
            fixed = core.fix_request(fixups or txn.fixups, req, in_si, si)
            b = Branch(uri, proto, ip, port, self._sock_index(si), via, dst, bflags,
                       fixed if fixed != txn.request else b"")
            if proto == "udp":
                b.retr_iv = self.t1
                b.retr_at = now + self.t1
            b.fr_at = now + fr
            raw = branch_request(txn, b)
            if not core.onsend(ctx, proto, ip, port, si, raw):
                continue
            txn.branches.append(b)
            out.append(("send", proto, ip, port, b.sock, raw))
            added = True
        return added

    # ------------------------------------------------------------- CANCEL
    def cancel(self, ctx: Context) -> int | None:
        """A CANCEL: 200 for it, CANCEL to every pending branch of its INVITE.
        None when no INVITE transaction matches (relay it like any request)."""
        kt = self.key_of(ctx)
        if kt is None:
            return None
        key = kt[0][:-len(b"CANCEL")] + b"INVITE"
        tid = txn_id(key)
        found = False
        out: Out = []

        def fn(old: bytes | None) -> bytes | None:
            nonlocal found
            out.clear()
            if old is None:
                return None
            txn = Txn.decode(old)
            if txn.key != key:
                return old
            found = True
            txn.flags |= F_CANCELED
            self._cancel_branches(txn, -1, out)
            self._reschedule(txn, tid, out)
            return txn.encode()
        stored = self._update(tid, fn, out)
        if not found:
            return None
        if not stored:
            self.core.reply(ctx, 500, "Server Internal Error (out of memory)")
            return -1
        self.core.reply(ctx, 200, "canceling")
        self._run(tid, out)
        return 0

    def _cancel_branches(self, txn: Txn, keep: int, out: Out, only: int = -1) -> None:
        """CANCEL the pending branches but ``keep`` (or only branch ``only``)."""
        now = time.time()
        for i, b in enumerate(txn.branches):
            if i == keep or (only >= 0 and i != only) or b.state >= S.COMPLETED \
                    or b.cancel >= 2:
                continue
            st, acts = m.step(m.client_table(txn.invite), b.state, E.CANCEL)
            b.state = st
            for a in acts:
                if a is A.SEND_CANCEL:
                    self._cancel_branch(txn, i, now, out)
                elif a is A.MARK_CANCEL:
                    b.cancel = 1

    def _cancel_branch(self, txn: Txn, idx: int, now: float, out: Out) -> None:
        """Send a CANCEL on branch ``idx``; over UDP it is a client transaction
        of its own (RFC 3261 9.1, 17.1.2): re-sent from T1 doubling to T2 until
        it is answered or the branch ends."""
        b = txn.branches[idx]
        b.cancel = 2
        if b.proto == "udp":
            b.cancel_iv = self.t1
            b.cancel_at = now + self.t1
        out.append(("cancel", Txn.decode(txn.encode()), idx))

    def _hop_request(self, txn: Txn, b: Branch, method: str, to: str | None) -> bytes:
        """CANCEL or ACK for branch ``b`` (RFC 3261 9.1, 17.1.1.3)."""
        req = parse_message(branch_request(txn, b))
        lines = [f"{method} {b.uri} SIP/2.0", f"Via: {b.via}"]
        for name in ("Route",):
            for v in req.headers(name):
                lines.append(f"{name}: {v}")
        lines.append(f"From: {req.header('from')}")
        lines.append(f"To: {to if to is not None else req.header('to')}")
        lines.append(f"Call-ID: {req.call_id}")
        lines.append(f"CSeq: {req.cseq.num if req.cseq else 1} {method}")
        lines.append("Max-Forwards: 70")
        if self.core.server:
            lines.append(f"User-Agent: {self.core.server}")
        lines.append("Content-Length: 0")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8", "surrogateescape")

    def _send_cancel(self, txn: Txn, idx: int) -> None:
        b = txn.branches[idx]
        self._send(b.proto, b.host, b.port, b.sock, self._hop_request(txn, b, "CANCEL", None))

    def _send_ack(self, txn: Txn, idx: int, to: str) -> None:
        b = txn.branches[idx]
        self._send(b.proto, b.host, b.port, b.sock, self._hop_request(txn, b, "ACK", to))

    # ------------------------------------------------------------- replies
    def on_reply(self, ctx: Context) -> bool:
        """A reply from downstream: True if it belonged to a transaction of ours."""
        msg = ctx.msg
        via = msg.via
        hit = parse_branch(via.branch if via is not None else None)
        if hit is None:
            return False
        tid, idx = hit
        cseq = msg.cseq
        if cseq is None:
            return False
        self.stats.inc("tm:rpl_received")
        if cseq.method == "CANCEL":
            return self._cancel_answered(tid, idx)
        code = msg.status
        if self.has_onreply:
            raw = self.table.get(tid)
            if raw is None:
                return False
            txn0 = Txn.decode(raw)
            if txn0.on_reply:
                ctx.cache["tm_txn"] = tid
                ctx.cache["tm_branch"] = idx
                ctx.flags = txn0.mflags
                ctx.avps = txn0.avps
                if 0 <= idx < len(txn0.branches):
                    ctx.bflags = txn0.branches[idx].bflags
                self.routes.run("onreply", txn0.on_reply, ctx)
                if ctx.dropped and code < 200:
                    return True
        msg.remove_top_via()
        relayed = msg.serialize()
        to = msg.header("to") if code >= 300 else None
        now = time.time()
        out: Out = []
        matched = False

        def fn(old: bytes | None) -> bytes | None:
            nonlocal matched
            out.clear()
            if old is None:
                return None
            txn = Txn.decode(old)
            if idx >= len(txn.branches) or cseq.method != txn.method:
                return old
            matched = True
            self._branch_reply(tid, txn, idx, code, relayed, to, now, out)
            self._reschedule(txn, tid, out)
            new = txn.encode()
            self._send_up_now(out)
            return new
        if not self._update(tid, fn, out) or not matched:
            return matched
        self._run(tid, out)
        return True

    def _cancel_answered(self, tid: bytes, idx: int) -> bool:
        """A reply to our CANCEL: absorbed; its retransmissions stop."""
        known = False

        def fn(old: bytes | None) -> bytes | None:
            nonlocal known
            if old is None:
                return None
            known = True
            txn = Txn.decode(old)
            if idx >= len(txn.branches) or txn.branches[idx].cancel != 2:
                return old
            txn.branches[idx].cancel = 3
            txn.branches[idx].cancel_at = 0.0
            return txn.encode()
        self._update(tid, fn)
        return known

    def _branch_reply(self, tid: bytes, txn: Txn, idx: int, code: int, relayed: bytes,
                      to: str | None, now: float, out: Out) -> None:
        b = txn.branches[idx]
        st, acts = m.step(m.client_table(txn.invite), b.state, m.reply_event(code, False))
        b.state = st
        if code >= 200:
            b.code = code
        elif not b.code:
            b.code = code
        for a in acts:
            if a is A.STOP_RETR:
                b.retr_at = 0.0
            elif a is A.STOP_FR:
                b.fr_at = 0.0
            elif a is A.FR_INV:
                b.fr_at = now + ((txn.fr_inv / 1000.0) if txn.fr_inv else self.fr_inv)
            elif a is A.SEND_ACK:
                out.append(("ack", Txn.decode(txn.encode()), idx, to or ""))
            elif a is A.PASS_UP:
                self._pass_up(tid, txn, idx, code, relayed, now, out)

    def _pass_up(self, tid: bytes, txn: Txn, idx: int, code: int, relayed: bytes, now: float,
                 out: Out) -> None:
        b = txn.branches[idx]
        if code < 200:
            if b.cancel == 1:
                self._cancel_branch(txn, idx, now, out)
            if self.restart_fr and txn.invite and b.state == S.PROCEEDING:
                b.fr_at = now + ((txn.fr_inv / 1000.0) if txn.fr_inv else self.fr_inv)
            if code > 100 and txn.code < 200:
                self._server(txn, code, relayed, now, out)
            return
        if code < 300:
            self._server(txn, code, relayed, now, out)
            if txn.invite:
                self._cancel_branches(txn, idx, out)
            return
        b.reply = relayed
        if code >= 600 and txn.invite:
            # a global failure: the other branches are over too (RFC 3261 16.7 step 5)
            self._cancel_branches(txn, idx, out)
        if txn.flags & F_DROP_REPLIES and txn.flags & F_IN_FAILURE:
            return
        self._maybe_final(tid, txn, now, out)

    # ------------------------------------------------------ failure_route
    def _run_route(self, kind: str, name: str, ctx: Context) -> None:
        """Run a failure_route or branch_route; a script error is logged, the
        transaction goes on."""
        try:
            self.routes.run(kind, name, ctx)
        except ProtocolError as e:
            log.warning("tm: %s_route[%s]: %s", kind, name, e.reason)
        except Exception:
            log.exception("tm: %s_route[%s] failed", kind, name)

    def _ctx_for(self, txn: Txn, tid: bytes) -> Context:
        req = parse_message(txn.request)
        proto, ip, port, sock = txn.src
        socks = self.core.sockets
        si = socks[sock] if 0 <= sock < len(socks) else None
        ctx = Context(req, self.core.rt, ip, port, si.host if si else "", si.port if si else 0,
                      si.proto_id if si else 1)
        ctx.rcv = Dest(proto, ip, port, si)
        if 0 <= txn.fsock < len(socks):
            ctx.options["force_send_socket"] = socks[txn.fsock]
        ctx.flags = txn.mflags
        ctx.avps = {k: list(v) for k, v in txn.avps.items()}
        ctx.cache["tm_txn"] = tid
        ctx.cache["tm_reply_code"] = txn.best
        ctx.cache["tm_branch"] = len(txn.branches) - 1
        ctx.cache["tm_txn_copy"] = txn
        return ctx

    def _run_failure(self, tid: bytes, route: str) -> None:
        raw = self.table.get(tid)
        if raw is None:
            return
        txn = Txn.decode(raw)
        ctx = self._ctx_for(txn, tid)
        self._run_route("failure", route, ctx)
        now = time.time()
        out: Out = []

        def fn(old: bytes | None) -> bytes | None:
            out.clear()
            if old is None:
                return None
            txn = Txn.decode(old)
            txn.flags &= ~(F_IN_FAILURE | F_DROP_REPLIES)
            if txn.code < 200 and self._all_done(txn) and txn.branches:
                best = min(txn.branches, key=lambda b: _prio(b.code or 500))
                self._final_best(tid, txn, best, now, out)
            self._reschedule(txn, tid, out)
            return txn.encode()
        self._update(tid, fn, out)
        self._run(tid, out)

    # -------------------------------------------------------- local replies
    def local_reply(self, tid: bytes, code: int, reason: str, ctx: Context | None = None,
                    body: bytes = b"", headers: tuple[str, ...] = ()) -> bool:
        """A reply generated by tm (t_reply, 408, 487, 500) sent statefully."""
        if ctx is None or not ctx.msg.is_request:
            raw0 = self.table.get(tid)
            if raw0 is None:
                return False
            txn0 = Txn.decode(raw0)
            ctx = self._ctx_for(txn0, tid)
        raw = build_reply(ctx.msg, code, reason, to_tag=to_tag(tid), server=self.core.server,
                          received=ctx.src_ip, rport=ctx.src_port, body=body,
                          headers=(*headers, *(ctx.cache.get("reply_headers") or ())))
        now = time.time()
        out: Out = []
        sent = False

        def fn(old: bytes | None) -> bytes | None:
            nonlocal sent
            out.clear()
            if old is None:
                return None
            txn = Txn.decode(old)
            if txn.code >= 200 and code >= 200 and not (200 <= code < 300 <= txn.code):
                return old
            sent = self._server(txn, code, raw, now, out, local=True)
            if sent and code >= 200:
                for b in txn.branches:
                    b.retr_at = 0.0
                    b.fr_at = 0.0
                    if b.state < S.COMPLETED:
                        b.state = S.TERMINATED
            self._reschedule(txn, tid, out)
            return txn.encode()
        if not self._update(tid, fn, out):
            return False
        self._run(tid, out)
        return sent

    # --------------------------------------------------------------- timers
    def timer_tick(self, now: float) -> None:
        """Run from the timer process: pop elapsed wheel slots, fire timers."""
        slot = int(now / TICK)
        first = self.last_slot + 1 if self.last_slot else slot - 200
        self.last_slot = slot
        due: list[bytes] = []
        popped: list[bytes] = []

        def pop(old: bytes | None) -> None:
            if old:
                popped.append(old)
            return None
        update, pack = self.wheel.update, _slot.pack
        for s in range(max(first, slot - 20000), slot + 1):
            update(pack(s), pop)
        for blob in popped:
            for i in range(0, len(blob), 8):
                due.append(blob[i:i + 8])
        seen: set[bytes] = set()
        batch: dict[int, bytes] = {}
        self.batch = batch
        try:
            for tid in due:
                if tid not in seen:
                    seen.add(tid)
                    self.fire(tid, now)
        finally:
            self.batch = None
            for n, tids in batch.items():
                self._queue(n, tids)

    def fire(self, tid: bytes, now: float) -> None:
        out: Out = []

        def fn(old: bytes | None) -> bytes | None:
            out.clear()
            if old is None:
                return None
            txn = Txn.decode(old)
            nd = txn.next_due()
            if not nd or nd > now:
                # a stale entry (the deadline moved since it was queued): queue
                # the next deadline unless the record knows of an entry for it,
                # and leave the record as it is (no rewrite)
                if nd and not now < txn.sched <= nd:
                    out.append(("sched", tid, nd))
                return old
            if txn.sched <= now + TICK:
                txn.sched = 0.0
            if self._timers(tid, txn, now, out):
                out.append(("freed", bool(txn.flags & F_WAITING)))
                return None
            self._reschedule(txn, tid, out)
            return txn.encode()
        self._update(tid, fn, out)
        self._run(tid, out)

    def _timers(self, tid: bytes, txn: Txn, now: float, out: Out) -> bool:
        """Feed every due timer event; True when the transaction is over."""
        inv = txn.invite
        if txn.retr_at and txn.retr_at <= now:
            st, acts = m.step(m.server_table(inv), txn.state, E.TIMER_RETR)
            txn.state = st
            if A.RETRANSMIT in acts and txn.reply:
                out.append(("up", txn.proto, txn.host, txn.port, txn.sock, txn.reply))
            txn.retr_iv = min(txn.retr_iv * 2, self.t2) if A.BACKOFF in acts else txn.retr_iv
            txn.retr_at = now + txn.retr_iv if A.RETRANSMIT in acts else 0.0
        if txn.end_at and txn.end_at <= now:
            st, acts = m.step(m.server_table(inv), txn.state, E.TIMER_FR)
            txn.state = st
            txn.end_at = 0.0
            if A.DELETE in acts:
                return True
        table = m.client_table(inv)
        for i, b in enumerate(txn.branches):
            if b.retr_at and b.retr_at <= now:
                st, acts = m.step(table, b.state, E.TIMER_RETR)
                b.state = st
                if A.RETRANSMIT in acts:
                    out.append(("send", b.proto, b.host, b.port, b.sock, branch_request(txn, b)))
                    if A.BACKOFF in acts:
                        b.retr_iv = b.retr_iv * 2 if inv else min(b.retr_iv * 2, self.t2)
                    if not inv and b.state == S.PROCEEDING:
                        b.retr_iv = self.t2
                    b.retr_at = now + b.retr_iv
                else:
                    b.retr_at = 0.0
            if b.cancel_at and b.cancel_at <= now:
                b.cancel_at = 0.0
                if b.cancel == 2 and b.state < S.COMPLETED:
                    out.append(("cancel", Txn.decode(txn.encode()), i))
                    b.cancel_iv = min(b.cancel_iv * 2, self.t2)
                    b.cancel_at = now + b.cancel_iv
            if b.fr_at and b.fr_at <= now:
                b.fr_at = 0.0
                st, acts = m.step(table, b.state, E.TIMER_FR)
                b.state = st
                for a in acts:
                    if a is A.STOP_RETR:
                        b.retr_at = 0.0
                    elif a is A.SEND_CANCEL and b.cancel < 2:
                        self._cancel_branch(txn, i, now, out)
                    elif a is A.TIMEOUT:
                        b.retr_at = 0.0
                        b.code = 487 if txn.flags & F_CANCELED else 408
                        b.reply = b""
                self._maybe_final(tid, txn, now, out)
        if txn.wait_at and txn.wait_at <= now and txn.code >= 200 \
                and not (inv and txn.state == S.COMPLETED):
            return True
        return False

    # ------------------------------------------------------------ for RPC/PVs
    def flag(self, tid: bytes, fn: Callable[[Txn], None]) -> bool:
        """Change a transaction in place (t_drop_replies, t_set_fr ...)."""
        done = False

        def upd(old: bytes | None) -> bytes | None:
            nonlocal done
            if old is None:
                return None
            txn = Txn.decode(old)
            fn(txn)
            done = True
            return txn.encode()
        return self._update(tid, upd) and done


def _merge_challenges(raw: bytes, others: list[bytes]) -> bytes:
    """The best 401/407 with the WWW-/Proxy-Authenticate headers of the others
    (RFC 3261 16.7 step 7)."""
    extra = []
    for o in others:
        for line in o.split(b"\r\n"):
            low = line[:20].lower()
            if low.startswith((b"www-authenticate:", b"proxy-authenticate:")):
                extra.append(line)
    if not extra:
        return raw
    end = raw.index(b"\r\n")
    return raw[:end] + b"\r\n" + b"\r\n".join(extra) + raw[end:]


def cancel_branches_of(engine: Engine, tid: bytes, which: str = "all", idx: int = -1) -> None:
    """tmx t_cancel_branches(): "all" pending branches, all but branch
    ``idx`` ("others") or only it ("this")."""
    keep = idx if which == "others" else -1
    only = idx if which == "this" else -1
    if which != "all" and idx < 0:
        return
    out: Out = []

    def fn(old: bytes | None) -> bytes | None:
        out.clear()
        if old is None:
            return None
        txn = Txn.decode(old)
        engine._cancel_branches(txn, keep, out, only)
        engine._reschedule(txn, tid, out)
        return txn.encode()
    engine._update(tid, fn, out)
    engine._run(tid, out)
