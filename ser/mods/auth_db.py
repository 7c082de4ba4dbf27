"""auth_db: digest credentials from a database table (Kamailio's auth_db).

``www_authenticate``/``proxy_authenticate`` (and the old names
``*_authorize``, and ``auth_check``) run auth's checks with the subscriber
row of the credentials' user: ``password_column`` (default ``ha1``) holds
HA1, or the plaintext password with ``calculate_ha1``; a username sent as
``user@domain`` without ``calculate_ha1`` uses ``password_column_2``
(``ha1b``). SHA-256 (RFC 8760) needs the plaintext: ``calculate_ha1`` with
``password_column`` ``password``. With ``calculate_ha1`` and a column of
Kamailio's schema that holds hashes (``ha1``, ``ha1b`` -- Kamailio's default
``password_column``), a value that is a hex digest of the algorithm's length
is also tried as the HA1 itself, so users stored by serctl or kamctl
authenticate with configs that set ``calculate_ha1`` without naming the
``password`` column.

``load_credentials`` copies columns of the row into AVPs after a successful
check (``force_generate_avps``: after any check that found the user).

Credentials cache
-----------------
Each worker keeps the rows it read for ``cache_ttl`` seconds (a ser
parameter; 0 turns the cache off). The cache is dropped in every worker at
once when the shared generation counter changes: the RPC ``auth_db.flush``
bumps it, and ``serctl passwd|rm|add`` call it after writing the table, so
a changed password takes effect on the next request.
"""

from __future__ import annotations

import logging
import re
import time
from typing import Any

from ser.core.db import Db, DbError, DbUnavailable, check_url
from ser.core.log import RateLimited
from ser.core.module import Arg, FixedArg, FixupError, Function, Module, Param, RPCMethod
from ser.core.module import RouteType as R
from ser.core.parser import ProtocolError, SipURI, parse_uri
from ser.core.rpc import RpcError
from ser.mods import auth

_log = RateLimited(interval=10.0, burst=3)
IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
GEN_TABLE = "auth_db"
GEN_KEY = b"gen"
_HASH_COLUMNS = ("ha1", "ha1b")
_HEX = re.compile(r"[0-9a-fA-F]+")
_HEX_LEN = {"MD5": 32, "SHA-256": 64}


def _ident(v: object) -> str | None:
    return None if IDENT.fullmatch(str(v)) else f"'{v}' is not a column name"




_AVP_SPEC = re.compile(r"\s*(?:\$avp\((?P<avp>[^)]+)\)\s*=\s*)?(?P<col>[A-Za-z_][A-Za-z0-9_]*)\s*")


def parse_load_credentials(text: str) -> list[tuple[str, str]]:
    """"$avp(i:12)=rpid; email" -> [("i:12", "rpid"), ("email", "email")]
    (AVP keys as ``$avp(...)`` stores them); ValueError if bad."""
    out = []
    for part in str(text).split(";"):
        if not part.strip():
            continue
        m = _AVP_SPEC.fullmatch(part)
        if not m:
            raise ValueError(f"bad load_credentials item '{part.strip()}' "
                             "(want $avp(name)=column or column)")
        name = (m.group("avp") or m.group("col")).strip()
        if name.startswith("s:"):
            name = name[2:]
        out.append((name, m.group("col")))
    return out


def _check_load(v: object) -> str | None:
    try:
        parse_load_credentials(str(v))
    except ValueError as e:
        return str(e)
    return None


class Credentials:
    """Per-process: the DB handle and the rows cache of one auth_db instance."""

    def __init__(self, params: dict[str, Any], shm: Any = None) -> None:
        self.params = params
        self.db = Db(str(params["db_url"]), what="auth_db")
        self.user_col = str(params["user_column"])
        self.domain_col = str(params["domain_column"])
        self.pw_col = str(params["password_column"])
        self.pw2_col = str(params["password_column_2"])
        self.calc = bool(params["calculate_ha1"])
        self.use_domain = bool(params["use_domain"])
        self.load = parse_load_credentials(str(params["load_credentials"] or ""))
        self.force_avps = bool(params["force_generate_avps"])
        self.ttl = float(params["cache_ttl"])
        self.shm = shm
        self.gen_table: Any = None
        self.cache: dict[tuple[str, str, str], tuple[float, bytes | None, tuple[Any, ...]]] = {}
        self._sql: dict[str, str] = {}

    def _gen(self) -> bytes | None:
        if self.shm is None:
            return None
        if self.gen_table is None:
            self.gen_table = self.shm.table(GEN_TABLE)
        v: bytes | None = self.gen_table.get(GEN_KEY)
        return v

    def sql(self, table: str) -> str:
        q = self._sql.get(table)
        if q is None:
            cols = [self.pw_col, self.pw2_col, *[c for _, c in self.load]]
            where = f"{self.user_col} = ?"
            if self.use_domain:
                where += f" AND {self.domain_col} = ?"
            q = self._sql[table] = f"SELECT {', '.join(cols)} FROM {table} WHERE {where}"
        return q

    def row(self, table: str, user: str, domain: str) -> tuple[Any, ...] | None:
        """The subscriber's (password, password_2, load columns...), None if unknown.
        Raises DbError."""
        key = (table, user, domain if self.use_domain else "")
        now = time.monotonic()
        gen = self._gen() if self.ttl else None
        hit = self.cache.get(key)
        if hit is not None and hit[0] > now and hit[1] == gen:
            return hit[2]
        args = (user, domain) if self.use_domain else (user,)
        rows = self.db.query(self.sql(table), args)
        if not rows:
            self.cache.pop(key, None)
            return None
        if self.ttl:
            if len(self.cache) > 100_000:
                self.cache.clear()
            self.cache[key] = (now + self.ttl, gen, rows[0])
        return rows[0]


def _creds(ctx: Any) -> Credentials:
    inst = ctx.rt.modules["auth_db"]
    c: Credentials | None = inst.state.get("creds")
    if c is None:
        c = inst.state["creds"] = Credentials(inst.params, inst.state.get("shm"))
    return c


def _ha1_candidates(c: Credentials, pend: auth.Pending, row: tuple[Any, ...]) -> list[str]:
    username = pend.cred.params["username"]
    alg = pend.alg.removesuffix("-SESS")
    if c.calc:
        pw = "" if row[0] is None else str(row[0])
        out = [auth.calc_ha1(alg, username, pend.realm, pw)]
        if c.pw_col.lower() in _HASH_COLUMNS and len(pw) == _HEX_LEN[alg] and _HEX.fullmatch(pw):
            out.append(pw.lower())
        return out
    value = row[1] if "@" in username else row[0]
    return [str(value or "").lower()]


def _set_avps(ctx: Any, c: Credentials, row: tuple[Any, ...]) -> None:
    for i, (name, _col) in enumerate(c.load):
        v = row[2 + i]
        if v is None:
            continue
        ctx.avps.setdefault(name, []).append(v if isinstance(v, int) else str(v))


def authenticate(ctx: Any, realm: str, table: str, www: bool, method: str | None = None) -> int:
    """The typed check: Kamailio's return codes (see ser.mods.auth), counted."""
    return auth.counted(ctx, _authenticate(ctx, realm, table, www, method))


def _authenticate(ctx: Any, realm: str, table: str, www: bool, method: str | None) -> int:
    pend = auth.pre_auth(ctx, realm, www)
    if isinstance(pend, int):
        return pend
    c = _creds(ctx)
    try:
        row = c.row(table, pend.user, pend.domain)
    except DbError as e:
        if not isinstance(e, DbUnavailable):
            _log(logging.ERROR, "auth_db: query of %s failed: %s", table, e)
        cfg = auth.config(ctx)
        auth.send_reply(ctx, 500, "Server Internal Error", [], cfg.force_stateless)
        ctx.cache["auth_replied"] = True
        return auth.AUTH_ERROR
    if row is None:
        return auth.USER_UNKNOWN
    if pend.alg.startswith("SHA-256") and not c.calc:
        stored = str(row[0] or "")
        if len(stored) != 64:
            _log(logging.ERROR, "auth_db: SHA-256 needs the plaintext password "
                 "(calculate_ha1 with password_column \"password\")")
            return auth.AUTH_ERROR
    if not any(auth.check_response(ctx, pend, ha1, method)
               for ha1 in _ha1_candidates(c, pend, row)):
        if c.force_avps:
            _set_avps(ctx, c, row)
        return auth.INVALID_PASSWORD
    rc = auth.post_auth(ctx, pend)
    if rc == auth.AUTHENTICATED or c.force_avps:
        _set_avps(ctx, c, row)
    return rc


def www_authenticate(ctx: Any, realm: str, table: str, method: str | None = None) -> int:
    return authenticate(ctx, realm, table, True, method)


def proxy_authenticate(ctx: Any, realm: str, table: str) -> int:
    return authenticate(ctx, realm, table, False)


def auth_check(ctx: Any, realm: str, table: str, flags: int) -> int:
    www = ctx.msg.method == "REGISTER"
    rc = authenticate(ctx, realm, table, www)
    if rc != auth.AUTHENTICATED:
        return rc
    _, i = ctx.cache["auth_ok"]
    creds = ctx.msg.authorization if www else ctx.msg.proxy_authorization
    user = (creds[i].username or "").partition("@")[0]
    r = realm or (creds[i].realm or "")
    if not auth.check_user(ctx, user, r, int(flags)):
        return auth.AUTH_USER_MISMATCH
    return rc


def is_subscriber(ctx: Any, uri: str, table: str, flags: int) -> int:
    try:
        u = parse_uri(uri)
    except ProtocolError:
        return -1
    if not isinstance(u, SipURI) or not u.user:
        return -1
    c = _creds(ctx)
    try:
        rows = c.db.query(
            f"SELECT {', '.join([c.pw_col, c.pw2_col, *[col for _, col in c.load]])} "
            f"FROM {table} WHERE {c.user_col} = ?" + (f" AND {c.domain_col} = ?"
                                                      if int(flags) & 1 else ""),
            (u.user, u.host) if int(flags) & 1 else (u.user,))
    except DbError:
        return -1
    if not rows:
        return -1
    if not int(flags) & 2:
        _set_avps(ctx, c, rows[0])
    return 1


def _table_fixup(args: list[FixedArg]) -> list[FixedArg]:
    t = args[1]
    if t.is_const and not IDENT.fullmatch(str(t.const)):
        raise FixupError(f"bad table name '{t.const}'", 1)
    return args


def mod_init(inst: Any) -> None:
    shm = inst.state.get("shm")
    if shm is not None:
        shm.create_table(GEN_TABLE, 1)


def rpc_flush(ctx: Any) -> str:
    """Drop every worker's credentials cache."""
    shm = getattr(ctx, "shm", None)
    if shm is None:
        raise RpcError(500, "no shared memory")
    shm.table(GEN_TABLE).incr(GEN_KEY)
    return "OK"


_auth_args = (Arg("realm", doc="realm (may hold $pv)"),
              Arg("table", doc="subscriber table"))

exports = Module(
    name="auth_db",
    doc="Digest authentication against a subscriber table.",
    depends=("auth",),
    params=(
        Param("db_url", str, "sqlite:///var/lib/ser/ser.db", "Database URL.", check_url),
        Param("user_column", str, "username", "Column of user names.", _ident),
        Param("domain_column", str, "domain", "Column of domains.", _ident),
        Param("password_column", str, "ha1", "Column of HA1 (or plaintext with "
              "calculate_ha1).", _ident),
        Param("password_column_2", str, "ha1b", "Column of HA1 over user@domain.", _ident),
        Param("calculate_ha1", int, 0, "password_column holds plaintext passwords."),
        Param("use_domain", int, 0, "Match the domain column too (the realm)."),
        Param("load_credentials", str, "", "Columns copied into AVPs after a successful "
              "check: \"$avp(i:12)=rpid; email_address\".", _check_load),
        Param("force_generate_avps", int, 0, "Load the AVPs even when the check fails."),
        Param("cache_ttl", int, 60, "Seconds a worker keeps a subscriber row (0: no cache); "
              "auth_db.flush (serctl passwd) drops every cache at once."),
        Param("version_table", int, 1, "Check the table version (ser uses Kamailio's "
              "schema).", ignored=True),
    ),
    functions=(
        Function("www_authenticate", www_authenticate, (*_auth_args, Arg("method",
                 optional=True)), R.REQUEST, _table_fixup,
                 "Check Authorization against the table (-1..-6 as Kamailio)."),
        Function("www_authorize", www_authenticate, _auth_args, R.REQUEST, _table_fixup,
                 "Old name of www_authenticate."),
        Function("proxy_authenticate", proxy_authenticate, _auth_args, R.REQUEST, _table_fixup,
                 "Check Proxy-Authorization against the table."),
        Function("proxy_authorize", proxy_authenticate, _auth_args, R.REQUEST, _table_fixup,
                 "Old name of proxy_authenticate."),
        Function("auth_check", auth_check, (*_auth_args, Arg("flags", "int")), R.REQUEST,
                 _table_fixup, "www_ for REGISTER, proxy_ otherwise; flags 1: the auth user "
                 "must be the From (and To) user (-8), 2: not for INVITE, BYE, ..."),
        Function("is_subscriber", is_subscriber, (Arg("uri"), Arg("table"),
                 Arg("flags", "int")), R.ANY, _table_fixup,
                 "True if the URI's user is in the table (flags 1: with domain, "
                 "2: no AVPs)."),
    ),
    rpc=(RPCMethod("auth_db.flush", rpc_flush, "Drop the credentials cache of every worker."),),
    mod_init=mod_init,
)
