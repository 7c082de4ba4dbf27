"""A transaction as it lives in shared memory, and how messages find it.

Theory of operation. A transaction is one record of the shm table ``tm``,
keyed by an 8-byte id. The id is a hash of the request's matching key
(RFC 3261 17.2.3: top Via branch, sent-by and method; for a branch without
the magic cookie the pre-3261 fields), so a retransmitted request, a CANCEL
(method class CANCEL, own id) or the ACK of a non-2xx reply (method class
INVITE, the INVITE's id) is found with one lookup from any worker; the full
key is stored in the record and compared. Our branches downstream are
``z9hG4bK`` + the id in hex + ``.`` + the branch index, so a reply leads
straight to its record and branch as well.

The record is ``marshal`` of a flat tuple: builtin types only (it executes
nothing when loaded, unlike pickle), one C call each way -- cheaper than a
hand-written ``struct`` layout for a record that holds several byte strings
and a variable list of branches. Every process runs the same interpreter, so
the format is the same everywhere. The request is stored once, already
edited by the script (Record-Route, received=), without our Via: a branch's
request is that text with its Request-URI and Via put in front
(:func:`branch_request`), rebuilt when it is retransmitted or cancelled.
"""

from __future__ import annotations

import hashlib
import marshal

from ser.mods.tm.machine import S

_COMPLETED = int(S.COMPLETED)

MAGIC = "z9hG4bK"
ID_HEX = 16
_PREFIX_LEN = len(MAGIC) + ID_HEX


def method_class(method: str) -> str:
    """The method a request matches transactions by (17.2.3): an ACK belongs
    to its INVITE."""
    return "INVITE" if method == "ACK" else method


def match_key(msg: object) -> bytes | None:
    """The 17.2.3 matching key of a request, or None without a usable Via."""
    via = msg.via  # type: ignore[attr-defined]
    if via is None:
        return None
    method = method_class(msg.method)  # type: ignore[attr-defined]
    branch = via.branch or ""
    if branch.startswith(MAGIC):
        key = f"1\0{branch}\0{via.host.lower()}:{via.port or 5060}\0{method}"
    else:
        frm = msg.from_  # type: ignore[attr-defined]
        cseq = msg.cseq  # type: ignore[attr-defined]
        key = "\0".join(("0", msg.ruri, (frm.tag or "") if frm else "",  # type: ignore[attr-defined]
                         msg.call_id or "", str(cseq.num) if cseq else "",  # type: ignore[attr-defined]
                         via.text, method))
    return key.encode("utf-8", "surrogateescape")


def txn_id(key: bytes) -> bytes:
    return hashlib.blake2b(key, digest_size=8).digest()


def branch_param(tid: bytes, idx: int) -> str:
    return f"{MAGIC}{tid.hex()}.{idx}"


def parse_branch(branch: str | None) -> tuple[bytes, int] | None:
    """(id, branch index) of one of our branch parameters, else None."""
    if not branch or len(branch) < _PREFIX_LEN + 2 or not branch.startswith(MAGIC) \
            or branch[_PREFIX_LEN] != ".":
        return None
    try:
        return bytes.fromhex(branch[len(MAGIC):_PREFIX_LEN]), int(branch[_PREFIX_LEN + 1:])
    except ValueError:
        return None


class Branch:
    """One client transaction (a forwarding target)."""

    __slots__ = ("state", "uri", "proto", "host", "port", "sock", "via", "retr_at", "retr_iv",
                 "fr_at", "code", "reply", "cancel", "bflags", "dst_uri", "req", "cancel_at",
                 "cancel_iv")

    def __init__(self, uri: str, proto: str, host: str, port: int, sock: int, via: str,
                 dst_uri: str = "", bflags: int = 0, req: bytes = b"") -> None:
        self.state = 0
        self.uri = uri
        self.proto = proto
        self.host = host
        self.port = port
        self.sock = sock           # index into the process's socket list (same everywhere)
        self.via = via             # our Via value for this branch
        self.retr_at = 0.0         # next retransmission (A/E), 0 = none
        self.retr_iv = 0.0
        self.fr_at = 0.0           # final-response deadline (B/F), 0 = none
        self.code = 0              # last reply code (408 for a local timeout)
        self.reply = b""           # the final reply, ready to relay upstream
        self.cancel = 0            # 0 no, 1 to send after a provisional, 2 sent, 3 answered
        self.cancel_at = 0.0       # next retransmission of our CANCEL (UDP), 0 = none
        self.cancel_iv = 0.0
        self.bflags = bflags
        self.dst_uri = dst_uri
        self.req = req             # own request (branch_route, double RR); b"": txn's

    def to_tuple(self) -> tuple:
        return (int(self.state), self.uri, self.proto, self.host, self.port, self.sock, self.via,
                self.retr_at, self.retr_iv, self.fr_at, self.code, self.reply, self.cancel,
                self.bflags, self.dst_uri, self.req, self.cancel_at, self.cancel_iv)

    @classmethod
    def from_tuple(cls, t: tuple) -> Branch:
        b = cls.__new__(cls)
        (b.state, b.uri, b.proto, b.host, b.port, b.sock, b.via, b.retr_at, b.retr_iv,
         b.fr_at, b.code, b.reply, b.cancel, b.bflags, b.dst_uri, b.req, b.cancel_at,
         b.cancel_iv) = t
        return b


# transaction flags
F_INVITE = 1
F_CANCELED = 2          # a CANCEL came for it
F_IN_FAILURE = 4        # a worker runs its failure_route now
F_WAITING = 8           # counted in tm:waiting
F_LOCAL_FINAL = 16      # the final reply was generated by us
F_DROP_REPLIES = 32     # t_drop_replies: failure_route replies are not aggregated


class Txn:
    """The whole transaction (server side and its branches)."""

    __slots__ = ("key", "flags", "method", "created", "state", "code", "reply", "proto", "host",
                 "port", "sock", "retr_at", "retr_iv", "end_at", "wait_at", "request",
                 "src", "on_failure", "on_reply", "on_branch", "mflags", "fr", "fr_inv",
                 "avps", "branches", "sched", "best", "fixups", "fsock")

    def __init__(self, key: bytes, method: str, created: float, request: bytes,
                 src: tuple, dest: tuple) -> None:
        self.key = key
        self.flags = F_INVITE if method == "INVITE" else 0
        self.method = method
        self.created = created
        self.state = 1 if method == "INVITE" else 0     # PROCEEDING / TRYING (machine.S)
        self.code = 0              # last reply code sent upstream
        self.reply = b""           # last reply sent upstream (re-sent to retransmissions)
        self.proto, self.host, self.port, self.sock = dest   # where replies go
        self.retr_at = 0.0         # G
        self.retr_iv = 0.0
        self.end_at = 0.0          # H
        self.wait_at = 0.0         # delete after wt_timer
        self.request = request     # the request as edited by the script, without our Via
        self.src = src             # (proto, ip, port, sock index) it came from
        self.on_failure = ""
        self.on_reply = ""
        self.on_branch = ""
        self.mflags = 0
        self.fr = 0                # per-transaction fr_timer / fr_inv_timer (ms), 0 default
        self.fr_inv = 0
        self.avps: dict = {}
        self.branches: list[Branch] = []
        self.sched = 0.0           # the timer-wheel time it is queued at
        self.best = 0              # code picked for failure_route ($T_reply_code)
        self.fixups: list = []     # send-time edits of the request (Core.fix_request)
        self.fsock = -1            # socket index forced by set_send_socket(), -1 none

    @property
    def invite(self) -> bool:
        return bool(self.flags & F_INVITE)

    def encode(self) -> bytes:
        return marshal.dumps((
            self.key, self.flags, self.method, self.created, int(self.state), self.code,
            self.reply,
            self.proto, self.host, self.port, self.sock, self.retr_at, self.retr_iv,
            self.end_at, self.wait_at, self.request, self.src, self.on_failure, self.on_reply,
            self.on_branch, self.mflags, self.fr, self.fr_inv, self.avps,
            [b.to_tuple() for b in self.branches], self.sched, self.best, self.fixups, self.fsock))

    @classmethod
    def decode(cls, data: bytes) -> Txn:
        t = cls.__new__(cls)
        (t.key, t.flags, t.method, t.created, t.state, t.code, t.reply, t.proto, t.host,
         t.port, t.sock, t.retr_at, t.retr_iv, t.end_at, t.wait_at, t.request, t.src,
         t.on_failure, t.on_reply, t.on_branch, t.mflags, t.fr, t.fr_inv, t.avps, branches,
         t.sched, t.best, t.fixups, t.fsock) = marshal.loads(data)
        t.branches = [Branch.from_tuple(b) for b in branches]
        return t

    def next_due(self) -> float:
        """The earliest timer of the transaction (0 = none). ``wait_at`` counts
        once the transaction may end: a final reply sent, and for an INVITE
        with a non-2xx final, its ACK or timer H (until then G and H run)."""
        due = [d for d in (self.retr_at, self.end_at) if d]
        if self.wait_at and self.code >= 200 and not (self.flags & F_INVITE
                                                       and self.state == _COMPLETED):
            due.append(self.wait_at)
        for b in self.branches:
            if b.retr_at:
                due.append(b.retr_at)
            if b.fr_at:
                due.append(b.fr_at)
            if b.cancel_at:
                due.append(b.cancel_at)
        return min(due) if due else 0.0


def branch_request(txn: Txn, b: Branch) -> bytes:
    """The bytes of branch ``b``'s request: the stored request with the
    branch's Request-URI and our Via in front."""
    req = b.req or txn.request
    end = req.index(b"\r\n")
    first = f"{txn.method} {b.uri} SIP/2.0\r\nVia: {b.via}".encode("utf-8", "surrogateescape")
    return first + req[end:]
