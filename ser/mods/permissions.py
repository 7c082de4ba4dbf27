"""permissions: IP address permissions from the ``address`` table (Kamailio's
permissions, its address part).

Theory of operation
-------------------
The rows ``(grp, ip_addr, mask, port, tag)`` are read from the database by
the master at start and by ``permissions.addressReload`` (in the control
process) and published in the shared-memory table ``permissions``: the rows
under ``data`` (JSON) and a generation number under ``gen``. A worker keeps
its own compiled copy and rebuilds it when ``gen`` changed, so a reload takes
effect in every worker on its next request without a restart; the database
is not read per request.

A compiled table has exact addresses (IPv4 mask 32, IPv6 mask 128; mask 0
means the same, as in Kamailio) in a dict keyed by the packed address,
subnets (smaller masks) in a list scanned in order, and names that are not
IP addresses (matched as strings, no DNS). Port 0 matches any port. A match
sets ``peer_tag_avp`` to the row's tag when it has one.
"""

from __future__ import annotations

import json
import logging
import re
import socket
import time
from dataclasses import dataclass, field
from typing import Any

from ser.core.db import Db, DbError, check_url, connect
from ser.core.log import log
from ser.core.module import Arg, FixedArg, FixupError, Function, Module, Param, RPCMethod
from ser.core.module import RouteType as R
from ser.core.rpc import RpcError

SHM_TABLE = "permissions"
GEN_KEY, DATA_KEY, LAST_KEY = b"gen", b"data", b"last"
IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")


def _ident(v: object) -> str | None:
    return None if IDENT.fullmatch(str(v)) else f"'{v}' is not a table or column name"




def _avp_param(v: object) -> str | None:
    if not v or re.fullmatch(r"\$avp\([^)]+\)", str(v).strip()):
        return None
    return "peer_tag_avp is an AVP: $avp(name)"


def avp_key(spec: str) -> str:
    """``$avp(i:707)`` -> ``i:707``, ``$avp(s:x)``/``$avp(x)`` -> ``x`` (the
    keys ``$avp(...)`` uses in ``ctx.avps``)."""
    name = spec.strip()[5:-1].strip()
    return name[2:] if name.startswith("s:") else name


def pack_ip(text: str) -> tuple[int, bytes] | None:
    """(4 or 6, packed address) of an IP literal (IPv6 may be in brackets); None if not one."""
    t = text.strip()
    if t.startswith("[") and t.endswith("]"):
        t = t[1:-1]
    try:
        return 4, socket.inet_pton(socket.AF_INET, t)
    except OSError:
        pass
    try:
        return 6, socket.inet_pton(socket.AF_INET6, t)
    except OSError:
        return None


@dataclass
class Subnet:
    grp: int
    family: int
    net: int
    mask: int            # prefix length
    port: int
    tag: str | None
    ip: str

    def contains(self, family: int, addr: int) -> bool:
        if family != self.family:
            return False
        bits = 32 if family == 4 else 128
        shift = bits - self.mask
        return (addr >> shift) == (self.net >> shift) if shift < bits else True


@dataclass
class AddressTable:
    """One compiled copy of the address rows."""
    exact: dict[bytes, list[tuple[int, int, str | None, str]]] = field(default_factory=dict)
    subnets: list[Subnet] = field(default_factory=list)
    names: dict[str, list[tuple[int, int, str | None]]] = field(default_factory=dict)
    rows: int = 0

    @classmethod
    def build(cls, rows: list[list[Any]]) -> AddressTable:
        t = cls()
        for grp, ip, mask, port, tag in rows:
            t.rows += 1
            grp, port = int(grp), int(port or 0)
            mask = int(mask or 0)
            p = pack_ip(str(ip))
            if p is None:
                t.names.setdefault(str(ip).lower(), []).append((grp, port, tag))
                continue
            family, packed = p
            bits = 32 if family == 4 else 128
            if mask <= 0 or mask >= bits:
                t.exact.setdefault(packed, []).append((grp, port, tag, str(ip)))
            else:
                net = int.from_bytes(packed, "big")
                net &= ((1 << bits) - 1) ^ ((1 << (bits - mask)) - 1)
                t.subnets.append(Subnet(grp, family, net, mask, port, tag, str(ip)))
        t.subnets.sort(key=lambda s: (s.grp, -s.mask))
        return t

    def match(self, grp: int | None, ip: str, port: int) -> tuple[int, str | None] | None:
        """(group, tag) of the first row matching (in ``grp``, or any group)."""
        p = pack_ip(ip)
        if p is None:
            for g, rport, tag in self.names.get(ip.strip().lower(), ()):
                if (grp is None or g == grp) and (rport == 0 or rport == port):
                    return g, tag
            return None
        family, packed = p
        for g, rport, tag, _ in self.exact.get(packed, ()):
            if (grp is None or g == grp) and (rport == 0 or rport == port):
                return g, tag
        if self.subnets:
            addr = int.from_bytes(packed, "big")
            for s in self.subnets:
                if (grp is None or s.grp == grp) and (s.port == 0 or s.port == port) and \
                        s.contains(family, addr):
                    return s.grp, s.tag
        return None


def read_rows(db: Any, p: dict[str, Any]) -> list[list[Any]]:
    sql = (f"SELECT {p['grp_col']}, {p['ip_addr_col']}, {p['mask_col']}, {p['port_col']}, "
           f"{p['tag_col']} FROM {p['address_table']} ORDER BY id")
    return [list(r) for r in db.query(sql)]


class Permissions:
    """Per process: the compiled table and the generation it was built from."""

    def __init__(self, params: dict[str, Any], shm: Any) -> None:
        self.params = params
        self.shm = shm
        self.shm_table: Any = None
        self.gen: bytes | None = b""
        self.table = AddressTable()
        self.tag_avp = avp_key(str(params["peer_tag_avp"])) if params["peer_tag_avp"] else ""

    def current(self) -> AddressTable:
        if self.shm is None:
            if self.gen == b"":       # no daemon (tests of the script): read once
                db = connect(str(self.params["db_url"]))
                try:
                    self.table = AddressTable.build(read_rows(db, self.params))
                finally:
                    db.close()
                self.gen = None
            return self.table
        if self.shm_table is None:
            self.shm_table = self.shm.table(SHM_TABLE)
        gen = self.shm_table.get(GEN_KEY)
        if gen != self.gen:
            data = self.shm_table.get(DATA_KEY)
            self.table = AddressTable.build(json.loads(data) if data else [])
            self.gen = gen
        return self.table


def _perm(ctx: Any) -> Permissions:
    inst = ctx.rt.modules["permissions"]
    p: Permissions | None = inst.state.get("perm")
    if p is None:
        p = inst.state["perm"] = Permissions(inst.params, inst.state.get("shm"))
    return p


def _set_tag(ctx: Any, perm: Permissions, tag: str | None) -> None:
    if perm.tag_avp and tag:
        ctx.avps.setdefault(perm.tag_avp, []).append(tag)


def _int(v: Any) -> int | None:
    try:
        return int(v)
    except (TypeError, ValueError):
        return None


def allow_address(ctx: Any, grp: Any, ip: Any, port: Any) -> int:
    """1 if ``ip``:``port`` is in group ``grp`` of the address table, else -1."""
    g, pt = _int(grp), _int(port)
    if g is None or pt is None or ip is None:
        return -1
    perm = _perm(ctx)
    m = perm.current().match(g, str(ip), pt)
    if m is None:
        return -1
    _set_tag(ctx, perm, m[1])
    return 1


def allow_source_address(ctx: Any, grp: Any = 1) -> int:
    return allow_address(ctx, 1 if grp is None else grp, ctx.src_ip, ctx.src_port)


def allow_address_group(ctx: Any, ip: Any, port: Any) -> int:
    """The group of the first row matching ``ip``:``port``, else -1."""
    pt = _int(port)
    if pt is None or ip is None:
        return -1
    perm = _perm(ctx)
    m = perm.current().match(None, str(ip), pt)
    if m is None:
        return -1
    _set_tag(ctx, perm, m[1])
    return m[0]


def allow_source_address_group(ctx: Any) -> int:
    return allow_address_group(ctx, ctx.src_ip, ctx.src_port)


def _grp_fixup(args: list[FixedArg]) -> list[FixedArg]:
    if args and args[0].is_const and _int(args[0].const) is None:
        raise FixupError(f"bad group '{args[0].const}' (a number)", 0)
    return args


# ---------------------------------------------------------------- loading

def publish(shm: Any, rows: list[list[Any]]) -> None:
    t = shm.table(SHM_TABLE)
    t.set(DATA_KEY, json.dumps(rows).encode())
    t.incr(GEN_KEY)


def mod_init(inst: Any) -> None:
    shm = inst.state.get("shm")
    p = inst.params
    db = Db(str(p["db_url"]), what="permissions")
    try:
        rows = read_rows(db, p) if int(p["load_backends"]) & 1 else []
    except DbError as e:
        raise ValueError(f"permissions: cannot load {p['address_table']}: {e}") from None
    finally:
        db.close()
    if len(rows) > int(p["max_subnets"]) + 10_000:
        log.warning("permissions: %d address rows", len(rows))
    AddressTable.build(rows)          # a bad row fails the start, not a request
    if shm is not None:
        shm.create_table(SHM_TABLE, 2)
        publish(shm, rows)
    log.info("permissions: %d address rows from %s", len(rows), db.url.redacted())


def _rpc_inst(ctx: Any) -> Any:
    inst = ctx.cfg.modules.get("permissions")
    if inst is None:
        raise RpcError(500, "permissions is not loaded")
    return inst


def rpc_reload(ctx: Any) -> str:
    inst = _rpc_inst(ctx)
    p = inst.params
    shm = ctx.shm
    t = shm.table(SHM_TABLE)
    last = t.get(LAST_KEY)
    now = time.time()
    delta = int(p["reload_delta"])
    if last is not None and delta and now - float(last.decode()) < delta:
        raise RpcError(500, f"ongoing reload: at most one in {delta} s")
    t.set(LAST_KEY, repr(now).encode())
    try:
        db = connect(str(p["db_url"]))
    except DbError as e:
        raise RpcError(500, f"database unavailable: {e}") from None
    try:
        rows = read_rows(db, p)
    except DbError as e:
        raise RpcError(500, f"database error: {e}") from None
    finally:
        db.close()
    try:
        AddressTable.build(rows)
    except (TypeError, ValueError) as e:
        raise RpcError(500, f"bad address row: {e}") from None
    publish(shm, rows)
    logging.getLogger("ser").info("permissions: reloaded %d address rows", len(rows))
    return "OK"


def _rpc_table(ctx: Any) -> AddressTable:
    data = ctx.shm.table(SHM_TABLE).get(DATA_KEY)
    return AddressTable.build(json.loads(data) if data else [])


def rpc_address_dump(ctx: Any) -> list[dict[str, Any]]:
    _rpc_inst(ctx)
    t = _rpc_table(ctx)
    out = []
    for entries in t.exact.values():
        for g, port, tag, ip in entries:
            out.append({"gid": g, "ip": ip, "port": port, "tag": tag or ""})
    for name, entries2 in t.names.items():
        for g, port, tag in entries2:
            out.append({"gid": g, "ip": name, "port": port, "tag": tag or ""})
    return out


def rpc_subnet_dump(ctx: Any) -> list[dict[str, Any]]:
    _rpc_inst(ctx)
    t = _rpc_table(ctx)
    return [{"id": i, "gid": s.grp, "ip": s.ip, "mask": s.mask, "port": s.port,
             "tag": s.tag or ""} for i, s in enumerate(t.subnets)]


exports = Module(
    name="permissions",
    doc="IP address permissions from the address table (allow_source_address & co).",
    params=(
        Param("db_url", str, "sqlite:///var/lib/ser/ser.db", "Database URL.", check_url),
        Param("address_table", str, "address", "Table of addresses.", _ident),
        Param("grp_col", str, "grp", "Column of the group id.", _ident),
        Param("ip_addr_col", str, "ip_addr", "Column of the IP address (or name).", _ident),
        Param("mask_col", str, "mask", "Column of the prefix length.", _ident),
        Param("port_col", str, "port", "Column of the port (0: any).", _ident),
        Param("tag_col", str, "tag", "Column of the tag.", _ident),
        Param("peer_tag_avp", str, "", "AVP set to the tag of the matching row.", _avp_param),
        Param("max_subnets", int, 512, "Subnets expected (ser has no fixed limit)."),
        Param("reload_delta", int, 5, "Seconds between two addressReload (0: no limit)."),
        Param("load_backends", int, 0xFFFF, "Tables to load, a bit mask: 1 the address "
              "table (the trusted table, 2, is not in ser)."),
        Param("db_mode", int, 0, "Caching of the trusted table (not in ser).", ignored=True),
    ),
    functions=(
        Function("allow_source_address", allow_source_address,
                 (Arg("group", "int", True, "group id (default 1)"),), R.REQUEST | R.FAILURE,
                 _grp_fixup, "True if the source address and port are in the group."),
        Function("allow_address", allow_address,
                 (Arg("group", doc="group id"), Arg("ip"), Arg("port")), R.REQUEST | R.FAILURE,
                 _grp_fixup, "True if the address and port are in the group."),
        Function("allow_source_address_group", allow_source_address_group, (),
                 R.REQUEST | R.FAILURE, doc="The group of the source address, else -1."),
        Function("allow_address_group", allow_address_group, (Arg("ip"), Arg("port")), R.ANY,
                 doc="The group of the address and port, else -1."),
    ),
    rpc=(
        RPCMethod("permissions.addressReload", rpc_reload, "Re-read the address table."),
        RPCMethod("permissions.addressDump", rpc_address_dump, "The exact addresses."),
        RPCMethod("permissions.subnetDump", rpc_subnet_dump, "The subnets."),
    ),
    mod_init=mod_init,
)
