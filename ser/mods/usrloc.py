"""usrloc: the user location service (Kamailio's usrloc module).

Theory of operation
-------------------
A *domain* is a location table (``"location"``): its name is the DB table.
In memory (``db_mode`` 0, 1, 2) every AoR is one record of the shared table
``usrloc`` (2^``hash_size`` buckets), keyed ``domain NUL aor``, so every
worker sees every registration. The record's value holds all the AoR's
contacts, each a fixed struct followed by its strings (no pickle)::

    value   = min_expires(<d) contact*
    contact = expires, last_modified (<d), q (q*1000, -1 unset), cseq, flags,
              cflags, methods, reg_id, state (<iiIIIiB), 7 string lengths (<H)
              then c, received, path, user_agent, socket, ruid, instance

A change is one atomic read-modify-write of that record under its bucket
lock (:meth:`UsrLoc.modify`); the record's shm expiry is its latest
contact's, so the table drops an AoR whose contacts all expired, and the
timer process removes single expired contacts. It sweeps the table in
slices, one a second, the whole once per ``timer_interval`` (so 1M contacts
never stall the timer process, which also runs tm's timers); a
``Table.sweep`` reads only the header and the leading ``min_expires`` word
of each record and copies the keys of the due (and, db_mode 1 and 2, the
dirty) ones, which are then rewritten (written).

Database modes (``db_mode``):

* 0 -- memory only.
* 1 -- write-through: the worker writes the change to the DB right after the
  memory change. If the DB is down the change stays in memory marked dirty
  (deletions in the shm table ``usrloc_gone``), the request gets 500, and
  the timer writes it once the DB is back: nothing stored is lost.
* 2 -- write-back: changes are marked dirty and the timer process writes them
  within ``timer_interval`` seconds, as its sweep reaches them (and the
  master at shutdown); deletions within a second. The DB's expired rows are
  deleted once per ``timer_interval``.
* 3 -- DB only: no memory copy; every lookup and save is SQL, so several ser
  nodes can share one database.

With 1 and 2 the master loads the table at start (``mod_init``), so a
restart loses no registration. Every statement is parameterized; the table
name (the domain) is checked to be an identifier at load time.
"""

from __future__ import annotations

import datetime as dt
import itertools
import math
import os
import re
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ser.core.db import Db, DbError, DbUnavailable, check_url
from ser.core.db.schema import LOCATION, ensure_table
from ser.core.log import log
from ser.core.module import Module, Param, RPCMethod, Timer
from ser.core.rpc import RpcError

TABLE = "usrloc"
GONE_TABLE = "usrloc_gone"
DOMAIN_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
Q_UNSPECIFIED = -1
ALL_METHODS = 0xFFFFFFFF
SYNC, DIRTY = 0, 1
REC_DIRTY = 1                    # record flag: some contact is dirty

METHOD_BITS = {
    "INVITE": 1, "CANCEL": 2, "ACK": 4, "BYE": 8, "INFO": 16, "REGISTER": 32,
    "SUBSCRIBE": 64, "NOTIFY": 128, "MESSAGE": 256, "OPTIONS": 512, "PRACK": 1024,
    "UPDATE": 2048, "REFER": 4096, "PUBLISH": 8192, "KDMQ": 16384,
}
METHOD_OTHER = 1 << 31

_MIN = struct.Struct("=d")      # native order: Table.sweep reads it as a float64 word
_CH = struct.Struct("<ddiiIIIiB7H")
_H = struct.Struct("<H")
_STR_FIELDS = ("c", "received", "path", "user_agent", "socket", "ruid", "instance")
_EPOCH = dt.datetime(1970, 1, 1, 0, 0, 1)
_ruid_seq = itertools.count(1)
_pid = [f"{os.getpid():x}"]     # this process's pid in hex, renewed in a forked child
os.register_at_fork(after_in_child=lambda: _pid.__setitem__(0, f"{os.getpid():x}"))


def method_bit(method: str) -> int:
    return METHOD_BITS.get(method.upper(), METHOD_OTHER)


@dataclass(slots=True)
class Ucontact:
    """One binding of an AoR."""
    c: str
    expires: float = 0.0           # absolute, time.time(); 0 = permanent
    q: int = Q_UNSPECIFIED         # q * 1000
    callid: str = ""
    cseq: int = 0
    flags: int = 0
    cflags: int = 0
    methods: int = ALL_METHODS
    reg_id: int = 0
    last_modified: float = 0.0
    received: str = ""
    path: str = ""
    user_agent: str = ""
    socket: str = ""
    ruid: str = ""
    instance: str = ""
    state: int = SYNC

    def alive(self, now: float) -> bool:
        return self.expires == 0 or self.expires > now

    @property
    def qf(self) -> float:
        """q as a float, 1.0 when unset (how forks are ordered)."""
        return 1.0 if self.q < 0 else self.q / 1000


def contact_order(c: Ucontact) -> tuple[float, float]:
    """Sort key of an AoR's contacts: highest q first, then newest first."""
    return -c.qf, -c.last_modified


def new_ruid() -> str:
    return f"uloc-{int(time.time()):x}-{_pid[0]}-{next(_ruid_seq):x}"


def _enc(s: str) -> bytes:
    return s.encode("utf-8", "surrogateescape")


def encode(contacts: list[Ucontact]) -> bytes:
    """The record value of an AoR's contacts."""
    exps = [c.expires for c in contacts if c.expires]
    parts = [_MIN.pack(min(exps) if exps else 0.0)]
    for c in contacts:
        strs = [s.encode("utf-8", "surrogateescape") for s in (
            c.c, c.received, c.path, c.user_agent, c.socket, c.ruid, c.instance)]
        cid = c.callid.encode("utf-8", "surrogateescape")
        parts.append(_CH.pack(c.expires, c.last_modified, c.q, c.cseq, c.flags, c.cflags,
                              c.methods, c.reg_id, c.state, *map(len, strs)))
        parts.append(_H.pack(len(cid)))
        parts.append(cid)
        parts += strs
    return b"".join(parts)


def decode(value: bytes) -> list[Ucontact]:
    out = []
    off = _MIN.size
    n = len(value)
    while off < n:
        (exp, lm, q, cseq, flags, cflags, methods, reg_id, state,
         *lens) = _CH.unpack_from(value, off)
        off += _CH.size
        (cl,) = _H.unpack_from(value, off)
        off += 2
        callid = value[off:off + cl].decode("utf-8", "surrogateescape")
        off += cl
        strs = []
        for ln in lens:
            strs.append(value[off:off + ln].decode("utf-8", "surrogateescape"))
            off += ln
        out.append(Ucontact(strs[0], exp, q, callid, cseq, flags, cflags, methods, reg_id, lm,
                            strs[1], strs[2], strs[3], strs[4], strs[5], strs[6], state))
    return out


def min_expires(value: bytes) -> float:
    return float(_MIN.unpack_from(value)[0])


def _key(domain: str, aor: str) -> bytes:
    return _enc(f"{domain}\0{aor}")


def _ts(t: float) -> dt.datetime:
    """An epoch time as the naive local datetime Kamailio stores."""
    if not t:
        return _EPOCH
    return dt.datetime.fromtimestamp(int(t))


def _epoch(v: Any) -> float:
    if isinstance(v, str):
        v = dt.datetime.strptime(v[:19], "%Y-%m-%d %H:%M:%S")
    if v is None or v <= _EPOCH:
        return 0.0
    return float(v.timestamp())


@dataclass
class Change:
    """What one modify did: contacts inserted, updated and deleted."""
    inserted: list[Ucontact] = field(default_factory=list)
    updated: list[Ucontact] = field(default_factory=list)
    deleted: list[Ucontact] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.inserted or self.updated or self.deleted)


def diff(old: list[Ucontact], new: list[Ucontact]) -> Change:
    before = {c.ruid: c for c in old}
    ch = Change()
    for c in new:
        o = before.pop(c.ruid, None)
        if o is None:
            ch.inserted.append(c)
        elif o != c:
            ch.updated.append(c)
    ch.deleted = list(before.values())
    return ch


_COLS = ("ruid", "username", "domain", "contact", "received", "path", "expires", "q",
         "callid", "cseq", "last_modified", "flags", "cflags", "user_agent", "socket",
         "methods", "instance", "reg_id")


class UsrLoc:
    """The location service of one ser instance (held in ``inst.state["ul"]``)."""

    def __init__(self, params: dict[str, Any], shm: Any) -> None:
        self.db_mode = int(params["db_mode"])
        self.use_domain = bool(params["use_domain"])
        self.case_sensitive = bool(params["case_sensitive"])
        self.shm = shm
        self.db: Db | None = None
        if self.db_mode:
            self.db = Db(str(params["db_url"]), what="usrloc")
        self.stats = shm.stats if shm is not None else None

    # -- helpers --------------------------------------------------------------------
    @property
    def table(self) -> Any:
        return self.shm.table(TABLE)

    @property
    def gone(self) -> Any:
        return self.shm.table(GONE_TABLE)

    def aor_of(self, user: str | None, host: str) -> str:
        user = user or ""
        aor = f"{user}@{host.lower()}" if self.use_domain else user
        return aor if self.case_sensitive else aor.lower()

    def _split(self, aor: str) -> tuple[str, str | None]:
        if self.use_domain and "@" in aor:
            u, _, d = aor.rpartition("@")
            return u, d
        return aor, None

    def _stat(self, name: str, n: int) -> None:
        if self.stats is not None and n:
            try:
                self.stats.inc(name, n)
            except Exception:  # noqa: BLE001 - statistics never fail a request
                pass

    # -- reading -------------------------------------------------------------------
    def get(self, domain: str, aor: str, now: float | None = None) -> list[Ucontact]:
        """The live contacts of ``aor``, highest q first, then newest first.
        Raises DbUnavailable / DbError in db_mode 3."""
        now = time.time() if now is None else now
        if self.db_mode == 3:
            cs = self._db_get(domain, aor)
        else:
            raw = self.table.get(_key(domain, aor))
            cs = decode(raw) if raw else []
        live = [c for c in cs if c.alive(now)]
        live.sort(key=contact_order)
        return live

    def aors(self, domain: str) -> dict[str, list[Ucontact]]:
        """Every AoR of ``domain`` with its live contacts (dumps)."""
        now = time.time()
        out: dict[str, list[Ucontact]] = {}
        if self.db_mode == 3:
            assert self.db is not None
            rows = self.db.query(f"SELECT {', '.join(_COLS)} FROM {domain} "
                                 "WHERE expires > ? OR expires <= ?", (_ts(now), _EPOCH))
            for r in rows:
                aor, c = self._row(r)
                out.setdefault(aor, []).append(c)
            return out
        prefix = _enc(domain + "\0")
        for rec in self.table.snapshot():
            if rec.key.startswith(prefix):
                live = [c for c in decode(rec.value) if c.alive(now)]
                if live:
                    out[rec.key[len(prefix):].decode("utf-8", "surrogateescape")] = live
        return out

    # -- changing ------------------------------------------------------------------
    def modify(self, domain: str, aor: str,
               fn: Callable[[list[Ucontact]], tuple[list[Ucontact], Any]],
               mem_only: bool = False) -> tuple[list[Ucontact], Any]:
        """Atomically replace the contacts of ``aor`` by ``fn(live_contacts)``
        -> (new contacts, result); returns (new contacts, result). ``fn`` may
        raise to abort (nothing changes). DbUnavailable/DbError when the DB
        write fails (the memory change is kept and written later)."""
        if self.db_mode == 3:
            return self._db_modify(domain, aor, fn)
        now = time.time()
        dirty = self.db_mode == 2 and not mem_only
        box: dict[str, Any] = {}

        def step(raw: bytes | None) -> tuple[bytes, float] | None:
            if raw:
                old = [c for c in decode(raw) if c.alive(now)]
                if len(old) > 1:
                    old.sort(key=contact_order)
            else:
                old = []
            new, result = fn(list(old))
            ch = diff(old, new)
            if dirty:
                for c in ch.inserted + ch.updated:
                    c.state = DIRTY
            box["new"], box["result"], box["change"] = new, result, ch
            if not new:
                return None
            # the record lives as long as its longest-lived contact
            exps = [c.expires for c in new]
            return encode(new), 0.0 if 0 in exps else max(exps)

        self.table.update(_key(domain, aor), step, flags=REC_DIRTY if dirty else None)
        new, result, ch = box["new"], box["result"], box["change"]
        self._stat("usrloc:location-contacts", len(ch.inserted) - len(ch.deleted))
        if not ch or mem_only or self.db_mode == 0:
            return new, result
        if self.db_mode == 2:
            self._remember_gone(domain, ch.deleted)
            return new, result
        try:
            self._db_write(domain, aor, ch)
        except DbError:
            self._mark_dirty(domain, aor, ch)
            raise
        return new, result

    def _remember_gone(self, domain: str, deleted: list[Ucontact]) -> None:
        for c in deleted:
            if c.ruid:
                self.gone.set(_enc(c.ruid), _enc(domain))

    def _mark_dirty(self, domain: str, aor: str, ch: Change) -> None:
        self._remember_gone(domain, ch.deleted)
        ruids = {c.ruid for c in ch.inserted + ch.updated}
        if not ruids:
            return

        def mark(raw: bytes | None) -> bytes | None:
            if raw is None:
                return None
            cs = decode(raw)
            for c in cs:
                if c.ruid in ruids:
                    c.state = DIRTY
            return encode(cs)
        self.table.update(_key(domain, aor), mark, flags=REC_DIRTY)

    def delete_aor(self, domain: str, aor: str) -> int:
        """Remove every contact of ``aor``; returns how many there were."""
        _, n = self.modify(domain, aor, lambda old: ([], len(old)))
        return int(n)

    # -- the database ----------------------------------------------------------------
    def _row_values(self, domain: str, aor: str, c: Ucontact) -> tuple[Any, ...]:
        user, dom = self._split(aor)
        return (c.ruid, user, dom, c.c, c.received or None, c.path or None, _ts(c.expires),
                c.qf if c.q >= 0 else -1.0, c.callid, c.cseq, _ts(c.last_modified), c.flags,
                c.cflags, c.user_agent, c.socket or None,
                c.methods if c.methods != ALL_METHODS else -1, c.instance or None, c.reg_id)

    def _row(self, r: tuple[Any, ...]) -> tuple[str, Ucontact]:
        (ruid, user, dom, contact, received, path, expires, q, callid, cseq, lm, flags, cflags,
         ua, sock, methods, instance, reg_id) = r
        aor = f"{user}@{dom}" if self.use_domain and dom else user
        qi = Q_UNSPECIFIED if q is None or q < 0 else int(round(q * 1000))
        meth = ALL_METHODS if methods is None or methods < 0 else int(methods)
        return aor, Ucontact(contact, _epoch(expires), qi, callid or "", int(cseq or 0),
                             int(flags or 0), int(cflags or 0), meth, int(reg_id or 0),
                             _epoch(lm), received or "", path or "", ua or "", sock or "",
                             ruid or "", instance or "")

    def _where(self, aor: str) -> tuple[str, tuple[Any, ...]]:
        user, dom = self._split(aor)
        if dom is None:
            return "username = ?", (user,)
        return "username = ? AND domain = ?", (user, dom)

    def _db_get(self, domain: str, aor: str) -> list[Ucontact]:
        assert self.db is not None
        where, args = self._where(aor)
        rows = self.db.query(f"SELECT {', '.join(_COLS)} FROM {domain} WHERE {where}", args)
        return [self._row(r)[1] for r in rows]

    def _db_write(self, domain: str, aor: str, ch: Change) -> None:
        assert self.db is not None
        db = self.db
        ins = f"INSERT INTO {domain} ({', '.join(_COLS)}) VALUES ({', '.join('?' * len(_COLS))})"
        for c in ch.deleted:
            db.execute(f"DELETE FROM {domain} WHERE ruid = ?", (c.ruid,))
        for c in ch.updated:
            vals = self._row_values(domain, aor, c)
            sets = ", ".join(f"{n} = ?" for n in _COLS[1:])
            if db.execute(f"UPDATE {domain} SET {sets} WHERE ruid = ?", (*vals[1:], c.ruid)) == 0:
                db.execute(ins, vals)
        for c in ch.inserted:
            db.execute(ins, self._row_values(domain, aor, c))

    def _db_modify(self, domain: str, aor: str,
                   fn: Callable[[list[Ucontact]], tuple[list[Ucontact], Any]]
                   ) -> tuple[list[Ucontact], Any]:
        now = time.time()
        old = [c for c in self._db_get(domain, aor) if c.alive(now)]
        old.sort(key=contact_order)
        new, result = fn(list(old))
        self._db_write(domain, aor, diff(old, new))
        return new, result

    def load(self, domains: tuple[str, ...] = ("location",)) -> int:
        """db_mode 1/2: read the DB into shared memory (master, before fork)."""
        assert self.db is not None
        n = 0
        now = time.time()
        for domain in domains:
            ensure_table(self.db, LOCATION, domain)
            groups: dict[str, list[Ucontact]] = {}
            for r in self.db.query(f"SELECT {', '.join(_COLS)} FROM {domain}"):
                aor, c = self._row(r)
                if c.alive(now):
                    groups.setdefault(aor, []).append(c)
            for aor, cs in groups.items():
                exps = [c.expires for c in cs]
                self.table.set(_key(domain, aor), encode(cs),
                               expires=0.0 if 0 in exps else max(exps))
                n += len(cs)
        self._stat("usrloc:location-contacts", n)
        return n

    def flush(self, keys: list[bytes] | None = None) -> int:
        """Write dirty contacts and deletions to the DB (db_mode 1, 2): of the
        records ``keys`` (found dirty by the timer's sweep), else of every
        record. Returns the rows written. DbError when the DB is down."""
        if self.db is None or self.db_mode == 3:
            return 0
        n = 0
        for rec in self.gone.snapshot():
            self.db.execute(f"DELETE FROM {rec.value.decode()} WHERE ruid = ?",
                            (rec.key.decode("utf-8", "surrogateescape"),))
            self.gone.delete(rec.key)
            n += 1
        recs = self.table.snapshot() if keys is None else \
            [r for r in map(self.table.get_record, keys) if r is not None]
        for rec in recs:
            if not rec.flags & REC_DIRTY:
                continue
            domain, _, aor = rec.key.decode("utf-8", "surrogateescape").partition("\0")
            dirty = [c for c in decode(rec.value) if c.state == DIRTY]
            if dirty:
                self._db_write(domain, aor, Change(updated=dirty))
                n += len(dirty)
            done = {(c.ruid, c.last_modified) for c in dirty}

            def clean(raw: bytes | None, done: set[tuple[str, float]] = done) -> bytes | None:
                if raw is None:
                    return None
                cs = decode(raw)
                for c in cs:
                    if (c.ruid, c.last_modified) in done:
                        c.state = SYNC
                return encode(cs)
            left = self.table.update(rec.key, clean, flags=0)
            if left is not None and any(c.state == DIRTY for c in decode(left)):
                self.table.update(rec.key, lambda raw: raw, flags=REC_DIRTY)
        return n

    def db_expire(self, domain: str, now: float) -> int:
        assert self.db is not None
        return self.db.execute(f"DELETE FROM {domain} WHERE expires < ? AND expires > ?",
                               (_ts(now), _EPOCH))

    # -- the timer -------------------------------------------------------------------
    def timer(self, now: float, part: tuple[int, int] | None = None,
              db_expire: bool = True) -> None:
        """Expire contacts, write dirty ones (db_mode 1, 2), expire DB rows.
        One sweep of the table -- or of the buckets ``part`` (first, count) --
        finds the AoRs whose ``min_expires`` is due and the dirty ones; only
        those are read. ``db_expire``: also delete the DB's expired rows."""
        dirty: list[bytes] | None = None
        if self.db_mode != 3:
            sw = self.table.sweep(now, flag_mask=REC_DIRTY if self.db_mode in (1, 2) else 0,
                                  buckets=part)
            for key in sw.due:
                self._expire_contacts(key, now)
            dirty = sw.flagged
        if self.db is None:
            return
        try:
            if self.db_mode in (1, 2):
                self.flush(dirty)
            if db_expire:
                for domain in self.domains():
                    self.db_expire(domain, now)
        except DbError:
            pass             # logged (rate-limited) by the Db handle; retried next turn

    def domains(self) -> list[str]:
        return ["location"]

    def _expire_contacts(self, key: bytes, now: float) -> None:
        gone: list[Ucontact] = []

        def drop(raw: bytes | None) -> bytes | None:
            if raw is None:
                return None
            cs = decode(raw)
            keep = [c for c in cs if c.alive(now)]
            gone[:] = [c for c in cs if not c.alive(now)]
            return encode(keep) if keep else None
        self.table.update(key, drop)
        self._stat("usrloc:location-contacts", -len(gone))
        self._stat("usrloc:expired_contacts", len(gone))


# ---------------------------------------------------------------- module hooks

def _ul(inst: Any) -> UsrLoc:
    ul: UsrLoc = inst.state["ul"]
    return ul


STATS = ("usrloc:location-contacts", "usrloc:expired_contacts")


def mod_init(inst: Any) -> None:
    shm = inst.state.get("shm")
    params = inst.params
    if params["db_mode"] and not params["db_url"]:
        raise ValueError("usrloc: db_mode needs db_url")
    if shm is not None:
        for s in STATS:
            shm.stats.declare(s)
        if int(params["db_mode"]) != 3:
            shm.create_table(TABLE, int(params["hash_size"]))
            shm.create_table(GONE_TABLE, 6)
    ul = inst.state["ul"] = UsrLoc(params, shm)
    if ul.db is not None:
        try:
            if ul.db_mode == 3:
                for d in ul.domains():
                    ensure_table(ul.db, LOCATION, d)
            else:
                n = ul.load()
                log.info("usrloc: loaded %d contacts from %s", n, ul.db.url.redacted())
        finally:
            ul.db.close()     # never carry a connection over the fork


def destroy(inst: Any) -> None:
    ul = inst.state.get("ul")
    if ul is None or ul.db_mode not in (1, 2) or ul.shm is None:
        return
    try:
        n = ul.flush()
        if n:
            log.info("usrloc: wrote %d contacts to the database at shutdown", n)
    except DbError as e:
        log.error("usrloc: could not write contacts at shutdown: %s", e)
    ul.db.close() if ul.db else None


def _timer(inst: Any, now: float) -> None:
    """Declared every second. The memory table is swept in slices: each tick
    takes the next buckets, as many as make the whole table once per
    ``timer_interval`` (so a large table never holds the timer process --
    tm's retransmissions too -- for long); the DB's expired rows go once
    per ``timer_interval``, when a sweep ends the table (db_mode 3: no
    table, every ``timer_interval``)."""
    ul = inst.state.get("ul")
    if ul is None:
        return
    st = inst.state
    interval = timer_interval(inst)
    if ul.db_mode == 3:
        if now - st.get("timer_last", 0.0) >= interval:
            st["timer_last"] = now
            ul.timer(now)
        return
    n = ul.table.nbuckets
    first = st.get("timer_cursor", 0)
    elapsed = now - st.get("timer_tick", now - 1.0)
    count = min(n - first, max(1, math.ceil(n * max(elapsed, 0.0) / max(interval, 1.0))))
    st["timer_tick"] = now
    st["timer_cursor"] = (first + count) % n
    ul.timer(now, (first, count), db_expire=first + count == n)


# ---------------------------------------------------------------- RPC

def _rpc_ul(ctx: Any) -> UsrLoc:
    inst = ctx.cfg.modules.get("usrloc")
    if inst is None or "ul" not in inst.state:
        raise RpcError(500, "usrloc is not loaded")
    return _ul(inst)


def _check_domain(table: str) -> None:
    if table != "location" and not DOMAIN_RE.fullmatch(table):
        raise RpcError(400, f"bad table name {table!r}")


def contact_info(c: Ucontact, now: float) -> dict[str, Any]:
    return {"Contact": {
        "Address": c.c,
        "Expires": "permanent" if not c.expires else int(c.expires - now),
        "Q": -1 if c.q < 0 else c.q / 1000,
        "Call-ID": c.callid, "CSeq": c.cseq, "User-Agent": c.user_agent,
        "Received": c.received or "[not set]", "Path": c.path or "[not set]",
        "State": "CS_SYNC" if c.state == SYNC else "CS_DIRTY",
        "Flags": c.flags, "CFlags": c.cflags, "Socket": c.socket or "[not set]",
        "Methods": c.methods, "Ruid": c.ruid, "Instance": c.instance or "[not set]",
        "Reg-Id": c.reg_id, "Last-Modified": int(c.last_modified)}}


def _db_call(fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except DbUnavailable as e:
        raise RpcError(500, f"database unavailable: {e}") from None
    except DbError as e:
        raise RpcError(500, f"database error: {e}") from None


def rpc_dump(ctx: Any, brief: str = "") -> dict[str, Any]:
    ul = _rpc_ul(ctx)
    now = time.time()
    domains = []
    for d in ul.domains():
        aors = _db_call(lambda d=d: ul.aors(d))
        items = []
        for aor, cs in sorted(aors.items()):
            info: dict[str, Any] = {"AoR": aor}
            if brief != "brief":
                info["Contacts"] = [contact_info(c, now) for c in cs]
            items.append({"Info": info})
        size = 0 if ul.db_mode == 3 else 1 << ul.table.size_bits
        domains.append({"Domain": {"Domain": d, "Size": size, "AoRs": items,
                                   "Stats": {"Records": len(items), "Max-Slots": size}}})
    return {"Domains": domains}


def rpc_lookup(ctx: Any, table: str, aor: str) -> dict[str, Any]:
    ul = _rpc_ul(ctx)
    _check_domain(table)
    cs = _db_call(lambda: ul.get(table, aor))
    if not cs:
        raise RpcError(404, "AOR not found")
    now = time.time()
    return {"AoR": aor, "Contacts": [contact_info(c, now) for c in cs]}


def rpc_rm(ctx: Any, table: str, aor: str) -> str:
    ul = _rpc_ul(ctx)
    _check_domain(table)
    n = _db_call(lambda: ul.delete_aor(table, aor))
    if not n:
        raise RpcError(404, "AOR not found")
    return "OK"


def rpc_rm_contact(ctx: Any, table: str, aor: str, contact: str) -> str:
    ul = _rpc_ul(ctx)
    _check_domain(table)

    def drop(old: list[Ucontact]) -> tuple[list[Ucontact], int]:
        keep = [c for c in old if c.c != contact]
        return keep, len(old) - len(keep)
    _, n = _db_call(lambda: ul.modify(table, aor, drop))
    if not n:
        raise RpcError(404, "Contact not found")
    return "OK"


def rpc_add(ctx: Any, table: str, aor: str, contact: str, expires: int = 0, q: float = -1,
            path: str = "", flags: int = 0, cflags: int = 0,
            methods: int = ALL_METHODS) -> str:
    ul = _rpc_ul(ctx)
    _check_domain(table)
    now = time.time()
    qi = Q_UNSPECIFIED if float(q) < 0 else int(round(float(q) * 1000))

    def add(old: list[Ucontact]) -> tuple[list[Ucontact], None]:
        rest = [c for c in old if c.c != contact]
        prev = [c for c in old if c.c == contact]
        c = Ucontact(contact, now + int(expires) if int(expires) else 0.0, qi, "ul.add-rpc", 1,
                     int(flags), int(cflags), int(methods), 0, now, path=str(path),
                     ruid=prev[0].ruid if prev else new_ruid())
        return [*rest, c], None
    _db_call(lambda: ul.modify(table, aor, add))
    return "OK"


def rpc_flush(ctx: Any) -> str:
    ul = _rpc_ul(ctx)
    _db_call(ul.flush)
    return "OK"


def _db_mode(v: object) -> str | None:
    return None if v in (0, 1, 2, 3) else "db_mode is 0, 1, 2 or 3"


def _hash_size(v: object) -> str | None:
    return None if isinstance(v, int) and 1 <= v <= 20 else "hash_size is 1..20 (2^N slots)"




def timer_interval(inst: Any) -> float:
    return float(inst.params["timer_interval"])


exports = Module(
    name="usrloc",
    doc="User location: contacts in shared memory and/or a database.",
    params=(
        Param("db_url", str, "", "Database URL (sqlite://PATH or postgres://...).", check_url),
        Param("db_mode", int, 0, "0 memory only, 1 write-through, 2 write-back, 3 DB only.",
              _db_mode),
        Param("use_domain", int, 0, "AoRs are user@domain (1) or user (0)."),
        Param("case_sensitive", int, 0, "Compare AoRs case-sensitively."),
        Param("hash_size", int, 10, "The location table has 2^hash_size slots.", _hash_size),
        Param("timer_interval", int, 60, "Seconds in which the timer sweeps the whole "
              "location table (a slice every second) to drop expired contacts and write "
              "dirty ones (db_mode 1, 2); and between deletions of expired DB rows."),
        Param("timer_procs", int, 0, "Timer processes (ser's timer process does the work).",
              ignored=True),
        Param("desc_time_order", int, 0, "Order contacts by time (accepted).", ignored=True),
        Param("nat_bflag", int, -1, "Branch flag marking NATed contacts (saved with the "
              "contact; nathelper's ping_nated_only pings only those)."),
        Param("preload", str, "", "Tables to preload (ser loads 'location').", multi=True,
              ignored=True),
    ),
    rpc=(
        RPCMethod("ul.dump", rpc_dump, "Every AoR and its contacts.", ("brief",)),
        RPCMethod("ul.lookup", rpc_lookup, "The contacts of one AoR.", ("table", "AoR")),
        RPCMethod("ul.rm", rpc_rm, "Remove an AoR with all its contacts.", ("table", "AoR")),
        RPCMethod("ul.rm_contact", rpc_rm_contact, "Remove one contact of an AoR.",
                  ("table", "AoR", "contact")),
        RPCMethod("ul.add", rpc_add, "Add a contact.",
                  ("table", "AoR", "contact", "expires", "q", "path", "flags", "cflags",
                   "methods")),
        RPCMethod("ul.flush", rpc_flush, "Write pending changes to the database."),
    ),
    timers=(Timer("usrloc", 1.0, _timer),),
    mod_init=mod_init,
    destroy=destroy,
)
