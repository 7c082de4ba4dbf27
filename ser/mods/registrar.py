"""registrar: REGISTER processing and contact lookup (Kamailio's registrar).

``save`` applies a REGISTER to the location service (usrloc) following RFC
3261 10.3 and answers it itself (200 listing every current binding with its
expires, or the error); ``lookup`` rewrites the Request-URI to the
registered contacts. Return codes are Kamailio's: save 1 (stored) / 3
(removed) / 4 (query) and -1 on error; lookup 1, -1 not found, -2 found but
the method is not allowed (``method_filtering``), -3 internal error.

Branches -- the interface with tm
---------------------------------
``lookup`` sets the Request-URI (``ctx.ruri`` and ``ctx.msg.set_ruri``) to
the best contact (highest q, then most recent) and, when the contact has a
received address or a Path, ``ctx.dst_uri`` (Path wins, as in Kamailio; the
Path URIs are added as Route headers). With ``append_branches`` the other
contacts become extra branches, appended to ``ctx.cache["branches"]`` as
core ``Branch(uri, dst_uri, q, path, flags)`` records (ser.core.cfg.runtime):
``dst_uri`` where to send it ("" = the uri), ``q`` float (1.0 when the
contact gave none), ``path`` the Path header value ("" none).
The q of the Request-URI branch is ``ctx.cache["ruri_q"]`` and its Path
``ctx.cache["path_vector"]``. tm's ``t_load_contacts``/``t_next_contacts``
read exactly these; core ``forward()`` sends to the Request-URI branch only.
"""

from __future__ import annotations

import logging
import re
import time
from typing import Any

from ser.core.cfg.runtime import Branch
from ser.core.db import DbError, DbUnavailable
from ser.core.log import RateLimited, log
from ser.core.module import Arg, FixedArg, FixupError, Function, Module, Param, RouteType
from ser.core.parser import ProtocolError, SipURI, parse_uri
from ser.core.pv import PVDecl
from ser.mods.usrloc import (
    ALL_METHODS,
    DOMAIN_RE,
    METHOD_BITS,
    METHOD_OTHER,
    Q_UNSPECIFIED,
    Ucontact,
    UsrLoc,
    contact_order,
    method_bit,
    new_ruid,
)

R = RouteType
_err_log = RateLimited(interval=10.0, burst=3)

SAVE_MEM_ONLY = 0x01
SAVE_NO_REPLY = 0x02
SAVE_REPLACE = 0x04

STATS = ("registrar:accepted_regs", "registrar:rejected_regs")


class RegError(Exception):
    """A REGISTER that fails: its reply code and reason."""

    def __init__(self, code: int, reason: str, headers: tuple[str, ...] = ()) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason
        self.headers = headers


def _ul(ctx: Any) -> UsrLoc:
    inst = ctx.rt.modules.get("usrloc")
    if inst is None or "ul" not in inst.state:
        raise RegError(500, "Server Internal Error")
    ul: UsrLoc = inst.state["ul"]
    return ul


def _params(ctx: Any) -> dict[str, Any]:
    p: dict[str, Any] = ctx.rt.modules["registrar"].params
    return p


def _reply(ctx: Any, code: int, reason: str, headers: list[str] | tuple[str, ...] = ()) -> None:
    core = ctx.rt.core
    if core is None:
        ctx.actions.append(("reply", code, reason, list(headers)))
        return
    core.reply(ctx, code, reason, headers=headers)


def _stat(ctx: Any, name: str) -> None:
    shm = getattr(ctx.rt, "shm", None)
    if shm is not None:
        try:
            shm.stats.inc(name)
        except Exception:  # noqa: BLE001 - statistics never fail a request
            pass


def _aor(ctx: Any, uri_text: str | None) -> str:
    ul = _ul(ctx)
    if uri_text:
        try:
            u = parse_uri(uri_text)
        except ProtocolError:
            raise RegError(400, "Bad AoR") from None
    else:
        to = ctx.msg.to
        if to is None:
            raise RegError(400, "Bad To header")
        u = to.uri
    if not isinstance(u, SipURI):
        raise RegError(400, "Bad AoR")
    return ul.aor_of(u.user, u.host)


def _ruri_aor(ctx: Any, uri_text: str | None) -> str:
    text = uri_text or ctx.ruri or ctx.msg.ruri
    try:
        u = parse_uri(text)
    except ProtocolError:
        raise RegError(400, "Bad Request-URI") from None
    if not isinstance(u, SipURI):
        raise RegError(400, "Bad Request-URI")
    return _ul(ctx).aor_of(u.user, u.host)


def _allowed(msg: Any, contact: Any) -> int:
    """Methods a contact accepts: its ``methods`` param, else Allow, else all."""
    v = contact.params.get("methods")
    text = v.strip('"') if v else None
    if text is None:
        allow = msg.headers("allow")
        if not allow:
            return ALL_METHODS
        text = ",".join(allow)
    bits = 0
    for m in text.split(","):
        if m.strip():
            bits |= method_bit(m.strip())
    return bits


def _expires_of(p: dict[str, Any], contact: Any, hdr: int | None) -> int:
    e = contact.expires
    if e is None:
        e = hdr if hdr is not None else int(p["default_expires"])
    if e == 0:
        return 0
    if p["min_expires"] and e < int(p["min_expires"]):
        e = int(p["min_expires"])
    if p["max_expires"] and e > int(p["max_expires"]):
        e = int(p["max_expires"])
    return e


def _received(ctx: Any, p: dict[str, Any]) -> str:
    name = p["received_avp"]
    if not name:
        return ""
    m = re.fullmatch(r"\$avp\((?:s:)?([^)]+)\)", str(name))
    key = m.group(1) if m else str(name)
    stack = ctx.avps.get(key)
    return str(stack[-1]) if stack else ""


def _path(ctx: Any, p: dict[str, Any]) -> tuple[str, list[str]]:
    """The Path to store and the reply headers for it (RFC 3327)."""
    if not p["use_path"]:
        return "", []
    values = ctx.msg.headers("path")
    if not values:
        return "", []
    supported = any(t.strip().lower() == "path"
                    for v in ctx.msg.headers("supported") for t in v.split(","))
    mode = int(p["path_mode"])
    path = ",".join(values)
    if mode == 2 and not supported:
        raise RegError(420, "Path extension not supported", ("Unsupported: path",))
    echo = [f"Path: {path}"] if mode and supported else []
    return path, echo


def _contact_lines(contacts: list[Ucontact], now: float, p: dict[str, Any]) -> list[str]:
    out = []
    rparam = p["received_param"]
    for c in contacts:
        line = f"Contact: <{c.c}>;expires={max(0, int(c.expires - now + 0.5))}" if c.expires \
            else f"Contact: <{c.c}>"
        if c.q >= 0:
            line += f";q={c.q / 1000:g}"
        if c.received and rparam:
            line += f';{rparam}="{c.received}"'
        out.append(line)
    return out


def save_register(ctx: Any, domain: str, flags: int = 0, uri: str | None = None) -> int:
    """The typed save: applies the REGISTER of ``ctx`` to ``domain``; returns
    Kamailio's code and answers the request unless ``SAVE_NO_REPLY``."""
    p = _params(ctx)
    msg = ctx.msg
    try:
        code, contacts, extra = _save(ctx, p, domain, flags, uri)
    except RegError as e:
        _stat(ctx, "registrar:rejected_regs")
        if not flags & SAVE_NO_REPLY:
            _reply(ctx, e.code, e.reason, e.headers)
        return -1
    except DbError as e:
        _stat(ctx, "registrar:rejected_regs")
        if not isinstance(e, DbUnavailable):      # that one is logged by the DB handle
            _err_log(logging.ERROR, "save: database error for %s: %s", msg.call_id, e)
        if not flags & SAVE_NO_REPLY:
            _reply(ctx, 500, "Server Internal Error")
        return -1
    except ProtocolError as e:
        _stat(ctx, "registrar:rejected_regs")
        if not flags & SAVE_NO_REPLY:
            _reply(ctx, 400, f"Bad Request ({e.reason})")
        return -1
    _stat(ctx, "registrar:accepted_regs")
    if not flags & SAVE_NO_REPLY:
        _reply(ctx, 200, "OK", _contact_lines(contacts, time.time(), p) + extra)
    return code


def _save(ctx: Any, p: dict[str, Any], domain: str, flags: int,
          uri: str | None) -> tuple[int, list[Ucontact], list[str]]:
    msg = ctx.msg
    ul = _ul(ctx)
    aor = _aor(ctx, uri)
    star = msg.star_contact
    contacts = msg.contacts
    hdr_exp = msg.expires
    mem_only = bool(flags & SAVE_MEM_ONLY)
    if star:
        if contacts or len(msg.headers("contact")) > 1:
            raise RegError(400, "Invalid contact: * with other contacts")
        if hdr_exp != 0:
            raise RegError(400, "Invalid contact: * with Expires not zero")
        callid = msg.call_id or ""
        cseq = msg.cseq.num if msg.cseq else 0

        def remove_all(old: list[Ucontact]) -> tuple[list[Ucontact], int]:
            # RFC 3261 10.3 step 6: a binding with the same Call-ID and a
            # higher or equal CSeq stays
            for c in old:
                if c.callid == callid and c.cseq > cseq:
                    raise RegError(400, "Invalid CSeq number")
            return [], 3
        new, code = ul.modify(domain, aor, remove_all, mem_only)
        return code, new, []
    if not contacts:
        return 4, ul.get(domain, aor), []
    callid = msg.call_id or ""
    if len(callid) > 255:
        raise RegError(400, "Call-ID too long")
    cseq = msg.cseq.num if msg.cseq else 0
    now = time.time()
    path, path_hdrs = _path(ctx, p)
    received = _received(ctx, p)
    ua = (msg.header("user-agent") or "")[:255]
    sock = ""
    if ctx.rcv is not None and getattr(ctx.rcv, "si", None) is not None:
        sock = f"{ctx.rcv.proto}:{ctx.rcv.si.host}:{ctx.rcv.si.port}"
    default_q = int(p["default_q"])
    incoming = []
    for na in contacts:
        c_uri = str(na.uri)
        if len(c_uri) > 512 or len(received) > 128 or len(path) > 512:
            raise RegError(400, "Contact/received/path too long")
        exp = _expires_of(p, na, hdr_exp)
        q = na.q
        qi = int(round(q * 1000)) if q is not None else default_q
        methods = _allowed(msg, na) if p["method_filtering"] else ALL_METHODS
        inst = na.params.get("+sip.instance") or ""
        reg_id = na.params.get("reg-id")
        incoming.append((c_uri, exp, qi, methods, inst.strip('"'),
                         int(reg_id) if reg_id and reg_id.isdigit() else 0))
    max_contacts = int(p["max_contacts"])
    replace = bool(flags & SAVE_REPLACE)
    bflags = ctx.bflags        # kept as the contact's cflags; lookup() sets them back

    def apply(old: list[Ucontact]) -> tuple[list[Ucontact], int]:
        by_uri = {c.c: c for c in old}
        keep = [] if replace else [c for c in old]
        result: dict[str, Ucontact | None] = {}
        for c_uri, exp, qi, methods, instance, reg_id in incoming:
            cur = by_uri.get(c_uri)
            if cur is not None and cur.callid == callid and cseq < cur.cseq:
                raise RegError(400, "Invalid CSeq number")
            if exp == 0:
                result[c_uri] = None
                continue
            result[c_uri] = Ucontact(
                c_uri, now + exp, qi, callid, cseq, 0, bflags, methods, reg_id, now, received, path,
                ua, sock, cur.ruid if cur is not None else new_ruid(), instance)
        new = [c for c in keep if c.c not in result]
        new += [c for c in result.values() if c is not None]
        if max_contacts and len(new) > max_contacts:
            raise RegError(503, "Too many registered contacts")
        return new, 1
    new, code = ul.modify(domain, aor, apply, mem_only)
    if len(new) > 1:
        new.sort(key=contact_order)
    return code, new, path_hdrs


# ---------------------------------------------------------------- lookup

def _set_ruri(ctx: Any, uri: str) -> None:
    ctx.ruri = uri
    ctx.msg.set_ruri(uri)
    ctx.cache.pop("ruri", None)


def _first_path_uri(path: str) -> str:
    m = re.match(r"\s*<([^>]*)>", path)
    return m.group(1) if m else path.split(",")[0].strip()


def lookup_contacts(ctx: Any, domain: str, uri: str | None = None) -> int:
    """The typed lookup (see the module docstring for what it sets)."""
    try:
        aor = _ruri_aor(ctx, uri)
        contacts = _ul(ctx).get(domain, aor)
    except RegError:
        return -1
    except DbError as e:
        if not isinstance(e, DbUnavailable):
            _err_log(logging.ERROR, "lookup: database error: %s", e)
        return -3
    if not contacts:
        return -1
    p = _params(ctx)
    if p["method_filtering"] and ctx.msg.is_request:
        bit = METHOD_BITS.get(ctx.msg.method, METHOD_OTHER)
        contacts = [c for c in contacts if c.methods & bit]
        if not contacts:
            return -2
    first = contacts[0]
    _set_ruri(ctx, first.c)
    ctx.bflags |= first.cflags     # e.g. usrloc's nat_bflag, as save() found them
    ctx.cache["ruri_q"] = first.qf
    if first.path:
        ctx.cache["path_vector"] = first.path
        ctx.dst_uri = _first_path_uri(first.path)
        ctx.msg.add_header("Route", first.path, first=True)
    elif first.received:
        ctx.dst_uri = first.received
    if p["append_branches"]:
        branches = ctx.cache.setdefault("branches", [])
        for c in contacts[1:]:
            dst = _first_path_uri(c.path) if c.path else c.received
            branches.append(Branch(c.c, dst or "", c.qf, c.path, c.cflags))
    return 1


def lookup(ctx: Any, domain: str, uri: str | None = None) -> int:
    return lookup_contacts(ctx, domain, uri)


def lookup_branches(ctx: Any, domain: str) -> int:
    """lookup() for the Request-URI and for every branch's URI."""
    old = list(ctx.cache.get("branches", ()))
    ctx.cache["branches"] = []
    rc = lookup_contacts(ctx, domain)
    found = rc > 0
    for b in old:
        before = len(ctx.cache["branches"])
        try:
            aor = _ruri_aor(ctx, b.uri)
            cs = _ul(ctx).get(domain, aor)
        except (RegError, DbError):
            cs = []
        if not cs:
            ctx.cache["branches"].insert(before, b)
            continue
        found = True
        for c in cs:
            dst = _first_path_uri(c.path) if c.path else c.received
            ctx.cache["branches"].append(Branch(c.c, dst or "", c.qf, c.path, b.flags))
    return 1 if found else rc


def registered(ctx: Any, domain: str, uri: str | None = None) -> int:
    try:
        cs = _ul(ctx).get(domain, _ruri_aor(ctx, uri))
    except RegError:
        return -1
    except DbError:
        return -1
    return 1 if cs else -1


def unregister(ctx: Any, domain: str, uri: str, ruid: str | None = None) -> int:
    ul = _ul(ctx)
    try:
        aor = _aor(ctx, uri)
    except RegError:
        return -1

    def drop(old: list[Ucontact]) -> tuple[list[Ucontact], int]:
        keep = [c for c in old if ruid and c.ruid != ruid]
        return keep, len(old) - len(keep)
    try:
        _, n = ul.modify(domain, aor, drop)
    except DbError:
        return -1
    return 1 if n else -1


def save(ctx: Any, domain: str, flags: int | None = None, uri: str | None = None) -> int:
    return save_register(ctx, domain, int(flags or 0), uri)


# ---------------------------------------------------------------- reg_fetch_contacts / $ulc

def reg_fetch_contacts(ctx: Any, domain: str, uri: str, profile: str) -> int:
    try:
        aor = _aor(ctx, uri)
        cs = _ul(ctx).get(domain, aor)
    except (RegError, DbError):
        return -1
    ctx.cache.setdefault("ulc", {})[profile] = (aor, domain, cs)
    return 1 if cs else -1


def reg_free_contacts(ctx: Any, profile: str) -> int:
    ctx.cache.get("ulc", {}).pop(profile, None)
    return 1


_ULC_ATTRS = {
    "addr": lambda c: c.c, "path": lambda c: c.path or None,
    "received": lambda c: c.received or None, "expires": lambda c: int(c.expires),
    "callid": lambda c: c.callid, "q": lambda c: c.q, "cseq": lambda c: c.cseq,
    "flags": lambda c: c.flags, "cflags": lambda c: c.cflags,
    "user_agent": lambda c: c.user_agent, "socket": lambda c: c.socket or None,
    "modified": lambda c: int(c.last_modified), "methods": lambda c: c.methods,
    "ruid": lambda c: c.ruid, "instance": lambda c: c.instance or None,
    "reg_id": lambda c: c.reg_id,
}


def _ulc_name(inner: str | None, index: str | None, res: Any) -> Any:
    if not inner or "=>" not in inner:
        raise ValueError("$ulc needs (profile=>attribute)")
    prof, _, attr = (s.strip() for s in inner.partition("=>"))
    if attr not in _ULC_ATTRS and attr not in ("aor", "domain", "aorhash", "count"):
        raise ValueError(f"unknown $ulc attribute '{attr}'")
    idx = int(index) if index not in (None, "") else 0
    return (prof, attr, idx)


def _ulc_get(ctx: Any, name: Any) -> Any:
    prof, attr, idx = name
    got = ctx.cache.get("ulc", {}).get(prof)
    if got is None:
        return None
    aor, domain, cs = got
    if attr == "aor":
        return aor
    if attr == "domain":
        return domain
    if attr == "count":
        return len(cs)
    if attr == "aorhash":
        import zlib
        return zlib.crc32(aor.encode())
    if not -len(cs) <= idx < len(cs):
        return None
    return _ULC_ATTRS[attr](cs[idx])


# ---------------------------------------------------------------- declaration

def _domain_fixup(args: list[FixedArg]) -> list[FixedArg]:
    d = args[0]
    if d.is_const and not DOMAIN_RE.fullmatch(str(d.const)):
        raise FixupError(f"bad location table name '{d.const}'", 0)
    return args


def mod_init(inst: Any) -> None:
    shm = inst.state.get("shm")
    if shm is not None:
        for s in STATS:
            shm.stats.declare(s)
    if inst.params["min_expires"] and inst.params["max_expires"] and \
            inst.params["min_expires"] > inst.params["max_expires"]:
        log.warning("registrar: min_expires is larger than max_expires")


def _nonneg(v: object) -> str | None:
    return None if isinstance(v, int) and v >= 0 else "must be 0 or more"


def _path_mode(v: object) -> str | None:
    return None if v in (0, 1, 2) else "path_mode is 0 (off), 1 (lazy) or 2 (strict)"


_dom = Arg("domain", "const", doc="location table, e.g. \"location\"")

exports = Module(
    name="registrar",
    doc="REGISTER processing (save) and contact lookup.",
    depends=("usrloc",),
    params=(
        Param("default_expires", int, 3600, "Expires when the REGISTER gives none.", _nonneg),
        Param("default_expires_range", int, 0, "Randomize default_expires (accepted).",
              ignored=True),
        Param("min_expires", int, 60, "Shorter expires are raised to this (0: none).", _nonneg),
        Param("max_expires", int, 0, "Longer expires are cut to this (0: no limit).", _nonneg),
        Param("default_q", int, Q_UNSPECIFIED, "q (x1000) of contacts without one; "
              "-1 leaves it unset."),
        Param("max_contacts", int, 0, "Contacts per AoR (0: no limit); more: 503.", _nonneg),
        Param("received_avp", str, "", "AVP with the received address of a NATed client."),
        Param("received_param", str, "received", "Contact parameter that carries it in the "
              "200 OK."),
        Param("use_path", int, 0, "Store Path headers (RFC 3327)."),
        Param("path_mode", int, 2, "0 store, 1 echo if supported, 2 reject 420 if not "
              "supported.", _path_mode),
        Param("path_use_received", int, 0, "Use the received param of the Path (accepted).",
              ignored=True),
        Param("method_filtering", int, 0, "lookup() skips contacts not allowing the method."),
        Param("append_branches", int, 1, "lookup() appends the other contacts as branches."),
        Param("case_sensitive", int, 0, "Compare AoRs case-sensitively (usrloc's is used).",
              ignored=True),
        Param("realm_prefix", str, "", "Prefix stripped from the domain (accepted).",
              ignored=True),
        Param("gruu_enabled", int, 1, "GRUU (RFC 5627) support (accepted; later).",
              ignored=True),
        Param("outbound_mode", int, 0, "SIP outbound (accepted; later).", ignored=True),
        Param("retry_after", int, 0, "Retry-After of 503 replies (accepted).", ignored=True),
        Param("xavp_cfg", str, "", "Config xavp (accepted).", ignored=True),
    ),
    functions=(
        Function("save", save, (_dom, Arg("flags", "int", True), Arg("uri", optional=True)),
                 R.REQUEST | R.FAILURE | R.ONREPLY, _domain_fixup,
                 "Store the contacts of a REGISTER and answer it."),
        Function("lookup", lookup, (_dom, Arg("uri", optional=True)),
                 R.REQUEST | R.FAILURE | R.BRANCH, _domain_fixup,
                 "Rewrite the Request-URI to the registered contacts."),
        Function("lookup_branches", lookup_branches, (_dom,), R.REQUEST | R.FAILURE,
                 _domain_fixup, "lookup() for the Request-URI and every branch."),
        Function("registered", registered, (_dom, Arg("uri", optional=True)),
                 R.ANY, _domain_fixup, "True if the AoR has contacts."),
        Function("unregister", unregister, (_dom, Arg("uri"), Arg("ruid", optional=True)),
                 R.ANY, _domain_fixup, "Remove the contacts of an AoR (or one, by ruid)."),
        Function("reg_fetch_contacts", reg_fetch_contacts,
                 (_dom, Arg("uri"), Arg("profile", "const")), R.ANY, _domain_fixup,
                 "Load an AoR's contacts into $ulc(profile=>...)."),
        Function("reg_free_contacts", reg_free_contacts, (Arg("profile", "const"),), R.ANY,
                 doc="Forget the contacts of a $ulc profile."),
    ),
    pvs=(PVDecl("ulc", _ulc_get, None, _ulc_name,
                "$ulc(profile=>attr)[i]: contacts loaded by reg_fetch_contacts"),),
    mod_init=mod_init,
)
