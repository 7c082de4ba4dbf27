"""auth: digest authentication, the part every backend shares (Kamailio's auth).

Theory of operation
-------------------
A challenge carries a *nonce* that the server can check later without
remembering it::

    nonce = base64( since(>I) expires(>I) nid(>Q) flags(>B) mac(16) )
    mac   = HMAC-SHA-256(secret, the 17 bytes before it)[:16]

``secret`` (modparam, random per start when not set) is the only key: nodes
that share it verify each other's nonces. ``nid`` is 64 random bits naming
the nonce for the replay checks; ``flags`` records what the challenge asked
for (1: nc tracking, qop was offered with ``nonce_count``; 2: one-time use).

A response is checked in three steps (:func:`pre_auth`, the backend's
password lookup, :func:`check_response` + :func:`post_auth`):

1. find the credentials for the realm (none: -5), check they are complete,
   decode the nonce (bad MAC or form: -1; expired or from the future beyond
   ``nonce_auth_max_drift``: -4, the next challenge says ``stale=true``);
2. the backend finds HA1 (no such user: -3);
3. the digest (RFC 2617 / 7616, MD5 and SHA-256 per RFC 8760, ``-sess``,
   ``auth-int``) is compared in constant time (-2 on mismatch); then the
   replay state: with ``nonce_count`` and an ``nc`` the nc must be higher than
   any seen for that nonce (a replay: -6, stale), otherwise with
   ``one_time_nonce`` the nonce is good once (-6). Replay state lives in the
   shared-memory table ``auth_nonce`` (one record per nonce in use, expiring
   with the nonce), so every worker sees it; each node keeps its own.

Return codes are Kamailio's: 1 authenticated, -1 error, -2 wrong password,
-3 unknown user, -4 stale nonce, -5 no credentials, -6 nonce reused,
-8 auth user mismatch (``auth_check``).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import os
import struct
import time
from dataclasses import dataclass, field
from typing import Any

from ser.core.log import RateLimited, log
from ser.core.module import Arg, FixedArg, FixupError, Function, Module, Param, RouteType

R = RouteType
_log = RateLimited(interval=10.0, burst=3)

AUTHENTICATED = 1
AUTH_ERROR = -1
INVALID_PASSWORD = -2
USER_UNKNOWN = -3
STALE_NONCE = -4
NO_CREDENTIALS = -5
NONCE_REUSED = -6
AUTH_USER_MISMATCH = -8

# challenge flags (www_challenge & co)
F_QOP_AUTH = 1
F_QOP_AUTH_INT = 2
F_NO_500 = 4
F_STALE = 16

# nonce flags
N_NC = 1
N_OTN = 2

NONCE_TABLE = "auth_nonce"
_NONCE = struct.Struct(">IIQB")
_MAC_LEN = 16
_NONCE_RAW = _NONCE.size + _MAC_LEN
_NC_MAX = 255

# algorithm name (upper case) -> (hash constructor, session variant)
ALGORITHMS: dict[str, tuple[Any, bool]] = {
    "MD5": (hashlib.md5, False), "MD5-SESS": (hashlib.md5, True),
    "SHA-256": (hashlib.sha256, False), "SHA-256-SESS": (hashlib.sha256, True),
}
_STRENGTH = {"SHA-256": 0, "MD5": 1}
_CHALLENGE_NAMES = {"MD5": "MD5", "SHA-256": "SHA-256"}


def hexdigest(alg: str, text: str) -> str:
    """H(text) of ``alg`` ("MD5", "SHA-256", with or without -sess), hex."""
    return ALGORITHMS[alg.upper()][0](text.encode("utf-8", "surrogateescape")).hexdigest()


def calc_ha1(alg: str, user: str, realm: str, password: str, nonce: str = "",
             cnonce: str = "") -> str:
    """HA1 of RFC 7616 3.4.2 (the ``-sess`` forms need nonce and cnonce)."""
    ha1 = hexdigest(alg, f"{user}:{realm}:{password}")
    if ALGORITHMS[alg.upper()][1]:
        ha1 = hexdigest(alg, f"{ha1}:{nonce}:{cnonce}")
    return ha1


def calc_response(alg: str, ha1: str, nonce: str, method: str, uri: str, qop: str = "",
                  nc: str = "", cnonce: str = "", body: bytes = b"") -> str:
    """The request-digest of RFC 2617 3.2.2.1 / RFC 7616 3.4.1 from HA1."""
    h = ALGORITHMS[alg.upper()][0]
    if qop == "auth-int":
        a2 = f"{method}:{uri}:{h(body).hexdigest()}"
    else:
        a2 = f"{method}:{uri}"
    ha2 = h(a2.encode("utf-8", "surrogateescape")).hexdigest()
    if qop:
        data = f"{ha1}:{nonce}:{nc}:{cnonce}:{qop}:{ha2}"
    else:
        data = f"{ha1}:{nonce}:{ha2}"
    return h(data.encode("utf-8", "surrogateescape")).hexdigest()


# ---------------------------------------------------------------- settings

@dataclass
class AuthConfig:
    """The module's settings, built once (master, before the fork)."""
    secret: bytes
    expire: int = 300
    drift: int = 3
    nonce_count: bool = False
    otn: bool = False
    algorithms: tuple[str, ...] = ("MD5",)
    qop: int = 0
    realm_prefix: str = ""
    force_stateless: bool = False
    authinfo: bool = False
    shm: Any = None
    table: Any = None
    local: dict[bytes, bytes] = field(default_factory=dict)   # replay state without shm


def parse_algorithms(text: str) -> tuple[str, ...]:
    """"SHA-256,MD5" -> ("SHA-256", "MD5"), strongest first; ValueError if unknown."""
    names = []
    for part in str(text).replace(";", ",").split(","):
        p = part.strip().upper()
        if not p:
            continue
        if p not in _STRENGTH:
            raise ValueError(f"unknown algorithm '{part.strip()}' (MD5 or SHA-256)")
        if p not in names:
            names.append(p)
    names.sort(key=lambda n: _STRENGTH[n])
    return tuple(names) or ("MD5",)


def _check_algorithms(v: object) -> str | None:
    try:
        parse_algorithms(str(v))
    except ValueError as e:
        return str(e)
    return None


def _check_qop(v: object) -> str | None:
    return None if str(v).strip().lower() in ("", "auth", "auth-int") else \
        "qop is \"auth\", \"auth-int\" or empty"


def build_config(params: dict[str, Any], shm: Any = None) -> AuthConfig:
    secret = str(params["secret"] or "")
    qop = {"auth": F_QOP_AUTH, "auth-int": F_QOP_AUTH_INT}.get(str(params["qop"]).lower(), 0)
    cfg = AuthConfig(
        secret=secret.encode() if secret else os.urandom(32),
        expire=int(params["nonce_expire"]), drift=int(params["nonce_auth_max_drift"]),
        nonce_count=bool(params["nonce_count"]), otn=bool(params["one_time_nonce"]),
        algorithms=parse_algorithms(str(params["algorithm"] or "MD5")), qop=qop,
        realm_prefix=str(params["realm_prefix"] or ""),
        force_stateless=bool(params["force_stateless_reply"]),
        authinfo=bool(params["add_authinfo_hdr"]), shm=shm)
    return cfg


def config(ctx: Any) -> AuthConfig:
    """The auth settings of the running script (built on first use outside a daemon)."""
    inst = ctx.rt.modules.get("auth")
    if inst is None:
        raise RuntimeError("the auth module is not loaded")
    cfg: AuthConfig | None = inst.state.get("cfg")
    if cfg is None:
        cfg = inst.state["cfg"] = build_config(inst.params, inst.state.get("shm"))
    return cfg


STATS = ("auth:challenges", "auth:authenticated", "auth:invalid_password",
         "auth:user_unknown", "auth:stale_nonces", "auth:nonce_reused", "auth:errors")
_RESULT_STATS = {AUTHENTICATED: "auth:authenticated", INVALID_PASSWORD: "auth:invalid_password",
                 USER_UNKNOWN: "auth:user_unknown", STALE_NONCE: "auth:stale_nonces",
                 NONCE_REUSED: "auth:nonce_reused", AUTH_ERROR: "auth:errors"}


def _count(ctx: Any, name: str) -> None:
    shm = getattr(ctx.rt, "shm", None)     # None outside a daemon (unit tests)
    if shm is not None:
        shm.stats.inc(name)


def counted(ctx: Any, rc: int) -> int:
    """``rc``, an authentication result, counted in its ``auth:`` statistic
    (no credentials at all is not counted: the challenge that follows is)."""
    name = _RESULT_STATS.get(rc)
    if name is not None:
        _count(ctx, name)
    return rc


def mod_init(inst: Any) -> None:
    shm = inst.state.get("shm")
    if shm is not None:
        for name in STATS:
            shm.stats.declare(name)
    cfg = inst.state["cfg"] = build_config(inst.params, shm)
    if shm is not None and (cfg.nonce_count or cfg.otn):
        shm.create_table(NONCE_TABLE, 14)
    if "SHA-256" in cfg.algorithms:
        log.info("auth: challenges offer %s", ", ".join(cfg.algorithms))


def child_init(inst: Any, rank: int) -> None:
    cfg = config_of(inst)
    if cfg.shm is not None and (cfg.nonce_count or cfg.otn):
        cfg.table = cfg.shm.table(NONCE_TABLE)


def config_of(inst: Any) -> AuthConfig:
    cfg: AuthConfig | None = inst.state.get("cfg")
    if cfg is None:
        cfg = inst.state["cfg"] = build_config(inst.params, inst.state.get("shm"))
    return cfg


# ---------------------------------------------------------------- nonces

def make_nonce(cfg: AuthConfig, flags: int = 0, now: float | None = None) -> str:
    t = int(time.time() if now is None else now)
    raw = _NONCE.pack(t, t + cfg.expire, int.from_bytes(os.urandom(8), "big"), flags)
    mac = hmac.digest(cfg.secret, raw, "sha256")[:_MAC_LEN]
    return base64.b64encode(raw + mac).decode()


@dataclass(frozen=True)
class Nonce:
    since: int
    expires: int
    nid: int
    flags: int


def decode_nonce(cfg: AuthConfig, nonce: str) -> Nonce | None:
    """The nonce's fields, or None when it is not one of ours (form or MAC)."""
    try:
        data = base64.b64decode(nonce, validate=True)
    except (binascii.Error, ValueError):
        return None
    if len(data) != _NONCE_RAW:
        return None
    raw, mac = data[:_NONCE.size], data[_NONCE.size:]
    if not hmac.compare_digest(hmac.digest(cfg.secret, raw, "sha256")[:_MAC_LEN], mac):
        return None
    return Nonce(*_NONCE.unpack(raw))


def _nc_update(cfg: AuthConfig, key: bytes, nc: int, expires: float) -> bool:
    """Records ``nc`` for nonce ``key``; False when it is not above the highest seen."""
    ok = [False]

    def fn(old: bytes | None) -> bytes | None:
        last = old[0] if old else 0
        if nc <= last:
            return old
        ok[0] = True
        return bytes((nc,))
    if cfg.table is not None:
        cfg.table.update(key, fn, expires=expires)
    else:
        new = fn(cfg.local.get(key))
        if new is not None:
            cfg.local[key] = new
    return ok[0]


def _otn_use(cfg: AuthConfig, key: bytes, expires: float) -> bool:
    """Marks a one-time nonce used; False when it already was."""
    if cfg.table is not None:
        return bool(cfg.table.add(key, b"\x01", expires=expires))
    if key in cfg.local:
        return False
    cfg.local[key] = b"\x01"
    return True


# ---------------------------------------------------------------- challenges

def _realm(ctx: Any, realm: str, www: bool) -> str:
    if realm:
        return realm
    na = ctx.msg.to if www and ctx.msg.method == "REGISTER" else ctx.msg.from_
    host = getattr(getattr(na, "uri", None), "host", None)
    return str(host or "")


def challenge_headers(cfg: AuthConfig, realm: str, flags: int, www: bool,
                      algorithms: tuple[str, ...] | None = None, stale: bool = False) -> list[str]:
    """One WWW-/Proxy-Authenticate line per algorithm, strongest first."""
    qops = []
    if flags & F_QOP_AUTH or cfg.qop & F_QOP_AUTH:
        qops.append("auth")
    if flags & F_QOP_AUTH_INT or cfg.qop & F_QOP_AUTH_INT:
        qops.append("auth-int")
    nflags = (N_NC if qops and cfg.nonce_count else 0) | (N_OTN if cfg.otn else 0)
    name = "WWW-Authenticate" if www else "Proxy-Authenticate"
    stale_p = ", stale=true" if stale or flags & F_STALE else ""
    qop_p = f', qop="{",".join(qops)}"' if qops else ""
    algs = algorithms or cfg.algorithms
    out = []
    for alg in algs:
        alg_p = f", algorithm={_CHALLENGE_NAMES[alg]}" if len(algs) > 1 or alg != "MD5" \
            else ""
        out.append(f'{name}: Digest realm="{realm}", nonce="{make_nonce(cfg, nflags)}"'
                   f"{stale_p}{alg_p}{qop_p}")
    return out


def send_reply(ctx: Any, code: int, reason: str, headers: list[str],
               stateless: bool = False) -> bool:
    """Statefully when tm has a transaction for the request (and ``stateless``
    is off), statelessly otherwise; ``headers`` go into that reply only."""
    tm = ctx.rt.modules.get("tm")
    if tm is not None and not stateless and ctx.cache.get("tm_txn") is not None:
        t_reply = tm.decl.function("t_reply")
        if t_reply is not None:
            saved = ctx.cache.get("reply_headers")
            ctx.cache["reply_headers"] = [*(saved or ()), *headers]
            try:
                return bool(t_reply.call(ctx, code, reason) > 0)
            finally:
                if saved is None:
                    ctx.cache.pop("reply_headers", None)
                else:
                    ctx.cache["reply_headers"] = saved
    core = ctx.rt.core
    if core is None:
        ctx.actions.append(("reply", code, reason, list(headers)))
        return True
    try:
        return bool(core.reply(ctx, code, reason, headers=headers))
    except ValueError as e:
        _log(logging.ERROR, "auth: cannot answer %s: %s", ctx.msg.method, e)
        return False


def challenge(ctx: Any, realm: str, flags: int, www: bool,
              algorithms: tuple[str, ...] | None = None) -> int:
    """The typed challenge: 401 (``www``) or 407 with one header per algorithm."""
    cfg = config(ctx)
    if ctx.cache.get("auth_replied"):
        return -1       # the authenticate call already answered (a 500)
    r = _realm(ctx, realm, www)
    if not r:
        if not flags & F_NO_500:
            send_reply(ctx, 500, "Server Internal Error", [], cfg.force_stateless)
        return -1
    hdrs = challenge_headers(cfg, r, flags, www, algorithms, bool(ctx.cache.get("auth_stale")))
    code, reason = (401, "Unauthorized") if www else (407, "Proxy Authentication Required")
    if not send_reply(ctx, code, reason, hdrs, cfg.force_stateless):
        if not flags & F_NO_500:
            send_reply(ctx, 500, "Server Internal Error", [], cfg.force_stateless)
        return -1
    _count(ctx, "auth:challenges")
    return 1


def _algs_arg(text: str | None) -> tuple[str, ...] | None:
    if not text:
        return None
    try:
        return parse_algorithms(text)
    except ValueError as e:
        _log(logging.ERROR, "auth: %s", e)
        return None


def www_challenge(ctx: Any, realm: str, flags: int, algorithms: str | None = None) -> int:
    return challenge(ctx, realm, int(flags), True, _algs_arg(algorithms))


def proxy_challenge(ctx: Any, realm: str, flags: int, algorithms: str | None = None) -> int:
    return challenge(ctx, realm, int(flags), False, _algs_arg(algorithms))


def auth_challenge(ctx: Any, realm: str, flags: int, algorithms: str | None = None) -> int:
    return challenge(ctx, realm, int(flags), ctx.msg.method == "REGISTER",
                     _algs_arg(algorithms))


def auth_get_www_authenticate(ctx: Any, realm: str, flags: int, dest: Any) -> int:
    cfg = config(ctx)
    r = _realm(ctx, realm, True)
    if not r:
        return -1
    hdr = challenge_headers(cfg, r, int(flags), True)[0]
    dest.set(ctx, hdr.split(": ", 1)[1])
    return 1


# ---------------------------------------------------------------- verification

@dataclass
class Pending:
    """A response that passed :func:`pre_auth`: what the backend needs."""
    cred: Any
    hdr: str                  # "authorization" or "proxy-authorization"
    index: int
    user: str                 # username without @domain
    domain: str               # domain of the username, else the realm
    realm: str
    alg: str
    nonce: Nonce


def _strip_prefix(cfg: AuthConfig, realm: str) -> str:
    p = cfg.realm_prefix
    return realm[len(p):] if p and realm.startswith(p) else realm


def find_credentials(ctx: Any, realm: str, www: bool) -> tuple[Any, str, int] | None:
    msg = ctx.msg
    hdr = "authorization" if www else "proxy-authorization"
    creds = msg.authorization if www else msg.proxy_authorization
    for i, c in enumerate(creds):
        if c.scheme.lower() == "digest" and c.realm == realm:
            return c, hdr, i
    return None


def pre_auth(ctx: Any, realm: str, www: bool) -> Pending | int:
    """Steps before the password lookup; an int is the failure code."""
    cfg = config(ctx)
    realm = _strip_prefix(cfg, _realm(ctx, realm, www))
    try:
        found = find_credentials(ctx, realm, www)
    except Exception as e:  # noqa: BLE001 - an unparsable header is no credentials
        _log(logging.WARNING, "auth: bad credentials from %s: %s", ctx.src_ip, e)
        return AUTH_ERROR
    if found is None:
        return NO_CREDENTIALS
    cred, hdr, index = found
    p = cred.params
    username, nonce_text, uri, response = (p.get("username"), p.get("nonce"), p.get("uri"),
                                           p.get("response"))
    qop = p.get("qop")
    if not username or not nonce_text or uri is None or not response or \
            (qop and (not p.get("nc") or not p.get("cnonce"))):
        _log(logging.WARNING, "auth: incomplete credentials from %s:%s", ctx.src_ip, ctx.src_port)
        return AUTH_ERROR
    alg = (p.get("algorithm") or "MD5").upper()
    if alg not in ALGORITHMS:
        _log(logging.WARNING, "auth: unsupported algorithm %s from %s", alg, ctx.src_ip)
        return AUTH_ERROR
    nonce = decode_nonce(cfg, nonce_text)
    if nonce is None:
        _log(logging.INFO, "auth: a nonce that is not ours from %s:%s", ctx.src_ip, ctx.src_port)
        return AUTH_ERROR
    now = time.time()
    if nonce.expires < now or nonce.since > now + cfg.drift:
        ctx.cache["auth_stale"] = True
        return STALE_NONCE
    user, at, dom = username.partition("@")
    return Pending(cred, hdr, index, user, dom if at else realm, realm, alg, nonce)


def check_response(ctx: Any, pend: Pending, ha1: str, method: str | None = None) -> bool:
    """Whether the digest response matches ``ha1`` (a plain HA1; the ``-sess``
    step is applied here)."""
    p = pend.cred.params
    alg = pend.alg
    if ALGORITHMS[alg][1]:
        ha1 = hexdigest(alg, f"{ha1}:{p.get('nonce')}:{p.get('cnonce', '')}")
    qop = (p.get("qop") or "").lower()
    body = ctx.msg.body if qop == "auth-int" else b""
    want = calc_response(alg, ha1, p["nonce"], method or ctx.msg.method, p["uri"], qop,
                         p.get("nc", ""), p.get("cnonce", ""), body)
    return hmac.compare_digest(want, str(p["response"]).lower())


def post_auth(ctx: Any, pend: Pending) -> int:
    """Replay checks after a good digest; marks the credentials authorized."""
    cfg = config(ctx)
    n = pend.nonce
    p = pend.cred.params
    key = n.nid.to_bytes(8, "big")
    if cfg.nonce_count and p.get("nc") and n.flags & N_NC:
        try:
            nc = int(p["nc"], 16)
        except ValueError:
            return AUTH_ERROR
        if nc > _NC_MAX or not _nc_update(cfg, key, nc, n.expires):
            ctx.cache["auth_stale"] = True
            return NONCE_REUSED if nc <= _NC_MAX else STALE_NONCE
    elif cfg.otn and n.flags & N_OTN:
        if not _otn_use(cfg, key, n.expires):
            ctx.cache["auth_stale"] = True
            return NONCE_REUSED
    ctx.cache["auth_ok"] = (pend.hdr, pend.index)
    if cfg.authinfo:
        nxt = make_nonce(cfg, n.flags) if n.flags & N_OTN else p["nonce"]
        ctx.cache.setdefault("reply_headers", []).append(
            f'Authentication-Info: nextnonce="{nxt}"')
    return AUTHENTICATED


def authenticate_ha1(ctx: Any, realm: str, ha1: str, www: bool,
                     method: str | None = None) -> int:
    """The whole check against one known HA1 (pv_*_authenticate), counted."""
    pend = pre_auth(ctx, realm, www)
    if isinstance(pend, int):
        return counted(ctx, pend)
    if not check_response(ctx, pend, ha1, method):
        return counted(ctx, INVALID_PASSWORD)
    return counted(ctx, post_auth(ctx, pend))


def _pv_authenticate(ctx: Any, realm: str, passwd: str, flags: int, www: bool,
                     method: str | None) -> int:
    flags = int(flags)
    pend = pre_auth(ctx, realm, www)
    if isinstance(pend, int):
        if flags & F_STALE or pend in (STALE_NONCE, NONCE_REUSED):
            ctx.cache["auth_stale"] = True
        return pend
    p = pend.cred.params
    ha1 = passwd if flags & 1 else calc_ha1(pend.alg.removesuffix("-SESS"), p["username"],
                                               pend.realm, passwd)
    if not check_response(ctx, pend, ha1, method):
        return INVALID_PASSWORD
    return post_auth(ctx, pend)


def pv_www_authenticate(ctx: Any, realm: str, passwd: str, flags: int,
                        method: str | None = None) -> int:
    return _pv_authenticate(ctx, realm, passwd, flags, True, method)


def pv_proxy_authenticate(ctx: Any, realm: str, passwd: str, flags: int) -> int:
    return _pv_authenticate(ctx, realm, passwd, flags, False, None)


def check_user(ctx: Any, pend_user: str, realm: str, flags: int) -> bool:
    """auth_check's identity check (flags 1, and 2 to skip anonymous-capable methods)."""
    if not flags & 1:
        return True
    method = ctx.msg.method
    if flags & 2 and method in ("INVITE", "BYE", "PRACK", "UPDATE", "MESSAGE"):
        return True
    uris = [ctx.msg.from_]
    if method == "REGISTER":
        uris.append(ctx.msg.to)
    for na in uris:
        u = getattr(na, "uri", None)
        if u is None or getattr(u, "user", None) != pend_user or \
                str(getattr(u, "host", "")).lower() != realm.lower():
            return False
    if method == "PUBLISH":
        u = ctx.msg.uri
        if getattr(u, "user", None) != pend_user:
            return False
    return True


def pv_auth_check(ctx: Any, realm: str, passwd: str, flags: int, checks: int) -> int:
    www = ctx.msg.method == "REGISTER"
    rc = _pv_authenticate(ctx, realm, passwd, flags, www, None)
    if rc == AUTHENTICATED:
        hdr, i = ctx.cache["auth_ok"]
        creds = ctx.msg.authorization if www else ctx.msg.proxy_authorization
        user = (creds[i].username or "").partition("@")[0]
        if not check_user(ctx, user, _realm(ctx, realm, www), int(checks)):
            return AUTH_USER_MISMATCH
    return rc


def consume_credentials(ctx: Any) -> int:
    """Removes the credentials that were authorized from the request."""
    ok = ctx.cache.get("auth_ok")
    if ok is None:
        return -1
    hdr, index = ok
    name = "Authorization" if hdr == "authorization" else "Proxy-Authorization"
    values = ctx.msg.headers(hdr)
    if len(values) <= 1:
        ctx.msg.remove_header(name)
        return 1
    ctx.msg.remove_header(name)
    for i, v in enumerate(values):
        if i != index:
            ctx.msg.add_header(name, v)
    return 1


def has_credentials(ctx: Any, realm: str) -> int:
    try:
        creds = [*ctx.msg.authorization, *ctx.msg.proxy_authorization]
    except Exception:  # noqa: BLE001 - unparsable: none
        return -1
    return 1 if any(c.realm == realm for c in creds) else -1


def _flags_fixup(args: list[FixedArg]) -> list[FixedArg]:
    if len(args) > 1 and args[1].is_const:
        try:
            int(args[1].const)
        except (TypeError, ValueError):
            raise FixupError(f"bad flags '{args[1].const}' (a number)", 1) from None
    if len(args) > 2 and args[2].is_const and args[2].const:
        try:
            parse_algorithms(str(args[2].const))
        except ValueError as e:
            raise FixupError(str(e), 2) from None
    return args


def _pv_out_fixup(args: list[FixedArg]) -> list[FixedArg]:
    dest = args[2].const
    if not getattr(dest, "writable", False):
        raise FixupError("the third argument must be a writable pseudo-variable", 2)
    return args


_chal = (Arg("realm", doc="realm (may hold $pv; empty: the From/To domain)"),
         Arg("flags", "int", doc="1 qop=auth, 2 qop=auth-int, 4 no 500 on error, 16 stale=true"),
         Arg("algorithms", optional=True, doc='e.g. "SHA-256,MD5": one challenge each'))
_pva = (Arg("realm"), Arg("passwd", doc="password (or HA1 with flag 1)"),
        Arg("flags", "int", doc="1 passwd is HA1, 16 stale=true on the next challenge"))

exports = Module(
    name="auth",
    doc="Digest authentication (RFC 2617, RFC 7616, SHA-256 per RFC 8760): challenges, "
        "nonces shared by nodes with one secret, replay protection.",
    params=(
        Param("secret", str, "", "Key of the nonce MAC; nodes sharing it verify each "
              "other's nonces (random per start when empty)."),
        Param("nonce_expire", int, 300, "Seconds a nonce is valid.",
              lambda v: None if isinstance(v, int) and v > 0 else "must be positive"),
        Param("nonce_auth_max_drift", int, 3, "Seconds a nonce may come from the future."),
        Param("nonce_count", int, 0, "Check nc (with qop): each must be above the last."),
        Param("one_time_nonce", int, 0, "A nonce is good for one request."),
        Param("qop", str, "", "Offer qop in every challenge: auth, auth-int or empty.",
              _check_qop),
        Param("algorithm", str, "", "MD5 (default), SHA-256 or a list \"SHA-256,MD5\" "
              "(one challenge per algorithm, strongest first).", _check_algorithms),
        Param("realm_prefix", str, "", "Prefix stripped from the realm."),
        Param("force_stateless_reply", int, 0, "Challenge statelessly even with a transaction."),
        Param("add_authinfo_hdr", int, 0, "Add Authentication-Info with nextnonce on success."),
        Param("use_domain", int, 0, "pv_auth_check compares domains too."),
        Param("auth_checks_register", int, 0, "Extra nonce checks (not in ser).", ignored=True),
        Param("auth_checks_no_dlg", int, 0, "Extra nonce checks (not in ser).", ignored=True),
        Param("auth_checks_in_dlg", int, 0, "Extra nonce checks (not in ser).", ignored=True),
        Param("nid_pool_no", int, 1, "Nonce id pools (ser keys replay state by a random id).",
              ignored=True),
        Param("nc_array_size", int, 1 << 20, "nc array size (ser: a shm table).", ignored=True),
        Param("nc_array_order", int, 20, "nc array order (ser: a shm table).", ignored=True),
        Param("otn_in_flight_no", int, 1 << 20, "otn array size (ser: a shm table).",
              ignored=True),
        Param("otn_in_flight_order", int, 20, "otn array order (ser: a shm table).",
              ignored=True),
    ),
    functions=(
        Function("www_challenge", www_challenge, _chal, R.REQUEST, _flags_fixup,
                 "Answer 401 with a digest challenge."),
        Function("proxy_challenge", proxy_challenge, _chal, R.REQUEST, _flags_fixup,
                 "Answer 407 with a digest challenge."),
        Function("auth_challenge", auth_challenge, _chal, R.REQUEST, _flags_fixup,
                 "401 for REGISTER, 407 for other requests."),
        Function("consume_credentials", consume_credentials, (), R.REQUEST,
                 doc="Remove the authorized credentials from the request."),
        Function("has_credentials", has_credentials, (Arg("realm"),), R.REQUEST,
                 doc="True if the request has credentials for the realm."),
        Function("pv_www_authenticate", pv_www_authenticate,
                 (*_pva, Arg("method", optional=True)), R.REQUEST,
                 doc="Check Authorization against a password from a variable."),
        Function("pv_proxy_authenticate", pv_proxy_authenticate, _pva, R.REQUEST,
                 doc="Check Proxy-Authorization against a password from a variable."),
        Function("pv_auth_check", pv_auth_check, (*_pva, Arg("checks", "int")), R.REQUEST,
                 doc="pv_www_authenticate for REGISTER, pv_proxy_authenticate otherwise; "
                     "checks 1: the auth user must be the From/To user (-8)."),
        Function("auth_get_www_authenticate", auth_get_www_authenticate,
                 (Arg("realm"), Arg("flags", "int"), Arg("dest", "pv")), R.ANY, _pv_out_fixup,
                 doc="Build a WWW-Authenticate value into a variable."),
    ),
    mod_init=mod_init,
    child_init=child_init,
)
