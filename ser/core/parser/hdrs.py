"""Header names and the typed header values parsed on demand.

Every parse function takes the header value as received (after unfolding)
and returns an immutable value object, or raises ProtocolError(400).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from . import abnf
from .errors import bad
from .uri import CACHE_MAX, URI, parse_uri, slot_setters

# RFC 3261 7.3.3 compact forms, and the extension ones in common use
COMPACT = {
    "i": "call-id", "m": "contact", "e": "content-encoding", "l": "content-length",
    "c": "content-type", "f": "from", "s": "subject", "k": "supported", "t": "to",
    "v": "via",
    "a": "accept-contact", "b": "referred-by", "d": "request-disposition",
    "j": "reject-contact", "n": "identity-info", "o": "event", "r": "refer-to",
    "u": "allow-events", "x": "session-expires", "y": "identity",
}

KNOWN = (
    "via", "from", "to", "call-id", "cseq", "contact", "max-forwards", "content-length",
    "content-type", "route", "record-route", "expires", "authorization",
    "proxy-authorization", "www-authenticate", "proxy-authenticate", "user-agent",
    "server", "allow", "supported", "require", "proxy-require", "unsupported",
    "accept", "accept-encoding", "accept-language", "subject", "date", "path",
    "event", "allow-events", "content-encoding", "content-disposition", "min-expires",
    "organization", "priority", "reply-to", "retry-after", "timestamp", "warning",
    "p-asserted-identity", "p-preferred-identity", "privacy", "refer-to",
    "referred-by", "session-expires", "min-se", "rack", "rseq", "x-", "diversion",
    "alert-info", "call-info", "error-info", "in-reply-to", "mime-version",
    "authentication-info", "identity", "identity-info", "reason", "replaces",
    "subscription-state", "accept-contact", "reject-contact", "request-disposition",
)

# Name as written -> canonical key (lowercase long form), for the spellings
# that real traffic uses; anything else goes through canonical_name().
CANON: dict[str, str] = {}


def _spellings(key: str) -> set[str]:
    title = "-".join(p.capitalize() for p in key.split("-"))
    out = {key, key.upper(), title}
    out |= {title.replace("-Id", "-ID"), title.replace("Cseq", "CSeq"),
            title.replace("Www", "WWW")}
    return out


for _key in KNOWN:
    for _s in _spellings(_key):
        CANON[_s] = _key
for _c, _key in COMPACT.items():
    CANON[_c] = _key
    CANON[_c.upper()] = _key


def canonical_name(name: str) -> str:
    """The lookup key of a header name: lowercase long form, compact forms expanded."""
    key = CANON.get(name)
    if key is None:
        key = name.strip().lower()
        key = COMPACT.get(key, key)
    return key


# Headers whose value is a comma-separated list (RFC 3261 7.3.1): these are
# split into one value each by SipMessage.headers().
LIST_HEADERS = frozenset((
    "via", "contact", "route", "record-route", "path", "allow", "supported", "require",
    "proxy-require", "unsupported", "accept", "accept-encoding", "accept-language",
    "allow-events", "content-encoding", "in-reply-to", "p-asserted-identity",
    "alert-info", "call-info", "error-info", "reason", "diversion", "warning",
))
# Headers that may appear once only (RFC 3261 table 2), checked in strict mode
SINGLE_HEADERS = frozenset((
    "from", "to", "call-id", "cseq", "max-forwards", "content-length", "content-type",
    "expires", "min-expires", "date", "mime-version", "timestamp", "subject",
))


def split_list(value: str) -> list[str]:
    """Split a header value at top-level commas (not inside quotes or <>)."""
    if "," not in value:
        return [value.strip()]
    if '"' not in value and "<" not in value:
        return [v.strip() for v in value.split(",")]
    out: list[str] = []
    start = 0
    inq = False
    angle = 0
    i = 0
    n = len(value)
    while i < n:
        c = value[i]
        if inq:
            if c == "\\":
                i += 1
            elif c == '"':
                inq = False
        elif c == '"':
            inq = True
        elif c == "<":
            angle += 1
        elif c == ">":
            angle -= 1
        elif c == "," and angle == 0:
            out.append(value[start:i].strip())
            start = i + 1
        i += 1
    if inq or angle:
        raise bad("unbalanced quotes or angle brackets")
    out.append(value[start:].strip())
    return out


_simple_params = abnf.SIMPLE_PARAMS.fullmatch


def parse_params(text: str, pos: int, what: str) -> dict[str, str | None]:
    """``;name[=value]`` pairs from ``pos`` to the end; names lowercased, quotes kept."""
    params: dict[str, str | None] = {}
    end = len(text)
    if pos >= end:
        return params
    if _simple_params(text, pos):
        for p in text[pos + 1:].split(";"):
            name, eq, value = p.partition("=")
            params[name.lower()] = value if eq else None
        return params
    return _parse_params_generic(text, pos, what)


def _parse_params_generic(text: str, pos: int, what: str) -> dict[str, str | None]:
    """parse_params for any spelling, one GENERIC_PARAM at a time."""
    params: dict[str, str | None] = {}
    end = len(text)
    match = abnf.GENERIC_PARAM.match
    while pos < end:
        m = match(text, pos)
        if not m:
            raise bad(f"bad {what} parameter")
        params[m.group(1).lower()] = m.group(2)
        pos = m.end()
    return params


class Via:
    """One via-parm (RFC 3261 20.42). ``host`` keeps IPv6 brackets. Read-only."""

    __slots__ = ("protocol", "version", "transport", "host", "port", "params", "text")

    def __init__(self, protocol: str, version: str, transport: str, host: str,
                 port: int | None, params: dict[str, str | None], text: str) -> None:
        self.protocol = protocol
        self.version = version
        self.transport = transport
        self.host = host
        self.port = port
        self.params = params
        self.text = text

    def __repr__(self) -> str:
        return f"Via({self.text!r})"

    @property
    def branch(self) -> str | None:
        return self.params.get("branch")

    @property
    def received(self) -> str | None:
        return self.params.get("received")

    @property
    def rport(self) -> str | None:
        """'' when the rport flag is present without a value, None when absent."""
        if "rport" not in self.params:
            return None
        return self.params["rport"] or ""

    @property
    def maddr(self) -> str | None:
        return self.params.get("maddr")

    @property
    def sent_by(self) -> str:
        return self.host if self.port is None else f"{self.host}:{self.port}"


def parse_via(value: str) -> list[Via]:
    """Every via-parm of one Via header value."""
    return [_parse_one_via(v) for v in split_list(value)]


def _parse_one_via(text: str) -> Via:
    text = text.strip()
    # fast path: "SIP/2.0/UDP host[:port][;params]" without optional spaces or quotes
    m = abnf.VIA_SIMPLE.fullmatch(text)
    if m:
        transport, host, port, rest = m.groups()
        params: dict[str, str | None] = {}
        if rest:
            for p in rest[1:].split(";"):
                name, eq, value = p.partition("=")
                name = name.lower()
                if not eq and name in _NEED_VALUE:
                    raise bad(f"Via {name} parameter without a value")
                params[name] = value if eq else None
        portn = None
        if port:
            portn = int(port)
            if portn > 65535:
                raise bad("Via port out of range")
        return Via("SIP", "2.0", transport.upper(), host, portn, params, text)
    m = abnf.VIA.match(text)
    if not m:
        raise bad("bad Via header")
    proto, ver, transport, host, port = m.groups()
    params = parse_params(text, m.end(), "Via")
    return _checked_via(Via(proto.upper(), ver, transport.upper(), host,
                            int(port) if port else None, params, text))


_NEED_VALUE = frozenset(("branch", "received", "maddr", "ttl"))


def _checked_via(via: Via) -> Via:
    if via.port is not None and via.port > 65535:
        raise bad("Via port out of range")
    params = via.params
    if None in params.values():
        for name in ("branch", "received", "maddr", "ttl"):
            if name in params and not params[name]:
                raise bad(f"Via {name} parameter without a value")
    return via


@dataclass(frozen=True, slots=True)
class NameAddr:
    """name-addr or addr-spec with header parameters (RFC 3261 20.10, 20.20, 20.39)."""

    display: str
    uri: URI
    params: dict[str, str | None] = field(default_factory=dict)
    text: str = ""
    bracketed: bool = True

    @property
    def tag(self) -> str | None:
        return self.params.get("tag")

    @property
    def expires(self) -> int | None:
        v = self.params.get("expires")
        if v is None:
            return None
        return parse_delta(v, "Contact expires")

    @property
    def q(self) -> float | None:
        v = self.params.get("q")
        if v is None:
            return None
        try:
            q = float(v)
        except ValueError:
            raise bad("bad q value") from None
        if not 0 <= q <= 1:
            raise bad("q value out of range")
        return q


_new = object.__new__
_s_display, _s_uri, _s_params, _s_text, _s_bracketed = slot_setters(NameAddr)


# Parsed name-addrs by text, per process (To of in-dialog requests, Route
# sets, Contacts repeat); immutable like the URIs in uri._cache, same bound.
_na_cache: dict[str, NameAddr] = {}


def parse_name_addr(text: str) -> NameAddr:
    """From, To, Contact, Route, Record-Route, ... value (one element)."""
    na = _na_cache.get(text)
    if na is not None:
        return na
    m = abnf.NAME_ADDR.match(text)
    if m:
        display = m.group(1)
        if display.startswith('"'):
            display = abnf.unquote(display)
        uri_text = m.group(2)
        bracketed = True
    else:
        m = abnf.ADDR_SPEC.match(text)
        if not m:
            raise bad("bad name-addr")
        uri_text = m.group(1)
        # RFC 3261 20.10: a URI with a comma, question mark or semicolon
        # must be enclosed in angle brackets
        if "?" in uri_text:
            raise bad("URI with headers not enclosed in <>")
        display = ""
        bracketed = False
    uri = parse_uri(uri_text)
    params = parse_params(text, m.end(), "header")
    na = _new(NameAddr)          # NameAddr(display, uri, params, text, bracketed), faster
    _s_display(na, display)
    _s_uri(na, uri)
    _s_params(na, params)
    _s_text(na, text)
    _s_bracketed(na, bracketed)
    if len(_na_cache) >= CACHE_MAX:
        _na_cache.clear()
    _na_cache[text] = na
    return na


def parse_name_addrs(value: str) -> list[NameAddr]:
    return [parse_name_addr(v) for v in split_list(value)]


@dataclass(frozen=True, slots=True)
class CSeq:
    num: int
    method: str


_s_num, _s_method = slot_setters(CSeq)


def parse_cseq(value: str) -> CSeq:
    m = abnf.CSEQ.fullmatch(value)
    if not m:
        raise bad("bad CSeq header")
    num = int(m.group(1))
    if num >= 2**31:
        raise bad("CSeq number out of range")
    c = _new(CSeq)              # CSeq(num, method), faster
    _s_num(c, num)
    _s_method(c, m.group(2))
    return c


def parse_delta(value: str, what: str, limit: int = 2**32 - 1) -> int:
    m = abnf.DIGITS.fullmatch(value)
    if not m:
        raise bad(f"bad {what} value")
    n = int(m.group(1))
    if n > limit:
        raise bad(f"{what} value out of range")
    return n


def parse_call_id(value: str) -> str:
    v = value.strip()
    if not abnf.CALLID.fullmatch(v):
        raise bad("bad Call-ID header")
    return v


def parse_date(value: str) -> str:
    v = value.strip()
    if not abnf.DATE.fullmatch(v):
        raise bad("bad Date header (RFC 1123 date in GMT expected)")
    return v


@dataclass(frozen=True, slots=True)
class Credentials:
    """Authorization / Proxy-Authorization, WWW- / Proxy-Authenticate (RFC 2617, 7616).

    ``params`` has lowercased names and unquoted values; ``quoted`` names the
    parameters that were sent as quoted-strings.
    """

    scheme: str
    params: dict[str, str] = field(default_factory=dict)
    quoted: frozenset[str] = frozenset()

    def get(self, name: str) -> str | None:
        return self.params.get(name)

    @property
    def username(self) -> str | None:
        return self.params.get("username")

    @property
    def realm(self) -> str | None:
        return self.params.get("realm")

    @property
    def nonce(self) -> str | None:
        return self.params.get("nonce")

    @property
    def response(self) -> str | None:
        return self.params.get("response")

    @property
    def uri(self) -> str | None:
        return self.params.get("uri")


def parse_credentials(value: str) -> Credentials:
    m = abnf.AUTH_SCHEME.match(value)
    if not m:
        raise bad("bad authorization header")
    scheme = m.group(1)
    pos = m.end()
    end = len(value)
    params: dict[str, str] = {}
    quoted: set[str] = set()
    if scheme.lower() == "digest":
        match = abnf.AUTH_PARAM.match
        while pos < end:
            pm = match(value, pos)
            if not pm:
                raise bad("bad digest parameter")
            name = pm.group(1).lower()
            v = pm.group(2)
            if v.startswith('"'):
                quoted.add(name)
                v = abnf.unquote(v)
            params[name] = v
            pos = pm.end()
    else:
        # other schemes (RFC 4475 regaut01): kept as one opaque parameter list
        params[""] = value[pos:].strip()
    return Credentials(scheme, params, frozenset(quoted))
