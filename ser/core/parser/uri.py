"""URIs: sip, sips and tel parsed (RFC 3261 19.1, RFC 3966); others kept opaque.

A parsed URI keeps its text as received (``str(uri)``); the parts keep their
escapes as written, and ``unescape()`` (abnf) resolves them where a caller
compares or displays them (RFC 3261 19.1.4).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from . import abnf
from .errors import ProtocolError


@dataclass(frozen=True, slots=True)
class SipURI:
    """sip: or sips: URI. ``host`` keeps IPv6 brackets, ``port`` is None if absent."""

    scheme: str
    user: str | None
    password: str | None
    host: str
    port: int | None
    params: dict[str, str | None] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    text: str = ""

    def __str__(self) -> str:
        return self.text or self.build()

    @property
    def hostport(self) -> str:
        return self.host if self.port is None else f"{self.host}:{self.port}"

    @property
    def transport(self) -> str | None:
        t = self.params.get("transport")
        return t.lower() if t else None

    def param(self, name: str) -> str | None:
        """A URI parameter's value ('' for a flag parameter), names case-insensitive."""
        name = name.lower()
        for k, v in self.params.items():
            if k.lower() == name:
                return "" if v is None else v
        return None

    def build(self) -> str:
        out = [self.scheme, ":"]
        if self.user is not None:
            out.append(self.user)
            if self.password is not None:
                out += [":", self.password]
            out.append("@")
        out.append(self.hostport)
        for k, v in self.params.items():
            out.append(f";{k}" if v is None else f";{k}={v}")
        if self.headers:
            out.append("?" + "&".join(f"{k}={v}" for k, v in self.headers.items()))
        return "".join(out)


@dataclass(frozen=True, slots=True)
class TelURI:
    """tel: URI (RFC 3966): the number and its parameters."""

    number: str
    params: dict[str, str | None] = field(default_factory=dict)
    text: str = ""
    scheme: str = "tel"
    user: str | None = None
    host: str = ""
    port: int | None = None

    def __str__(self) -> str:
        return self.text

    def param(self, name: str) -> str | None:
        v = self.params.get(name.lower(), False)
        return None if v is False else ("" if v is None else v)  # type: ignore[return-value]


@dataclass(frozen=True, slots=True)
class AbsoluteURI:
    """Any other scheme (RFC 3986 absoluteURI): kept opaque, as RFC 3261 allows."""

    scheme: str
    opaque: str
    text: str = ""
    user: str | None = None
    host: str = ""
    port: int | None = None

    def __str__(self) -> str:
        return self.text

    def param(self, name: str) -> str | None:
        return None


URI = SipURI | TelURI | AbsoluteURI


def slot_setters(cls: type) -> tuple[Any, ...]:
    """The slot descriptors' ``__set__`` of a frozen slotted dataclass, in
    field order. The parser builds its hot objects (a URI, a name-addr) with
    them: a frozen dataclass's own ``__init__`` pays an
    ``object.__setattr__`` call per field, about twice the cost."""
    return tuple(cls.__dict__[f.name].__set__ for f in fields(cls))


_new = object.__new__
(_s_scheme, _s_user, _s_password, _s_host, _s_port, _s_params, _s_headers,
 _s_text) = slot_setters(SipURI)


def _sip_uri(scheme: str, user: str | None, password: str | None, host: str,
             port: int | None, params: dict[str, str | None], headers: dict[str, str],
             text: str) -> SipURI:
    """``SipURI(...)`` with every field given, built through the slots."""
    u = _new(SipURI)
    _s_scheme(u, scheme)
    _s_user(u, user)
    _s_password(u, password)
    _s_host(u, host)
    _s_port(u, port)
    _s_params(u, params)
    _s_headers(u, headers)
    _s_text(u, text)
    return u


_sip_simple = abnf.SIP_URI_SIMPLE.fullmatch


# Parsed URIs by text, per process: the same Request-URIs, next hops and
# Contacts come back over and over. A URI is immutable (no caller changes its
# params or headers dicts), so one object may serve every message; errors are
# not kept. Cleared when full, so a flood of distinct URIs costs one insert each.
CACHE_MAX = 512
_cache: dict[str, URI] = {}


def parse_uri(text: str, *, status: int | None = 400) -> URI:
    """Parse a URI; a malformed one raises ProtocolError(status)."""
    uri = _cache.get(text)
    if uri is not None:
        return uri
    m = _sip_simple(text)
    if m is not None:
        scheme, user, host, port, ptext = m.groups()
        portn = int(port) if port else None
        if portn is None or portn <= 65535:
            params: dict[str, str | None] = {}
            if ptext:
                for p in ptext[1:].split(";"):
                    name, eq, value = p.partition("=")
                    params[name] = value if eq else None
            uri = _sip_uri(scheme, user, None, host, portn, params, {}, text)
    if uri is None:
        uri = _parse_uri(text, status)
    if len(_cache) >= CACHE_MAX:
        _cache.clear()
    _cache[text] = uri
    return uri


def _parse_uri(text: str, status: int | None) -> URI:
    """parse_uri beyond the plain sip:user@host:port;params shape."""
    colon = text.find(":")
    if colon <= 0 or not abnf.SCHEME.fullmatch(text, 0, colon):
        raise ProtocolError(status, f"bad URI {text[:64]!r}")
    scheme = text[:colon].lower()
    if scheme in ("sip", "sips"):
        return _parse_sip(text, scheme, colon + 1, status)
    if scheme == "tel":
        return _parse_tel(text, colon + 1, status)
    rest = text[colon + 1:]
    if not rest or any(c in rest for c in " \t\r\n<>\""):
        raise ProtocolError(status, f"bad URI {text[:64]!r}")
    return AbsoluteURI(scheme, rest, text)


def _parse_sip(text: str, scheme: str, pos: int, status: int | None) -> SipURI:
    user = password = None
    at = text.find("@", pos)
    if at >= 0:
        userinfo = text[pos:at]
        ucolon = userinfo.find(":")
        # the user part may itself hold ';' and '?' (RFC 3261 19.1.1)
        if ucolon >= 0:
            user, password = userinfo[:ucolon], userinfo[ucolon + 1:]
            if not abnf.PASSWORD.fullmatch(password):
                raise ProtocolError(status, "bad password in URI")
        else:
            user = userinfo
        if not user or not abnf.USER.fullmatch(user):
            raise ProtocolError(status, "bad user part in URI")
        pos = at + 1
    m = abnf.HOSTPORT.match(text, pos)
    if not m:
        raise ProtocolError(status, f"bad host in URI {text[:64]!r}")
    host = m.group(1)
    port = int(m.group(2)) if m.group(2) else None
    if port is not None and port > 65535:
        raise ProtocolError(status, "port out of range in URI")
    pos = m.end()
    params: dict[str, str | None] = {}
    end = len(text)
    while pos < end and text[pos] == ";":
        pm = abnf.URI_PARAM.match(text, pos)
        if not pm:
            raise ProtocolError(status, "bad URI parameter")
        params[pm.group(1)] = pm.group(2)
        pos = pm.end()
    headers: dict[str, str] = {}
    if pos < end and text[pos] == "?":
        pos += 1
        for part in text[pos:].split("&"):
            hm = abnf.URI_HEADER.fullmatch(part)
            if not hm:
                raise ProtocolError(status, "bad URI header")
            headers[hm.group(1)] = hm.group(2)
        pos = end
    if pos != end:
        raise ProtocolError(status, f"bad URI {text[:64]!r}")
    return _sip_uri(scheme, user, password, host, port, params, headers, text)


def _parse_tel(text: str, pos: int, status: int | None) -> TelURI:
    semi = text.find(";", pos)
    number = text[pos:] if semi < 0 else text[pos:semi]
    if not abnf.TEL_NUMBER.fullmatch(number):
        raise ProtocolError(status, "bad tel URI number")
    params: dict[str, str | None] = {}
    if semi >= 0:
        for part in text[semi + 1:].split(";"):
            if not part:
                raise ProtocolError(status, "empty tel URI parameter")
            name, eq, value = part.partition("=")
            params[name.lower()] = value if eq else None
    return TelURI(number, params, text)
