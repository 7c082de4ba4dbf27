"""htable: named hash tables in shared memory (Kamailio's htable module).

Theory of operation
-------------------
Each ``modparam("htable", "htable", "name=>size=N;...")`` (the older
``name->...`` spelling too) declares a table; ``mod_init`` (the master,
before the fork) creates the shared table ``ht:<name>`` of 2^N buckets, each
a chain, so a table holds as many items as the arena allows. Every worker
reads and writes the same items; an exhausted arena is ``ShmFull``: counted
(``htable:shm_full``), logged, the write fails, nothing crashes.

An item is a record keyed by the UTF-8 name. Integers are stored as a signed
64-bit value (record flags 0), strings as their bytes (flags ``STR``), so
``$shtinc``/``$shtdec`` are one atomic ``Table.incr``. ``autoexpire`` sets
the record's expiry on write (``updateexpire=0``: only when the item is
created); reads ignore expired items and the timer process sweeps them.

``$sht(t=>key)`` resolves ``t`` and splits ``key`` once at load time into a
formatter (``$au::auth_count`` -> per message); per message a read is one
``get_record`` and a write one ``set``. Assigning ``$null`` deletes.

``sht_lock``/``sht_unlock`` are advisory locks between scripts (the shm API
holds its bucket locks only inside one call): a lock is a record of the
table ``ht:locks`` added atomically, spun on briefly, and expiring after
``LOCK_TTL`` seconds so a killed holder cannot block the key forever.

``dbmode=1`` (with ``dbtable`` and ``db_url``): the master loads the table
from the DB at start and writes it back at shutdown (``destroy``);
``htable.reload`` loads it again.
"""

from __future__ import annotations

import os
import re
import struct
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ser.core.db import Db, DbError, check_url
from ser.core.db.schema import HTABLE, ensure_table
from ser.core.log import log
from ser.core.module import (
    Arg,
    FixedArg,
    FixupError,
    Function,
    Module,
    ModuleInstance,
    Param,
    RPCMethod,
    Timer,
)
from ser.core.posixre import posix_re
from ser.core.pv import PVDecl, PVResolver, Value
from ser.core.rpc import RpcContext, RpcError
from ser.shm import ShmError, ShmFull

STR = 1                      # record flag: the value is a string
LOCKS = "ht:locks"
LOCK_TTL = 10.0
LOCK_WAIT = 5.0
_q = struct.Struct("@q")
_NAME = re.compile(r"[A-Za-z0-9_.-]{1,40}")
_DB_STR, _DB_INT = 0, 1      # value_type of the htable DB table
STATS = ("htable:shm_full",)


# ---------------------------------------------------------------- table specs

@dataclass
class HtSpec:
    name: str
    size: int = 4
    autoexpire: int = 0
    initval: int | None = None
    updateexpire: int = 1
    dbtable: str = ""
    dbmode: int = 0


_INT_KEYS = {"size", "autoexpire", "initval", "updateexpire", "dbmode"}
_IGNORED_KEYS = {"cols", "colnull", "dmqreplicate", "coldelim"}


def parse_spec(text: str) -> HtSpec:
    """'name=>size=8;autoexpire=300;...' (or 'name->...') -> HtSpec; ValueError."""
    text = text.strip()
    m = re.match(r"^([^=\-;\s]+)\s*(=>|->)\s*(.*)$", text, re.S)
    if m is None:
        raise ValueError(f"bad htable definition {text!r} (want name=>size=N;...)")
    spec = HtSpec(m.group(1))
    if not _NAME.fullmatch(spec.name):
        raise ValueError(f"bad htable name {spec.name!r}")
    for part in m.group(3).split(";"):
        part = part.strip()
        if not part:
            continue
        k, eq, v = part.partition("=")
        k, v = k.strip(), v.strip()
        if not eq:
            raise ValueError(f"htable {spec.name}: '{part}' is not key=value")
        if k in _INT_KEYS:
            try:
                n = int(v)
            except ValueError:
                raise ValueError(f"htable {spec.name}: {k} needs a number, got {v!r}") from None
            setattr(spec, k, n)
        elif k == "dbtable":
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,62}", v):
                raise ValueError(f"htable {spec.name}: bad dbtable {v!r}")
            spec.dbtable = v
        elif k not in _IGNORED_KEYS:
            raise ValueError(f"htable {spec.name}: unknown attribute '{k}'")
    if not 1 <= spec.size <= 20:
        raise ValueError(f"htable {spec.name}: size is 1..20 (2^size buckets)")
    if spec.autoexpire < 0:
        raise ValueError(f"htable {spec.name}: autoexpire must not be negative")
    if spec.dbmode not in (0, 1):
        raise ValueError(f"htable {spec.name}: dbmode is 0 or 1")
    if spec.dbmode and not spec.dbtable:
        raise ValueError(f"htable {spec.name}: dbmode=1 needs dbtable")
    return spec


def _check_spec(v: object) -> str | None:
    try:
        parse_spec(str(v))
    except ValueError as e:
        return str(e)
    return None


# ---------------------------------------------------------------- one table

def encode(value: Value) -> tuple[bytes, int]:
    if isinstance(value, int):
        return _q.pack(value), 0
    return str(value).encode("utf-8", "surrogateescape"), STR


def decode(raw: bytes, flags: int) -> Value:
    if flags & STR or len(raw) != 8:
        return raw.decode("utf-8", "surrogateescape")
    return int(_q.unpack(raw)[0])


class HTable:
    """One htable over its shared table (typed API for the script, RPC, tests)."""

    def __init__(self, spec: HtSpec, table: Any, stats: Any = None) -> None:
        self.spec = spec
        self.name = spec.name
        self.table = table
        self.stats = stats
        self.autoexpire = spec.autoexpire
        self.initval = spec.initval

    def _full(self, key: str) -> None:
        log.error("htable %s: shared memory is full, item '%s' not stored", self.name, key)
        if self.stats is not None:
            try:
                self.stats.inc("htable:shm_full")
            except ShmError:
                pass

    def _expiry(self, raw: bytes, now: float) -> float:
        if not self.autoexpire:
            return 0.0
        if self.spec.updateexpire:
            return now + self.autoexpire
        rec = self.table.get_record(raw)
        return rec.expires if rec is not None else now + self.autoexpire

    def get(self, key: str) -> Value:
        rec = self.table.get_record(key.encode("utf-8", "surrogateescape"))
        if rec is None:
            return self.initval
        return decode(rec.value, rec.flags)

    def set(self, key: str, value: Value, now: float | None = None) -> bool:
        """Store (``None`` deletes); False when shared memory is full."""
        raw = key.encode("utf-8", "surrogateescape")
        if value is None:
            self.table.delete(raw)
            return True
        data, flags = encode(value)
        exp = self._expiry(raw, time.time() if now is None else now) if self.autoexpire else 0.0
        try:
            self.table.set(raw, data, exp, flags)
        except ShmFull:
            self._full(key)
            return False
        return True

    def delete(self, key: str) -> bool:
        return bool(self.table.delete(key.encode("utf-8", "surrogateescape")))

    def incr(self, key: str, delta: int, now: float | None = None) -> int | None:
        """Atomic add; None if the item holds a string (or memory is full)."""
        raw = key.encode("utf-8", "surrogateescape")
        rec = self.table.get_record(raw)
        if rec is not None and rec.flags & STR:
            return None
        now = time.time() if now is None else now
        try:
            if rec is None and self.initval:
                delta += self.initval
            v: int = self.table.incr(raw, delta, now + self.autoexpire if self.autoexpire else 0)
        except ShmFull:
            self._full(key)
            return None
        except ShmError:
            return None
        if self.autoexpire and self.spec.updateexpire and rec is not None:
            self.table.touch(raw, now + self.autoexpire)
        return v

    def expires_in(self, key: str, now: float | None = None) -> int | None:
        rec = self.table.get_record(key.encode("utf-8", "surrogateescape"))
        if rec is None:
            return None
        if not rec.expires:
            return 0
        return max(0, int(round(rec.expires - (time.time() if now is None else now))))

    def set_expires(self, key: str, seconds: int, now: float | None = None) -> bool:
        now = time.time() if now is None else now
        return bool(self.table.touch(key.encode("utf-8", "surrogateescape"),
                                     now + seconds if seconds > 0 else 0.0))

    def items(self) -> list[tuple[str, Value, float]]:
        return [(r.key.decode("utf-8", "surrogateescape"), decode(r.value, r.flags), r.expires)
                for r in self.table.snapshot()]

    def remove_matching(self, pred: Callable[[str, Value], bool]) -> int:
        n = 0
        for key, value, _ in self.items():
            if pred(key, value) and self.delete(key):
                n += 1
        return n

    def has_name(self, op: str, val: str) -> bool:
        match = _name_matcher(op, val)
        return any(match(key) for key, _, _ in self.items())

    def clear(self) -> int:
        return int(self.table.clear())

    def bucket_counts(self) -> list[int]:
        counts = [0] * (1 << self.spec.size)
        mask = (1 << self.spec.size) - 1
        for r in self.table.snapshot():
            counts[zlib.crc32(r.key) & mask] += 1
        return counts


def _name_matcher(op: str, val: str) -> Callable[[str], bool]:
    if op == "eq":
        return lambda k: k == val
    if op == "ne":
        return lambda k: k != val
    if op == "sw":
        return lambda k: k.startswith(val)
    if op == "re":
        rx = posix_re(val)
        return lambda k: rx.search(k) is not None
    raise ValueError(f"unknown operator '{op}' (eq, ne, re, sw)")


# ---------------------------------------------------------------- module state

def tables(inst_state: dict[str, Any]) -> dict[str, HTable]:
    ht: dict[str, HTable] = inst_state["ht"]
    return ht


def _db(inst: ModuleInstance) -> Db:
    url = str(inst.params["db_url"])
    if not url:
        raise ValueError("htable: a table with dbtable needs modparam db_url")
    return Db(url, what="htable")


def load_db(ht: HTable, db: Db, now: float | None = None) -> int:
    """Read ``ht.spec.dbtable`` into the table; returns the items loaded."""
    now = time.time() if now is None else now
    ensure_table(db, HTABLE, ht.spec.dbtable)
    n = 0
    for name, vtype, value, expires in db.query(
            f"SELECT key_name, value_type, key_value, expires FROM {ht.spec.dbtable}"):
        exp = float(expires or 0)
        if exp and exp <= now:
            continue
        v: Value = str(value or "")
        if int(vtype or 0) == _DB_INT:
            try:
                v = int(str(value))
            except ValueError:
                pass
        data, flags = encode(v)
        if not exp and ht.autoexpire:
            exp = now + ht.autoexpire
        try:
            ht.table.set(str(name).encode("utf-8", "surrogateescape"), data, exp, flags)
        except ShmFull:
            ht._full(str(name))
            break
        n += 1
    return n


def save_db(ht: HTable, db: Db) -> int:
    """Replace the rows of ``ht.spec.dbtable`` with the table's items."""
    ensure_table(db, HTABLE, ht.spec.dbtable)
    rows = []
    for key, value, exp in ht.items():
        vtype = _DB_INT if isinstance(value, int) else _DB_STR
        rows.append((key, 0, vtype, str(value), int(exp)))
    db.execute(f"DELETE FROM {ht.spec.dbtable}")
    if rows:
        db.executemany(f"INSERT INTO {ht.spec.dbtable} (key_name, key_type, value_type, "
                       "key_value, expires) VALUES (?, ?, ?, ?, ?)", rows)
    return len(rows)


def mod_init(inst: ModuleInstance) -> None:
    shm = inst.state["shm"]
    for s in STATS:
        shm.stats.declare(s)
    hts: dict[str, HTable] = {}
    for text in inst.params["htable"]:
        spec = parse_spec(str(text))
        if spec.name in hts:
            raise ValueError(f"htable {spec.name} defined twice")
        hts[spec.name] = HTable(spec, shm.create_table(f"ht:{spec.name}", spec.size), shm.stats)
    shm.create_table(LOCKS, 6)
    inst.state["ht"] = hts
    for ht in hts.values():
        if ht.spec.dbmode and ht.spec.dbtable:
            db = _db(inst)
            try:
                n = load_db(ht, db)
                log.info("htable %s: loaded %d items from %s", ht.name, n, ht.spec.dbtable)
            finally:
                db.close()           # never carry a connection over the fork


def destroy(inst: ModuleInstance) -> None:
    if "ht" not in inst.state or inst.state.get("shm") is None:
        return
    for ht in tables(inst.state).values():
        if not (ht.spec.dbmode and ht.spec.dbtable):
            continue
        db = _db(inst)
        try:
            n = save_db(ht, db)
            log.info("htable %s: saved %d items to %s", ht.name, n, ht.spec.dbtable)
        except DbError as e:
            log.error("htable %s: could not save to the database: %s", ht.name, e)
        finally:
            db.close()


def _timer(inst: ModuleInstance, now: float) -> None:
    if "ht" not in inst.state:
        return
    for ht in tables(inst.state).values():
        ht.table.expire(now)
    inst.state["shm"].table(LOCKS).expire(now)


# ---------------------------------------------------------------- the script

class ShtName:
    """A parsed ``table=>key``: the key is a constant or a per-message formatter."""
    __slots__ = ("table", "const", "fmt")

    def __init__(self, table: str, const: str | None, fmt: Any) -> None:
        self.table = table
        self.const = const
        self.fmt = fmt

    def key(self, ctx: Any) -> str:
        return self.const if self.const is not None else str(self.fmt(ctx))


def split_name(text: str) -> tuple[str, str]:
    """'t=>key' or 't->key' -> ('t', 'key'): the first separator counts."""
    i, j = text.find("=>"), text.find("->")
    cut = min(x for x in (i, j) if x >= 0) if max(i, j) >= 0 else -1
    if cut <= 0:
        raise ValueError("want table=>key")
    table = text[:cut].strip()
    if not _NAME.fullmatch(table):
        raise ValueError(f"bad htable name '{table}'")
    return table, text[cut + 2:]


def _sht_name(inner: str | None, index: str | None, res: PVResolver) -> ShtName:
    if not inner:
        raise ValueError("want $sht(table=>key)")
    if index is not None:
        raise ValueError("no index allowed")
    table, key = split_name(inner)
    fmt = res.format(key, ("htable", 0, 0))
    return ShtName(table, fmt.const, fmt)


def _ht(ctx: Any, name: str) -> HTable | None:
    ht = ctx.rt.modules["htable"].state.get("ht", {}).get(name)
    if ht is None:
        log.error("htable: no table named '%s' (modparam htable)", name)
    return ht  # type: ignore[no-any-return]


def _sht_get(ctx: Any, n: ShtName) -> Value:
    ht = _ht(ctx, n.table)
    return None if ht is None else ht.get(n.key(ctx))


def _sht_set(ctx: Any, n: ShtName, value: Value) -> None:
    ht = _ht(ctx, n.table)
    if ht is not None:
        ht.set(n.key(ctx), value)


def _shtex_get(ctx: Any, n: ShtName) -> Value:
    ht = _ht(ctx, n.table)
    return None if ht is None else ht.expires_in(n.key(ctx))


def _shtex_set(ctx: Any, n: ShtName, value: Value) -> None:
    ht = _ht(ctx, n.table)
    if ht is not None:
        try:
            secs = int(value or 0)
        except ValueError:
            log.error("$shtex: '%s' is not a number of seconds", value)
            return
        ht.set_expires(n.key(ctx), secs)


def _incr_get(delta: int) -> Callable[[Any, ShtName], Value]:
    def get(ctx: Any, n: ShtName) -> Value:
        ht = _ht(ctx, n.table)
        return None if ht is None else ht.incr(n.key(ctx), delta)
    return get


def _split_arg(ctx: Any, text: str) -> tuple[HTable | None, str]:
    try:
        table, rest = split_name(text)
    except ValueError:
        log.error("htable: bad argument '%s' (want table=>value)", text)
        return None, ""
    return _ht(ctx, table), rest


def _spec_fixup(args: list[FixedArg]) -> list[FixedArg]:
    a = args[0]
    if a.is_const:
        try:
            split_name(str(a.const))
        except ValueError as e:
            raise FixupError(f"'{a.const}': {e}", 0) from None
    return args


def sht_rm_name_re(ctx: Any, spec: str) -> int:
    ht, rx = _split_arg(ctx, spec)
    if ht is None:
        return -1
    try:
        pat = posix_re(rx)
    except re.error as e:
        log.error("sht_rm_name_re: bad regex '%s': %s", rx, e)
        return -1
    ht.remove_matching(lambda k, v: pat.search(k) is not None)
    return 1


def sht_rm_value_re(ctx: Any, spec: str) -> int:
    ht, rx = _split_arg(ctx, spec)
    if ht is None:
        return -1
    try:
        pat = posix_re(rx)
    except re.error as e:
        log.error("sht_rm_value_re: bad regex '%s': %s", rx, e)
        return -1
    ht.remove_matching(lambda k, v: pat.search(str(v)) is not None)
    return 1


def sht_has_name(ctx: Any, table: str, op: str, val: str) -> int:
    ht = _ht(ctx, table)
    if ht is None:
        return -1
    try:
        return 1 if ht.has_name(op, val) else -1
    except (ValueError, re.error) as e:
        log.error("sht_has_name: %s", e)
        return -1


def _op_fixup(args: list[FixedArg]) -> list[FixedArg]:
    op = args[1]
    if op.is_const and op.const not in ("eq", "ne", "re", "sw"):
        raise FixupError(f"unknown operator '{op.const}' (eq, ne, re, sw)", 1)
    return args


def lock(shm: Any, table: str, key: str, wait: float = LOCK_WAIT) -> bool:
    """Take the advisory lock ``table=>key`` (spins up to ``wait`` seconds)."""
    locks = shm.table(LOCKS)
    raw = f"{table}\0{key}".encode("utf-8", "surrogateescape")
    me = str(os.getpid()).encode()
    deadline = time.monotonic() + wait
    delay = 0.0002
    while True:
        if locks.add(raw, me, time.time() + LOCK_TTL):
            return True
        if locks.get(raw) == me:
            return True       # already ours (recursive, as Kamailio's)
        if time.monotonic() >= deadline:
            return False
        time.sleep(delay)
        delay = min(delay * 2, 0.005)


def unlock(shm: Any, table: str, key: str) -> bool:
    return bool(shm.table(LOCKS).delete(f"{table}\0{key}".encode("utf-8", "surrogateescape")))


def sht_lock(ctx: Any, spec: str) -> int:
    ht, key = _split_arg(ctx, spec)
    if ht is None:
        return -1
    if not lock(ctx.rt.modules["htable"].state["shm"], ht.name, key):
        log.error("sht_lock: %s=>%s still locked after %g s", ht.name, key, LOCK_WAIT)
        return -1
    return 1


def sht_unlock(ctx: Any, spec: str) -> int:
    ht, key = _split_arg(ctx, spec)
    if ht is None:
        return -1
    unlock(ctx.rt.modules["htable"].state["shm"], ht.name, key)
    return 1


# ---------------------------------------------------------------- RPC

def _rpc_state(ctx: RpcContext) -> ModuleInstance:
    inst = ctx.cfg.modules.get("htable")
    if inst is None or "ht" not in inst.state:
        raise RpcError(500, "htable is not loaded")
    return inst  # type: ignore[no-any-return]


def _rpc_ht(ctx: RpcContext, name: str) -> HTable:
    ht = tables(_rpc_state(ctx).state).get(str(name))
    if ht is None:
        raise RpcError(400, f"no such htable: {name}")
    return ht


def _type(v: Value) -> str:
    return "int" if isinstance(v, int) else "str"


def rpc_dump(ctx: RpcContext, htname: str) -> list[dict[str, Any]]:
    ht = _rpc_ht(ctx, htname)
    mask = (1 << ht.spec.size) - 1
    now = time.time()
    slots: dict[int, list[dict[str, Any]]] = {}
    for key, value, exp in ht.items():
        item: dict[str, Any] = {"name": key, "value": value, "type": _type(value)}
        if exp:
            item["expires"] = max(0, int(round(exp - now)))
        slots.setdefault(zlib.crc32(key.encode("utf-8", "surrogateescape")) & mask,
                         []).append(item)
    return [{"entry": e, "size": len(items), "slot": sorted(items, key=lambda i: i["name"])}
            for e, items in sorted(slots.items())]


def rpc_get(ctx: RpcContext, htname: str, key: str) -> dict[str, Any]:
    ht = _rpc_ht(ctx, htname)
    rec = ht.table.get_record(str(key).encode("utf-8", "surrogateescape"))
    if rec is None:
        raise RpcError(404, "Key name doesn't exist in htable.")
    v = decode(rec.value, rec.flags)
    return {"item": {"name": str(key), "value": v}}


def rpc_sets(ctx: RpcContext, htname: str, key: str, value: Any) -> str:
    if not _rpc_ht(ctx, htname).set(str(key), str(value)):
        raise RpcError(500, "Unable to set htable item (shared memory full)")
    return "Ok"


def rpc_seti(ctx: RpcContext, htname: str, key: str, value: Any) -> str:
    try:
        n = int(value)
    except (TypeError, ValueError):
        raise RpcError(400, f"not an integer: {value!r}") from None
    if not _rpc_ht(ctx, htname).set(str(key), n):
        raise RpcError(500, "Unable to set htable item (shared memory full)")
    return "Ok"


def rpc_delete(ctx: RpcContext, htname: str, key: str) -> str:
    if not _rpc_ht(ctx, htname).delete(str(key)):
        raise RpcError(404, "Key name doesn't exist in htable.")
    return "Ok"


def rpc_reload(ctx: RpcContext, htname: str) -> str:
    inst = _rpc_state(ctx)
    ht = _rpc_ht(ctx, htname)
    if not ht.spec.dbtable:
        raise RpcError(500, f"htable {htname} has no dbtable")
    db = _db(inst)
    try:
        rows = db.query(f"SELECT COUNT(*) FROM {ht.spec.dbtable}")  # the DB is reachable
        del rows
        ht.clear()
        n = load_db(ht, db)
    except DbError as e:
        raise RpcError(500, f"database error: {e}") from None
    finally:
        db.close()
    return f"Ok, {n} items loaded"


def rpc_list_tables(ctx: RpcContext) -> list[dict[str, Any]]:
    return [{"name": ht.name, "dbtable": ht.spec.dbtable, "dbmode": ht.spec.dbmode,
             "expire": ht.autoexpire, "updateexpire": ht.spec.updateexpire,
             "size": ht.spec.size}
            for ht in tables(_rpc_state(ctx).state).values()]


def rpc_stats(ctx: RpcContext) -> list[dict[str, Any]]:
    out = []
    for ht in tables(_rpc_state(ctx).state).values():
        counts = ht.bucket_counts()
        out.append({"name": ht.name, "slots": len(counts), "all": sum(counts),
                    "min": min(counts), "max": max(counts)})
    return out




_spec_arg = Arg("spec", doc="table=>value")

exports = Module(
    name="htable",
    doc="Named hash tables in shared memory, seen by every process: $sht, $shtex, "
        "$shtinc, $shtdec; expiry by the timer process; optional load/save from a DB table.",
    params=(
        Param("htable", str, None, "Define a table: \"name=>size=N;autoexpire=S;initval=I;"
              "updateexpire=0|1;dbtable=T;dbmode=0|1\" (2^N buckets; name->... too); "
              "may be repeated.", _check_spec, multi=True),
        Param("db_url", str, "", "Database URL for tables with dbtable.", check_url),
    ),
    functions=(
        Function("sht_rm_name_re", sht_rm_name_re, (_spec_arg,), fixup=_spec_fixup,
                 doc="Remove the items whose name matches a regex: \"table=>regex\"."),
        Function("sht_rm_value_re", sht_rm_value_re, (_spec_arg,), fixup=_spec_fixup,
                 doc="Remove the items whose value matches a regex: \"table=>regex\"."),
        Function("sht_has_name", sht_has_name,
                 (Arg("table"), Arg("op", doc="eq, ne, re or sw"), Arg("value")),
                 fixup=_op_fixup, doc="True if some item name matches (eq, ne, re, sw)."),
        Function("sht_lock", sht_lock, (_spec_arg,), fixup=_spec_fixup,
                 doc="Take the lock of \"table=>key\" (between scripts of all processes)."),
        Function("sht_unlock", sht_unlock, (_spec_arg,), fixup=_spec_fixup,
                 doc="Release the lock of \"table=>key\"."),
    ),
    pvs=(
        PVDecl("sht", _sht_get, _sht_set, _sht_name,
               doc="$sht(table=>key): an item; assign $null to delete"),
        PVDecl("shtex", _shtex_get, _shtex_set, _sht_name,
               doc="$shtex(table=>key): seconds until the item expires (writable)"),
        PVDecl("shtinc", _incr_get(1), None, _sht_name,
               doc="$shtinc(table=>key): atomically add 1, read the new value"),
        PVDecl("shtdec", _incr_get(-1), None, _sht_name,
               doc="$shtdec(table=>key): atomically subtract 1, read the new value"),
    ),
    rpc=(
        RPCMethod("htable.dump", rpc_dump, "Every item of a table, by bucket.", ("htable",)),
        RPCMethod("htable.get", rpc_get, "One item.", ("htable", "key")),
        RPCMethod("htable.sets", rpc_sets, "Set a string item.", ("htable", "key", "value")),
        RPCMethod("htable.seti", rpc_seti, "Set an integer item.", ("htable", "key", "value")),
        RPCMethod("htable.delete", rpc_delete, "Remove an item.", ("htable", "key")),
        RPCMethod("htable.reload", rpc_reload, "Load a table again from its dbtable.",
                  ("htable",)),
        RPCMethod("htable.listTables", rpc_list_tables, "The defined tables."),
        RPCMethod("htable.stats", rpc_stats, "Items per table and per bucket (min, max)."),
    ),
    timers=(Timer("htable", 1.0, _timer),),
    mod_init=mod_init,
    destroy=destroy,
)
