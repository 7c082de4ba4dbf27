"""Pseudo-variables: declarations, resolution, formatting of ``"$pv"`` strings.

A pseudo-variable class is declared once as a :class:`PVDecl` -- the core
ones in ``CORE_PVS`` below, module ones in the module's ``exports.pvs``. At
load time every ``$name(inner)[index]{tr}`` of the script is resolved by a
:class:`PVResolver` into a :class:`PVRef`: the declaration, the inner name
parsed once by the declaration's ``parse_name`` and the transformations.
Per message only ``PVRef.get(ctx)`` / ``PVRef.set(ctx, value)`` run.

Values are ``str``, ``int`` or ``None`` (``$null``: not set).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ser.core.cfg.errors import CfgError, Pos, did_you_mean
from ser.core.transformations import TRANSFORMS

if TYPE_CHECKING:
    from ser.core.cfg import ast

Value = str | int | None


@dataclass(frozen=True)
class PVDecl:
    """One pseudo-variable class.

    get(ctx, pname) -> Value; set(ctx, pname, value) (None: read-only).
    parse_name(inner, index, resolver) -> pname, run once at load time;
    raises ValueError with a message for a bad name. None: the PV takes no
    inner name and no index.
    """
    name: str
    get: Callable[[Any, Any], Value]
    set: Callable[[Any, Any, Value], None] | None = None
    parse_name: Callable[[str | None, str | None, PVResolver], Any] | None = None
    doc: str = ""
    inline: str | None = None   # a Python expression for the compiler: ``ctx`` and
                                # ``{name}`` (repr of the parsed name); same value as get


class PVRef:
    """A resolved pseudo-variable of the script."""
    __slots__ = ("decl", "pname", "transforms", "raw", "_get", "_set")

    def __init__(self, decl: PVDecl, pname: Any, transforms: tuple[Any, ...], raw: str) -> None:
        self.decl = decl
        self.pname = pname
        self.transforms = transforms
        self.raw = raw
        self._get = decl.get
        self._set = decl.set

    @property
    def writable(self) -> bool:
        return self._set is not None and not self.transforms

    def get(self, ctx: Any) -> Value:
        v = self._get(ctx, self.pname)
        for fn, args in self.transforms:
            v = fn(v, *[a(ctx) if callable(a) else a for a in args])
        return v

    def set(self, ctx: Any, value: Value) -> None:
        assert self._set is not None
        self._set(ctx, self.pname, value)

    def __repr__(self) -> str:
        return f"PVRef({self.raw})"


def to_str(v: Value) -> str:
    """A value as printed inside a formatted string (Kamailio prints <null>)."""
    if v is None:
        return "<null>"
    return v if isinstance(v, str) else str(v)


class Formatter:
    """A string with ``$pv`` inside, split once; ``fmt(ctx)`` renders it.

    The rendering is compiled into one Python f-string expression, so a call
    costs the PV getters and nothing else.
    """
    __slots__ = ("parts", "text", "const", "render")

    def __init__(self, parts: list[str | PVRef], text: str) -> None:
        self.parts = parts
        self.text = text
        self.const: str | None = parts[0] if len(parts) == 1 and isinstance(parts[0], str) \
            else ("" if not parts else None)
        ns: dict[str, Any] = {"_to_str": to_str}
        pieces = []
        for i, p in enumerate(parts):
            if isinstance(p, str):
                pieces.append(p.replace("{", "{{").replace("}", "}}"))
            elif p.transforms:
                ns[f"P{i}"] = p
                pieces.append(f"{{_to_str(P{i}.get(ctx))}}")
            elif p.decl.inline is not None:
                ns[f"N{i}"] = p.pname
                pieces.append("{_to_str(" + p.decl.inline.format(name=f"N{i}") + ")}")
            else:
                ns[f"G{i}"], ns[f"N{i}"] = p.decl.get, p.pname
                pieces.append(f"{{_to_str(G{i}(ctx, N{i}))}}")
        body = "".join(pieces)
        self.render: Callable[[Any], str] = eval(  # noqa: S307 - our own generated code
            f"lambda ctx: f{body!r}", ns)

    def __call__(self, ctx: Any) -> str:
        return self.render(ctx)


class PVResolver:
    """Resolves script pseudo-variables against the core and loaded modules."""

    def __init__(self, decls: dict[str, PVDecl] | None = None) -> None:
        self.decls: dict[str, PVDecl] = dict(CORE_PVS)
        if decls:
            self.decls.update(decls)
        # where the pseudo-variable being resolved is written, for $cfg(...):
        # its position (set per resolve) and the name of its route block (set
        # by the compiler per route, Kamailio's names: DEFAULT_ROUTE, ...)
        self.pos: Pos = ("<none>", 0, 0)
        self.route: str = ""

    def add(self, decl: PVDecl) -> None:
        self.decls[decl.name] = decl

    def resolve(self, pv: ast.PV) -> PVRef:
        decl = self.decls.get(pv.name)
        if decl is None:
            raise CfgError.at(pv.pos, f"unknown pseudo-variable '${pv.name}'",
                              did_you_mean(pv.name, self.decls))
        if decl.parse_name is None:
            if pv.inner is not None or pv.index is not None:
                raise CfgError.at(pv.pos, f"pseudo-variable '${pv.name}' takes no name or index")
            pname = None
        else:
            self.pos = pv.pos
            try:
                pname = decl.parse_name(pv.inner, pv.index, self)
            except ValueError as e:
                raise CfgError.at(pv.pos, f"bad pseudo-variable '{pv.raw}': {e}") from None
        trs = []
        for tr in pv.transforms:
            spec = TRANSFORMS.get(tr.name)
            if spec is None:
                raise CfgError.at(tr.pos, f"unknown transformation '{{{tr.name}}}'",
                                  did_you_mean(tr.name, TRANSFORMS))
            lo, hi, fn = spec
            if not lo <= len(tr.args) <= hi:
                want = str(lo) if lo == hi else f"{lo} to {hi}"
                raise CfgError.at(tr.pos, f"transformation '{{{tr.name}}}' takes {want} "
                                  f"argument(s), got {len(tr.args)}")
            args: list[Any] = []
            for a in tr.args:
                args.append(self.parse_text(a, tr.pos) if a.startswith("$") else a)
            trs.append((fn, tuple(args)))
        return PVRef(decl, pname, tuple(trs), pv.raw)

    def parse_text(self, text: str, pos: Pos) -> PVRef:
        from ser.core.cfg.parser import parse_pv_text
        return self.resolve(parse_pv_text(text, pos))

    def format(self, text: str, pos: Pos) -> Formatter:
        """Split a string holding ``$pv`` references (``\\$`` is a literal $)."""
        from ser.core.cfg.lexer import scan_pv
        parts: list[str | PVRef] = []
        buf: list[str] = []
        i = 0
        n = len(text)
        while i < n:
            c = text[i]
            if c == "\\" and i + 1 < n and text[i + 1] == "$":
                buf.append("$")
                i += 2
                continue
            if c == "$":
                end = scan_pv(text, i)
                if end is not None:
                    if buf:
                        parts.append("".join(buf))
                        buf = []
                    raw = text[i:end]
                    parts.append(self.parse_text(raw, pos) if raw != "$null" else "<null>")
                    i = end
                    continue
            buf.append(c)
            i += 1
        if buf or not parts:
            parts.append("".join(buf))
        merged: list[str | PVRef] = []
        for p in parts:
            if isinstance(p, str) and merged and isinstance(merged[-1], str):
                merged[-1] += p
            else:
                merged.append(p)
        return Formatter(merged, text)


# ---------------------------------------------------------------- core PVs

def _ruri(ctx: Any) -> str:
    return ctx.ruri if ctx.ruri is not None else (ctx.msg.ruri if ctx.msg.is_request else "")


def _ruri_parsed(ctx: Any) -> Any:
    from ser.core.parser import parse_uri
    text = _ruri(ctx)
    cached = ctx.cache.get("ruri")
    if cached is not None and cached[0] == text:
        return cached[1]
    try:
        u = parse_uri(text)
    except Exception:
        u = None
    ctx.cache["ruri"] = (text, u)
    return u


def _uri_part(get_uri: Callable[[Any], Any], attr: str) -> Callable[[Any, Any], Value]:
    def get(ctx: Any, _: Any) -> Value:
        u = get_uri(ctx)
        if u is None:
            return None
        v = getattr(u, attr, None)
        if attr == "port" and v is None:
            return 5061 if getattr(u, "scheme", "") == "sips" else 5060
        return v
    return get


def _set_ruri(ctx: Any, _: Any, value: Value) -> None:
    ctx.ruri = None if value is None else str(value)
    if value is not None and hasattr(ctx.msg, "set_ruri"):
        ctx.msg.set_ruri(str(value))


def _ruri_part_setter(attr: str) -> Callable[[Any, Any, Value], None]:
    def set_(ctx: Any, _: Any, value: Value) -> None:
        import dataclasses
        u: Any = _ruri_parsed(ctx)
        if u is None or not dataclasses.is_dataclass(u) or isinstance(u, type):
            return
        if attr == "port":
            new = dataclasses.replace(u, port=None if value in (None, "") else int(value))
        else:
            new = dataclasses.replace(u, **{attr: None if value is None else str(value)})
        _set_ruri(ctx, None, new.build() if hasattr(new, "build") else str(new))
    return set_


def _hdr_nameaddr(attr: str) -> Callable[[Any], Any]:
    def get(ctx: Any) -> Any:
        return getattr(ctx.msg, attr, None)
    return get


def _na_uri(attr: str) -> Callable[[Any], Any]:
    def get(ctx: Any) -> Any:
        na = getattr(ctx.msg, attr, None)
        return None if na is None else na.uri
    return get


def _na_get(attr: str, what: str) -> Callable[[Any, Any], Value]:
    def get(ctx: Any, _: Any) -> Value:
        na = getattr(ctx.msg, attr, None)
        if na is None:
            return None
        if what == "uri":
            return str(na.uri)
        if what == "display":
            return na.display or None
        return na.tag
    return get


def _na_setter(attr: str, header: str, what: str) -> Callable[[Any, Any, Value], None]:
    """Writing $fu $fU $fd $fn / $tu $tU $td $tn: the header is rewritten (an edit),
    keeping its tag and other parameters; later writes build on earlier ones."""
    def set_(ctx: Any, _: Any, value: Value) -> None:
        import dataclasses

        from ser.core.parser import NameAddr, SipURI, parse_uri
        key = f"na:{attr}"
        cur = ctx.cache.get(key) or getattr(ctx.msg, attr, None)
        if cur is None:
            return
        uri, display = cur.uri, cur.display
        text = "" if value is None else str(value)
        if what == "uri":
            uri = parse_uri(text)
        elif what == "display":
            display = text
        elif isinstance(uri, SipURI):
            uri = dataclasses.replace(uri, **{what: text or None}, text="")
        else:
            return
        shown = ""
        if display:
            shown = '"' + display.replace("\\", "\\\\").replace('"', '\\"') + '" '
        params = "".join(f";{k}" if v is None else f";{k}={v}" for k, v in cur.params.items())
        new_text = f"{shown}<{uri}>{params}"
        ctx.cache[key] = NameAddr(display, uri, cur.params, new_text, True)
        ctx.msg.replace_header(header, new_text)
    return set_


def _const_getter(fn: Callable[[Any], Value]) -> Callable[[Any, Any], Value]:
    return lambda ctx, _: fn(ctx)


def _hdr_name(inner: str | None, index: str | None, res: PVResolver) -> Any:
    if not inner:
        raise ValueError("a header name is needed: $hdr(Name)")
    if index is None:
        return (inner.strip(), None)
    if index == "*":
        return (inner.strip(), "*")
    try:
        return (inner.strip(), int(index))
    except ValueError:
        raise ValueError(f"bad index '{index}'") from None


def _hdr_get(ctx: Any, pname: Any) -> Value:
    name, index = pname
    if index is None:
        return ctx.msg.header(name)
    values = ctx.msg.headers(name)
    if index == "*":
        return ",".join(values) if values else None
    try:
        return values[index]
    except IndexError:
        return None


def _plain_name(inner: str | None, index: str | None, res: PVResolver) -> Any:
    if not inner:
        raise ValueError("a name is needed")
    if index is not None:
        raise ValueError("no index allowed")
    return inner.strip()


def _avp_name(inner: str | None, index: str | None, res: PVResolver) -> Any:
    name = _plain_name(inner, None, res)
    if name[:2] in ("i:", "s:"):
        name = name[2:] if name[0] == "s" else "i:" + name[2:]
    return name


def _var_get(ctx: Any, name: str) -> Value:
    return ctx.rt.vars.get(name, 0)   # an unset $var reads as 0, as in Kamailio


def _var_set(ctx: Any, name: str, value: Value) -> None:
    # $var(x) = $null resets to 0, as Kamailio does
    ctx.rt.vars[name] = 0 if value is None else value


def _avp_get(ctx: Any, name: str) -> Value:
    stack = ctx.avps.get(name)
    return stack[-1] if stack else None


def _avp_set(ctx: Any, name: str, value: Value) -> None:
    if value is None:
        ctx.avps.pop(name, None)
    else:
        ctx.avps.setdefault(name, []).append(value)


SHV_TABLE = "shv"     # created by the master (ser/core/shmstate.py)


def _shv_table(ctx: Any) -> Any:
    shm = getattr(ctx.rt, "shm", None)
    return shm.table(SHV_TABLE) if shm is not None else None


def _shv_get(ctx: Any, name: str) -> Value:
    """$shv(x): shared by every process (a shm table); per process outside a daemon."""
    table = _shv_table(ctx)
    if table is None:
        return ctx.rt.shv.get(name)
    raw = table.get(name.encode())
    if raw is None:
        return None
    return int.from_bytes(raw[1:], "big", signed=True) if raw[:1] == b"i" else \
        raw[1:].decode("utf-8", "surrogateescape")


def _shv_set(ctx: Any, name: str, value: Value) -> None:
    value = 0 if value is None else value
    table = _shv_table(ctx)
    if table is None:
        ctx.rt.shv[name] = value
        return
    if isinstance(value, int):
        raw = b"i" + value.to_bytes(8, "big", signed=True)
    else:
        raw = b"s" + str(value).encode("utf-8", "surrogateescape")
    table.set(name.encode(), raw)


def _retcode_get(ctx: Any, _: Any) -> Value:
    return ctx.retcode


def _flags_set(attr: str) -> Callable[[Any, Any, Value], None]:
    def set_(ctx: Any, _: Any, value: Value) -> None:
        setattr(ctx, attr, int(value or 0))
    return set_


def _du_get(ctx: Any, _: Any) -> Value:
    return ctx.dst_uri


def _du_set(ctx: Any, _: Any, value: Value) -> None:
    ctx.dst_uri = None if value is None else str(value)


def _dd_get(ctx: Any, _: Any) -> Value:
    if not ctx.dst_uri:
        return None
    from ser.core.parser import parse_uri
    try:
        return parse_uri(ctx.dst_uri).host
    except Exception:
        return None


def _credentials(ctx: Any) -> Any:
    msg = ctx.msg
    creds = msg.authorization or msg.proxy_authorization
    return creds[0] if creds else None


def _auth_get(what: str) -> Callable[[Any, Any], Value]:
    def get(ctx: Any, _: Any) -> Value:
        c = _credentials(ctx)
        if c is None:
            return None
        user = c.username
        if what == "realm":
            return c.realm
        if what in ("algorithm", "uri", "nonce", "username"):
            v = c.get(what)
            if what == "algorithm" and v is None:
                return "MD5"     # RFC 7616 3.4: absent means MD5
            return v
        if user is None:
            return None
        u, at, d = user.partition("@")
        if what == "user":
            return u
        return d if at else c.realm
    return get


def _tv_name(inner: str | None, index: str | None, res: PVResolver) -> Any:
    name = (inner or "s").strip()
    if name not in ("s", "u", "sn", "un", "Sn", "Fn", "Sm"):
        raise ValueError(f"unknown $TV name '{name}'")
    return name


def _tv_get(ctx: Any, name: str) -> Value:
    t = time.time()
    if name in ("s", "sn"):
        return int(t)
    if name in ("u", "un"):
        return int((t % 1) * 1_000_000)
    if name == "Sm":
        return int(t * 1000)
    return f"{int(t)}.{int((t % 1) * 1_000_000):06d}"


def _ts_get(ctx: Any, _: Any) -> Value:
    ts = ctx.cache.get("Ts")
    if ts is None:
        ts = ctx.cache["Ts"] = int(time.time())
    return ts


def _int_ts(ctx: Any) -> int:
    return int(_ts_get(ctx, None) or 0)


PROTO_NAMES = {1: "udp", 2: "tcp", 3: "tls", 4: "sctp", 5: "ws", 6: "wss"}


_SND_KEYS = ("ip", "port", "proto", "sproto", "af", "len", "buf", "sip", "sport")


def _snd_name(inner: str | None, index: str | None, res: PVResolver) -> Any:
    key = (inner or "").strip().lower()
    if key not in _SND_KEYS:
        raise ValueError(f"$snd({inner}): use one of {', '.join(_SND_KEYS)}")
    return key


def _snd_get(ctx: Any, key: str) -> Value:
    """(proto, ip, port, socket, bytes) set by Core.onsend; null elsewhere."""
    snd = ctx.cache.get("snd")
    if snd is None:
        return None
    proto, ip, port, si, data = snd
    if key == "ip":
        return ip
    if key == "port":
        return port
    if key == "proto":
        return {v: k for k, v in PROTO_NAMES.items()}.get(proto, 1)
    if key == "sproto":
        return proto
    if key == "af":
        return 6 if ":" in ip else 4
    if key == "len":
        return len(data)
    if key == "sip":
        return si.host if si is not None else None
    if key == "sport":
        return si.port if si is not None else None
    return data.decode("utf-8", "replace")


_CFG_KEYS = ("line", "name", "file", "route")


def _cfg_name(inner: str | None, index: str | None, res: PVResolver) -> Any:
    """$cfg(line|name|file|route): fixed where the script is compiled, so the
    value is the constant itself (file and line of the action, its route)."""
    key = (inner or "").strip()
    if key not in _CFG_KEYS or index is not None:
        raise ValueError(f"use $cfg({'|'.join(_CFG_KEYS)})")
    file, line, _ = res.pos
    if key == "line":
        return line
    if key == "route":
        return res.route
    return file


def _m(fn: Callable[[Any], Value]) -> Callable[[Any, Any], Value]:
    return lambda ctx, _: fn(ctx)


_core: list[PVDecl] = [
    PVDecl("ru", _m(_ruri), _set_ruri, doc="Request-URI (writable)"),
    PVDecl("rU", _uri_part(_ruri_parsed, "user"), _ruri_part_setter("user"),
           doc="user of the Request-URI (writable)"),
    PVDecl("rd", _uri_part(_ruri_parsed, "host"), _ruri_part_setter("host"),
           doc="host of the Request-URI (writable)"),
    PVDecl("rp", _uri_part(_ruri_parsed, "port"), _ruri_part_setter("port"),
           doc="port of the Request-URI (writable)"),
    PVDecl("rm", _m(lambda c: c.msg.method), doc="method", inline="ctx.msg.method"),
    PVDecl("rs", _m(lambda c: None if c.msg.is_request else c.msg.status), doc="reply status"),
    PVDecl("rr", _m(lambda c: None if c.msg.is_request else c.msg.reason), doc="reply reason"),
    PVDecl("fu", _na_get("from_", "uri"), _na_setter("from_", "From", "uri"), doc="From URI"),
    PVDecl("fU", _uri_part(_na_uri("from_"), "user"), _na_setter("from_", "From", "user"),
           doc="From URI user"),
    PVDecl("fd", _uri_part(_na_uri("from_"), "host"), _na_setter("from_", "From", "host"),
           doc="From URI host"),
    PVDecl("fn", _na_get("from_", "display"), _na_setter("from_", "From", "display"),
           doc="From display name"),
    PVDecl("ft", _na_get("from_", "tag"), doc="From tag"),
    PVDecl("tu", _na_get("to", "uri"), _na_setter("to", "To", "uri"), doc="To URI"),
    PVDecl("tU", _uri_part(_na_uri("to"), "user"), _na_setter("to", "To", "user"),
           doc="To URI user"),
    PVDecl("td", _uri_part(_na_uri("to"), "host"), _na_setter("to", "To", "host"),
           doc="To URI host"),
    PVDecl("tn", _na_get("to", "display"), _na_setter("to", "To", "display"),
           doc="To display name"),
    PVDecl("tt", _na_get("to", "tag"), doc="To tag"),
    PVDecl("ci", _m(lambda c: c.msg.call_id), doc="Call-ID"),
    PVDecl("cs", _m(lambda c: c.msg.cseq.num if c.msg.cseq is not None else None),
           doc="CSeq number"),
    PVDecl("ua", _m(lambda c: c.msg.header("User-Agent")), doc="User-Agent"),
    PVDecl("si", _m(lambda c: c.src_ip), doc="source IP", inline="ctx.src_ip"),
    PVDecl("sp", _m(lambda c: c.src_port), doc="source port", inline="ctx.src_port"),
    PVDecl("Ri", _m(lambda c: c.dst_ip), doc="receiving IP", inline="ctx.dst_ip"),
    PVDecl("Rp", _m(lambda c: c.dst_port), doc="receiving port", inline="ctx.dst_port"),
    PVDecl("pr", _m(lambda c: PROTO_NAMES.get(c.proto, "udp")), doc="transport protocol"),
    PVDecl("proto", _m(lambda c: PROTO_NAMES.get(c.proto, "udp")), doc="same as $pr"),
    PVDecl("du", _du_get, _du_set, doc="destination URI (writable)"),
    PVDecl("dd", _dd_get, doc="host of the destination URI"),
    PVDecl("ml", _m(lambda c: len(c.msg.raw)), doc="message length"),
    PVDecl("mb", _m(lambda c: c.msg.raw.decode("utf-8", "replace")), doc="whole message"),
    PVDecl("rb", _m(lambda c: c.msg.body.decode("utf-8", "replace")), doc="message body"),
    PVDecl("cl", _m(lambda c: c.msg.content_length), doc="Content-Length"),
    PVDecl("ct", _m(lambda c: c.msg.header("Contact")), doc="Contact header body"),
    PVDecl("hdr", _hdr_get, parse_name=_hdr_name, doc="$hdr(Name)[n]: a header body"),
    PVDecl("au", _auth_get("user"), doc="username of the credentials"),
    PVDecl("ad", _auth_get("domain"), doc="domain of the credentials username"),
    PVDecl("ar", _auth_get("realm"), doc="realm of the credentials"),
    PVDecl("aa", _auth_get("algorithm"), doc="algorithm of the credentials (MD5 if absent)"),
    PVDecl("aU", _auth_get("username"), doc="whole username of the credentials"),
    PVDecl("adu", _auth_get("uri"), doc="digest URI of the credentials"),
    PVDecl("an", _auth_get("nonce"), doc="nonce of the credentials"),
    PVDecl("pp", _m(lambda c: os.getpid()), doc="process id"),
    PVDecl("Ts", _ts_get, doc="Unix time, fixed for the message"),
    PVDecl("Tf", _m(lambda c: time.ctime(_int_ts(c))), doc="formatted time"),
    PVDecl("TV", _tv_get, parse_name=_tv_name, doc="$TV(s|u|sn|un|Sn): current time"),
    PVDecl("mt", _m(lambda c: 1 if c.msg.is_request else 2), doc="1 request, 2 reply"),
    PVDecl("mf", _m(lambda c: c.flags), _flags_set("flags"), doc="message flags",
           inline="ctx.flags"),
    PVDecl("bf", _m(lambda c: c.bflags), _flags_set("bflags"), doc="branch flags"),
    PVDecl("retcode", _retcode_get, doc="return code of the last action",
           inline="ctx.retcode"),
    PVDecl("rc", _retcode_get, doc="same as $retcode", inline="ctx.retcode"),
    PVDecl("var", _var_get, _var_set, _plain_name, doc="$var(x): per-process variable",
           inline="ctx.rt.vars.get({name}, 0)"),
    PVDecl("avp", _avp_get, _avp_set, _avp_name, doc="$avp(x): per-transaction AVP"),
    PVDecl("shv", _shv_get, _shv_set, _plain_name, doc="$shv(x): shared variable"),
    PVDecl("null", _m(lambda c: None), doc="the null value"),
    PVDecl("cfg", lambda ctx, value: value, parse_name=_cfg_name, inline="{name}",
           doc="$cfg(line|name|file|route): line, file and route block of the action"),
    PVDecl("snd", _snd_get, parse_name=_snd_name,
           doc="$snd(ip|port|proto|af|sproto|len|buf): where onsend_route's message goes"),
]
CORE_PVS: dict[str, PVDecl] = {d.name: d for d in _core}
