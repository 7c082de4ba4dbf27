"""A SIP message as a read-only view over its bytes, with recorded edits.

Theory of operation. ``parse_message`` finds the end of the header block,
decodes it once (UTF-8, surrogateescape), splits it into lines and indexes
every header in one pass: three parallel sequences hold the name as written,
the raw value and the canonical key (lowercase long name). That pass is done
with C-level helpers (``str.split``, ``map(str.partition)``, a dict lookup for
the spellings real traffic uses); only a message with folded lines or unusual
names takes the slower per-line path. Nothing else is parsed: a header's
typed value (Via, From, CSeq, ...) is parsed the first time it is read and
then cached in the instance (the ``lazy`` descriptor).

Changes never touch the received text. Each is recorded as an edit
(Kamailio's "lumps") and ``serialize()`` applies them all once to build the
bytes to send; Content-Length follows the body.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from itertools import repeat
from operator import itemgetter
from typing import Any

from . import abnf, hdrs
from .errors import ProtocolError, bad
from .hdrs import CANON, LIST_HEADERS, SINGLE_HEADERS, canonical_name, split_list
from .uri import URI, SipURI, parse_uri

MAX_MESSAGE = 65535          # a datagram larger than this is not SIP over UDP
MAX_URI = 8192               # a longer Request-URI is answered 414
_partition = str.partition
_first = itemgetter(0)
_canon_get = CANON.get


_MISS = object()


class lazy:
    """An attribute computed on first access and kept in the message's cache.

    A data descriptor over one small per-message dict: cheaper than growing
    each instance's ``__dict__`` in a different order per message.
    """

    __slots__ = ("fn", "name")

    def __init__(self, fn: Callable[[Any], Any]) -> None:
        self.fn = fn
        self.name = fn.__name__

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, obj: Any, cls: type | None = None) -> Any:
        if obj is None:
            return self
        cache = obj._cache
        value = cache.get(self.name, _MISS)
        if value is _MISS:
            value = cache[self.name] = self.fn(obj)
        return value

    def __set__(self, obj: Any, value: Any) -> None:
        raise AttributeError(f"{self.name} is read-only")


class SipMessage:
    """A parsed request or reply. Read-only; see the package docstring for the API."""

    __slots__ = ("method", "ruri", "raw", "body", "first_line",
                 "_lines", "_parts", "_keys", "_end", "_edits", "_cache")

    is_request = True
    version = "SIP/2.0"
    status = 0             # a reply's own values shadow these (SipReply.__slots__)
    reason = ""
    method: str            # for a reply: the CSeq method
    ruri: str
    raw: bytes
    body: bytes
    first_line: str
    _lines: list[str]                      # header lines, unfolded
    _parts: list[tuple[str, str, str]]     # (name as written, ":", raw value)
    _keys: list[str]
    _end: int
    _edits: list[tuple[Any, ...]] | None
    _cache: dict[str, Any]

    # -- generic header access ----------------------------------------------
    def header(self, name: str) -> str | None:
        """First value of a header (whole line value, stripped), or None."""
        key = _canon_get(name) or canonical_name(name)
        try:
            i = self._keys.index(key)
        except ValueError:
            return None
        return self._parts[i][2].strip()

    def headers(self, name: str) -> list[str]:
        """Every value of a header, list headers split at top-level commas."""
        key = _canon_get(name) or canonical_name(name)
        keys = self._keys
        n = keys.count(key)
        if n == 0:
            return []
        if n == 1:
            vals = [self._parts[keys.index(key)][2]]
        else:
            vals = [p[2] for k, p in zip(keys, self._parts) if k == key]
        if key in LIST_HEADERS:
            out: list[str] = []
            for v in vals:
                out.extend(x for x in split_list(v) if x)
            return out
        return [v.strip() for v in vals]

    def has_header(self, name: str) -> bool:
        return (_canon_get(name) or canonical_name(name)) in self._keys

    def fields(self) -> list[tuple[str, str]]:
        """(name as written, value) for every header line, in order."""
        return [(n.strip(), v.strip()) for n, _, v in self._parts]

    def count(self, name: str) -> int:
        return self._keys.count(_canon_get(name) or canonical_name(name))

    @property
    def http_version(self) -> str | None:
        """"HTTP/1.1" or "HTTP/1.0" for an HTTP request, None for SIP."""
        v: str | None = self._cache.get("http_version")
        return v

    # -- typed headers, parsed on first access -------------------------------
    def _one(self, key: str, parse: Callable[[str], Any]) -> Any:
        try:
            i = self._keys.index(key)
        except ValueError:
            return None
        return parse(self._parts[i][2])

    @lazy
    def vias(self) -> list[hdrs.Via]:
        out: list[hdrs.Via] = []
        for k, p in zip(self._keys, self._parts):
            if k == "via":
                out.extend(hdrs.parse_via(p[2]))
        return out

    @lazy
    def via(self) -> hdrs.Via | None:
        """The top Via (only the first Via line is parsed)."""
        try:
            i = self._keys.index("via")
        except ValueError:
            return None
        first = self._parts[i][2]
        if "," in first:
            first = split_list(first)[0]
        return hdrs._parse_one_via(first)

    @lazy
    def from_(self) -> hdrs.NameAddr | None:
        return self._one("from", hdrs.parse_name_addr)

    @lazy
    def to(self) -> hdrs.NameAddr | None:
        return self._one("to", hdrs.parse_name_addr)

    @lazy
    def call_id(self) -> str | None:
        return self._one("call-id", hdrs.parse_call_id)

    @lazy
    def cseq(self) -> hdrs.CSeq | None:
        return self._one("cseq", hdrs.parse_cseq)

    @lazy
    def max_forwards(self) -> int | None:
        return self._one("max-forwards", lambda v: hdrs.parse_delta(v, "Max-Forwards", 255))

    @lazy
    def content_length(self) -> int | None:
        """The Content-Length value (checked at parse time), None when absent."""
        return None     # a present Content-Length is checked and cached at parse time

    @lazy
    def expires(self) -> int | None:
        return self._one("expires", lambda v: hdrs.parse_delta(v, "Expires"))

    @lazy
    def contacts(self) -> list[hdrs.NameAddr]:
        return [hdrs.parse_name_addr(v) for v in self.headers("contact") if v != "*"]

    @lazy
    def star_contact(self) -> bool:
        keys = self._keys
        if keys.count("contact") == 1 and "*" not in self._parts[keys.index("contact")][2]:
            return False
        return any(v == "*" for v in self.headers("contact"))

    @lazy
    def routes(self) -> list[hdrs.NameAddr]:
        return [hdrs.parse_name_addr(v) for v in self.headers("route")]

    @lazy
    def record_routes(self) -> list[hdrs.NameAddr]:
        return [hdrs.parse_name_addr(v) for v in self.headers("record-route")]

    @lazy
    def paths(self) -> list[hdrs.NameAddr]:
        return [hdrs.parse_name_addr(v) for v in self.headers("path")]

    @lazy
    def authorization(self) -> list[hdrs.Credentials]:
        return [hdrs.parse_credentials(v) for v in self.headers("authorization")]

    @lazy
    def proxy_authorization(self) -> list[hdrs.Credentials]:
        return [hdrs.parse_credentials(v) for v in self.headers("proxy-authorization")]

    @lazy
    def www_authenticate(self) -> list[hdrs.Credentials]:
        return [hdrs.parse_credentials(v) for v in self.headers("www-authenticate")]

    @lazy
    def proxy_authenticate(self) -> list[hdrs.Credentials]:
        return [hdrs.parse_credentials(v) for v in self.headers("proxy-authenticate")]

    @lazy
    def date(self) -> str | None:
        return self._one("date", hdrs.parse_date)

    @lazy
    def uri(self) -> URI | None:
        """The parsed Request-URI (None for a reply)."""
        if not self.is_request:
            return None
        return parse_uri(self.ruri)

    @lazy
    def content_type(self) -> str | None:
        return self.header("content-type")

    # -- edits ----------------------------------------------------------------
    def _edit(self, *op: Any) -> None:
        if self._edits is None:
            self._edits = []
        self._edits.append(op)

    @property
    def changed(self) -> bool:
        return bool(self._edits)

    def add_header(self, name: str, value: str, *, first: bool = False) -> None:
        """Append a header (or insert it before all others with ``first``)."""
        _check_header_text(name, value)
        self._edit("add", name, value, first)

    def amend_added_header(self, name: str, old: str, new: str) -> bool:
        """Change the value of a header an earlier ``add_header`` added (the
        newest with value ``old``); False if there is none."""
        _check_header_text(name, new)
        key = canonical_name(name)
        for i in range(len(self._edits or ()) - 1, -1, -1):
            op = self._edits[i]     # type: ignore[index]
            if op[0] == "add" and canonical_name(op[1]) == key and op[2] == old:
                self._edits[i] = ("add", op[1], new, op[3])     # type: ignore[index]
                return True
        return False

    def remove_header(self, name: str) -> int:
        """Remove every header of this name; returns how many there were."""
        key = canonical_name(name)
        self._edit("rm", key)
        return self._keys.count(key)

    def replace_header(self, name: str, value: str) -> None:
        """Replace every header of this name by one with ``value`` at the first's place."""
        _check_header_text(name, value)
        self._edit("replace", canonical_name(name), name, value)

    def set_ruri(self, uri: str) -> None:
        if not self.is_request:
            raise TypeError("a reply has no Request-URI")
        if not uri or any(c in uri for c in " \t\r\n"):
            raise ValueError(f"bad Request-URI {uri!r}")
        self._edit("ruri", uri)

    def add_via(self, value: str) -> None:
        """A new top Via (a proxy forwarding the request)."""
        _check_header_text("Via", value)
        self._edit("add", "Via", value, True)

    def remove_top_via(self) -> None:
        """Drop the top Via value (a proxy forwarding a reply upstream)."""
        self._edit("rm_via1")

    def set_body(self, body: bytes, content_type: str | None = None) -> None:
        if content_type is not None:
            _check_header_text("Content-Type", content_type)
        self._edit("body", bytes(body), content_type)

    def serialize(self) -> bytes:
        """The bytes to send: the message with every recorded edit applied once."""
        edits = self._edits
        if not edits:
            return self.raw[:self._end]
        fast = self._serialize_adds(edits)
        if fast is not None:
            return fast
        first = self.first_line
        rows = [[n, v, k] for (n, _, v), k in zip(self._parts, self._keys)]
        body = self.body
        body_changed = False
        for op in self._edits:
            kind = op[0]
            if kind == "add":
                row = [op[1], " " + op[2], canonical_name(op[1])]
                if op[3]:
                    rows.insert(0, row)
                else:
                    rows.append(row)
            elif kind == "rm":
                rows = [r for r in rows if r[2] != op[1]]
            elif kind == "replace":
                idx = [i for i, r in enumerate(rows) if r[2] == op[1]]
                new = [op[2], " " + op[3], op[1]]
                if idx:
                    rows[idx[0]] = new
                    for i in reversed(idx[1:]):
                        del rows[i]
                else:
                    rows.append(new)
            elif kind == "ruri":
                first = f"{self.method} {op[1]} {self.version}"
            elif kind == "rm_via1":
                for i, r in enumerate(rows):
                    if r[2] == "via":
                        rest = split_list(r[1])[1:]
                        if rest:
                            r[1] = " " + ", ".join(rest)
                        else:
                            del rows[i]
                        break
            elif kind == "body":
                body, body_changed = op[1], True
                if op[2] is not None:
                    rows = [r for r in rows if r[2] != "content-type"]
                    rows.append(["Content-Type", " " + op[2], "content-type"])
        cl = f" {len(body)}"
        for r in rows:
            if r[2] == "content-length":
                if body_changed or r[1].strip() != cl[1:]:
                    r[1] = cl
                break
        else:
            rows.append(["Content-Length", cl, "content-length"])
        head = first + "".join(f"\r\n{n}:{v}" for n, v, _ in rows) + "\r\n\r\n"
        return head.encode("utf-8", "surrogateescape") + body

    def _serialize_adds(self, edits: list[tuple[Any, ...]]) -> bytes | None:
        """``serialize`` for the usual proxy edits (headers added or removed,
        the Request-URI set, the received top Via removed) with a Content-Length
        that is already right: the received header lines are joined once
        instead of row by row. None when another kind of edit needs the
        general path."""
        first = self.first_line
        top: list[str] = []
        bottom: list[str] = []
        lines, keys = self._lines, self._keys
        added: set[str] = set()
        via_removed = False
        for op in edits:
            kind = op[0]
            if kind == "add":
                key = _canon_get(op[1]) or canonical_name(op[1])
                if key == "content-length":
                    return None
                added.add(key)
                line = f"{op[1]}: {op[2]}"
                if op[3]:
                    top.append(line)
                else:
                    bottom.append(line)
            elif kind == "ruri":
                first = f"{self.method} {op[1]} {self.version}"
            elif kind == "rm" and op[1] not in added and op[1] != "content-length":
                if op[1] in keys:       # a Route consumed (loose_route), ...
                    lines = [ln for ln, k in zip(lines, keys) if k != op[1]]
                    keys = [k for k in keys if k != op[1]]
            elif kind == "rm_via1" and "via" not in added and not via_removed and "via" in keys:
                # the received top Via value goes (a reply relayed upstream)
                via_removed = True
                i = keys.index("via")
                name, _, value = lines[i].partition(":")
                rest = split_list(value)[1:]
                lines = lines.copy()
                if rest:
                    lines[i] = f"{name}: {', '.join(rest)}"
                else:
                    del lines[i]
                    keys = keys.copy()
                    del keys[i]
            else:
                return None
        body = self.body
        if "content-length" in self._keys:      # never removed above
            if self._parts[self._keys.index("content-length")][2].strip() != str(len(body)):
                return None
        else:
            bottom.append(f"Content-Length: {len(body)}")
        top.append(first)
        top.reverse()           # each header added first goes before the earlier ones
        top.extend(lines)
        top.extend(bottom)
        top.append("\r\n")
        return "\r\n".join(top).encode("utf-8", "surrogateescape") + body

    def __repr__(self) -> str:
        if self.is_request:
            return f"<SipMessage {self.method} {self.ruri}>"
        return f"<SipMessage {self.status} {self.reason}>"


def _check_header_text(name: str, value: str) -> None:
    if not abnf.METHOD.fullmatch(name):
        raise ValueError(f"bad header name {name!r}")
    if "\r" in value or "\n" in value:
        raise ValueError("header value with a line break")


class SipReply(SipMessage):
    __slots__ = ("status", "reason")
    is_request = False


def parse_message(data: bytes, *, strict: bool = False,
                  max_size: int = MAX_MESSAGE) -> SipMessage:
    """Parse one whole message (a datagram, or what the stream framer cut out).

    Raises ProtocolError and nothing else. ``strict`` parses every header that
    has a typed form and checks the message-level rules (required headers,
    single-valued headers, CSeq method) as RFC 4475 reads them.
    """
    try:
        msg = _parse(data, max_size)
        if strict:
            _strict_checks(msg)
        return msg
    except ProtocolError:
        raise
    except Exception as exc:  # noqa: BLE001 - the parser's contract is one error type
        raise ProtocolError(None, f"unparsable message ({type(exc).__name__})") from exc


def _parse(data: bytes, max_size: int) -> SipMessage:
    n = len(data)
    if n > max_size:
        raise ProtocolError(513, "Message Too Large")
    i = data.find(b"\r\n\r\n")
    if i >= 0:
        lines = data[:i].decode("utf-8", "surrogateescape").split("\r\n")
        body_start = i + 4
    else:
        lines, body_start = _split_odd(data)
    first = lines[0]
    del lines[0]
    parts = list(map(_partition, lines, repeat(":")))
    keys = list(map(_canon_get, map(_first, parts)))
    if not all(keys):
        lines, parts, keys = _slow_index(lines)

    if first[:1] in "Ss" and first[:4].upper() == "SIP/":
        msg: SipMessage = object.__new__(SipReply)
        msg._cache = {}
        _parse_status_line(msg, first)
    else:
        msg = object.__new__(SipMessage)
        msg._cache = {}
        _parse_request_line(msg, first)
    msg.first_line = first
    msg.raw = data
    msg._lines = lines
    msg._parts = parts
    msg._keys = keys
    msg._edits = None

    if "content-length" in keys:
        cl = _content_length(msg, parts, keys)
        msg._cache["content_length"] = cl
        end = body_start + cl
        if end > n:
            raise ProtocolError(400 if msg.is_request else None,
                                "Content-Length larger than the message")
        msg.body = data[body_start:end]
        msg._end = end
    else:
        msg.body = data[body_start:]
        msg._end = n
    if not msg.is_request:
        i = keys.index("cseq") if "cseq" in keys else -1
        if i >= 0:
            method = parts[i][2].split()
            msg.method = method[-1] if method else ""
    return msg


def _content_length(msg: SipMessage, parts: list[tuple[str, str, str]],
                    keys: list[str]) -> int:
    status = 400 if msg.is_request else None
    if keys.count("content-length") > 1:
        raise ProtocolError(status, "more than one Content-Length")
    v = parts[keys.index("content-length")][2].strip()
    if v == "0":
        return 0
    if not v.isdigit() or not v.isascii() or len(v) > 10:
        raise ProtocolError(status, "bad Content-Length value")
    return int(v)


def _split_odd(data: bytes) -> tuple[list[str], int]:
    """Header lines of a message without CRLFCRLF: bare-LF line ends, or no body."""
    j = data.find(b"\n\n")
    if j >= 0:
        head = data[:j].decode("utf-8", "surrogateescape")
        body_start = j + 2
    else:
        head = data.decode("utf-8", "surrogateescape").rstrip("\r\n")
        body_start = len(data)
    if not head.strip():
        raise ProtocolError(None, "empty message")
    return [ln[:-1] if ln.endswith("\r") else ln for ln in head.split("\n")], body_start


def _slow_index(hlines: list[str]) -> tuple[list[str], list[tuple[str, str, str]], list[str]]:
    """The header index for messages with folded lines or unusual names."""
    names: list[str] = []
    vals: list[str] = []
    for line in hlines:
        if line[:1] in (" ", "\t"):
            if not names:
                raise bad("folded line before the first header")
            vals[-1] = vals[-1].rstrip() + " " + line.strip()
            continue
        name, colon, value = line.partition(":")
        stripped = name.strip()
        if not colon or not stripped or not abnf.METHOD.fullmatch(stripped):
            raise bad(f"bad header line {line[:40]!r}")
        names.append(name)
        vals.append(value)
    parts = [(n, ":", v) for n, v in zip(names, vals)]
    return [f"{n}:{v}" for n, v in zip(names, vals)], parts, [canonical_name(n) for n in names]


_METHODS = frozenset(("INVITE", "ACK", "BYE", "CANCEL", "OPTIONS", "REGISTER", "PRACK",
                      "SUBSCRIBE", "NOTIFY", "PUBLISH", "INFO", "REFER", "MESSAGE", "UPDATE"))


def _parse_request_line(msg: SipMessage, line: str) -> None:
    parts = line.split(" ")
    if len(parts) != 3:
        loose = line.split()
        if len(loose) != 3 or not loose[2].upper().startswith("SIP/"):
            status = 400 if len(loose) >= 2 and abnf.METHOD.fullmatch(loose[0]) else None
            raise ProtocolError(status, "bad request line")
        parts = loose
        msg._cache["loose_first_line"] = True
    method, ruri, version = parts
    if method not in _METHODS and not abnf.METHOD.fullmatch(method):
        raise ProtocolError(None, "bad request method")
    if version in ("HTTP/1.1", "HTTP/1.0"):
        # an HTTP request on a SIP stream port (Kamailio's xhttp): the core
        # hands it to event_route[xhttp:request], never to request_route
        msg._cache["http_version"] = version
    elif version != "SIP/2.0":
        if not abnf.SIP_VERSION.fullmatch(version):
            raise ProtocolError(400, "bad SIP version")
        if version.upper() != "SIP/2.0":
            raise ProtocolError(505, "Version Not Supported")
    if len(ruri) > MAX_URI:
        raise ProtocolError(414, "Request-URI Too Long")
    msg.method = method
    msg.ruri = ruri


def _parse_status_line(msg: SipMessage, line: str) -> None:
    parts = line.split(" ", 2)
    if len(parts) < 2 or parts[0].upper() != "SIP/2.0":
        raise ProtocolError(None, "bad status line")
    code = parts[1]
    if len(code) != 3 or not abnf.STATUS_CODE.fullmatch(code):
        raise ProtocolError(None, "bad status code")
    msg.status = int(code)
    msg.reason = parts[2] if len(parts) > 2 else ""
    msg.ruri = ""
    msg.method = ""    # set from CSeq below, once the headers are indexed


_REQUIRED = ("via", "from", "to", "call-id", "cseq")


def _strict_checks(msg: SipMessage) -> None:
    """Every typed header parsed, the message-level rules of RFC 3261 checked."""
    status = 400 if msg.is_request else None
    try:
        if msg._cache.get("loose_first_line"):
            raise bad("request line elements must be separated by one SP")
        keys = msg._keys
        for key in _REQUIRED:
            if key not in keys:
                raise bad(f"missing {key} header")
        for key in SINGLE_HEADERS:
            if keys.count(key) > 1:
                raise bad(f"more than one {key} header")
        if msg.is_request:
            uri = msg.uri
            if isinstance(uri, SipURI) and uri.headers:
                raise bad("headers in a Request-URI")
            cseq = msg.cseq
            if cseq.method != msg.method:
                raise bad("CSeq method does not match the request method")
        else:
            msg.cseq  # noqa: B018 - parsed for its checks
        _touch(msg, ("vias", "from_", "to", "call_id", "max_forwards", "expires",
                     "contacts", "routes", "record_routes", "paths", "authorization",
                     "proxy_authorization", "www_authenticate", "proxy_authenticate",
                     "date"))
    except ProtocolError as e:
        raise ProtocolError(status, e.reason) from None


def _touch(msg: SipMessage, names: Iterable[str]) -> None:
    for name in names:
        getattr(msg, name)
