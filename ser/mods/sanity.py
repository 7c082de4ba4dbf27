"""sanity: RFC 3261 checks a proxy may make before routing (Kamailio's sanity module).

Theory of operation. Each check is one row of :data:`CHECKS`: the bit that
selects it (Kamailio's numbers, so ``sanity_check("17895", "7")`` from a
Kamailio config means the same here), its name, whether it applies to replies
too, and a function ``(msg, opts) -> Failure | None``. :func:`check_message`
runs the selected rows in bit order and returns the first failure, which
knows its answer: a status and reason (400 ``CSeq number is illegal``, 420
``Bad Proxy Require Extension`` with an ``Unsupported`` header, 505, 416 ...)
or ``status=None`` when no answer can or should be sent. ser's parser is lazy,
so a check reads what it needs and turns a protocol error of that header into
its own failure; nothing but a :class:`Failure` comes out.

The script function answers a failed request itself (unless ``noreply``),
counts it in ``core:err_requests`` and then stops the script (``autodrop``,
the default) or returns false. A reply is never answered: a failed reply is
dropped (``autodrop``) or the function returns false.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ser.core.log import RateLimited
from ser.core.module import Arg, Function, Module, ModuleInstance, Param, RouteType
from ser.core.parser import NameAddr, ProtocolError, SipMessage, SipURI, parse_uri
from ser.core.parser.abnf import ADDR_SPEC, NAME_ADDR
from ser.core.parser.hdrs import parse_credentials

R = RouteType

# msg_checks bits (Kamailio's sanity module)
RURI_SIP_VERSION = 1
RURI_SCHEME = 2
REQUIRED_HEADERS = 4
VIA_SIP_VERSION = 8          # disabled in Kamailio too: the core parser checks it
VIA_PROTOCOL = 16            # disabled in Kamailio too
CSEQ_METHOD = 32
CSEQ_VALUE = 64
CONTENT_LENGTH = 128
EXPIRES_VALUE = 256
PROXY_REQUIRE = 512
PARSE_URIS = 1024
DIGEST_CREDENTIALS = 2048
DUPLICATE_TAGS = 4096
AUTHORIZATION = 8192
VIA1 = 16384
ALL_CHECKS = 32767

# uri_checks bits
URI_RURI = 1
URI_FROM = 2
URI_TO = 4
URI_CONTACT = 8

DEFAULT_CHECKS = 3047        # 1 2 4 32 64 128 256 512 2048, as Kamailio
DEFAULT_URI_CHECKS = 7       # R-URI, From, To

# schemes Kamailio's URI parser accepts; another one in the R-URI is a 416
SCHEMES = frozenset(("sip", "sips", "tel", "tels", "urn"))
UINT_MAX = 2**32 - 1

_log = RateLimited(interval=10.0, burst=100)   # per process; a flood stays bounded


@dataclass(frozen=True)
class Failure:
    """A failed check: the answer to send (``status`` None: none) and why."""
    status: int | None
    reason: str
    headers: tuple[str, ...] = ()
    why: str = ""


@dataclass(frozen=True)
class Opts:
    uri_checks: int = DEFAULT_URI_CHECKS
    supported: frozenset[str] = frozenset()
    ruri: str | None = None          # the R-URI as the script changed it, if it did


def _bad(reason: str, why: str = "") -> Failure:
    return Failure(400, reason, why=why or reason)


# ------------------------------------------------------------------- the checks

def check_ruri_sip_version(msg: SipMessage, o: Opts) -> Failure | None:
    """The request line: ``Method SP Request-URI SP SIP/2.0`` (RFC 3261 25.1)."""
    line = msg.first_line
    version = line.rsplit(None, 1)[-1] if line.strip() else ""
    if version.upper() != "SIP/2.0":
        return Failure(505, "Version Not Supported", why=f"version {version[:16]!r}")
    if len(line.split(" ")) != 3:
        # the parser reads extra or trailing whitespace leniently; RFC 4475
        # 3.1.2.7 and 3.1.2.8 (lwsstart, trws) ask for a 400
        return _bad("Bad Request Line", "request line elements not separated by one SP")
    return None


def check_ruri_scheme(msg: SipMessage, o: Opts) -> Failure | None:
    text = o.ruri or msg.ruri
    try:
        uri = parse_uri(text)
    except ProtocolError:
        return _bad("Bad Request URI", f"unparsable Request-URI {text[:64]!r}")
    if uri.scheme.lower() not in SCHEMES:
        return Failure(416, "Unsupported URI Scheme in Request URI",
                       why=f"Request-URI scheme {uri.scheme[:32]!r}")
    if isinstance(uri, SipURI) and uri.headers:
        # RFC 3261 19.1.1: headers are not allowed in a Request-URI (RFC 4475 escruri)
        return _bad("Bad Request URI", "headers in the Request-URI")
    return None


_REQUIRED = ("via", "from", "to", "call-id", "cseq")
_SINGLE = (("from", "From"), ("to", "To"), ("call-id", "Call-ID"), ("cseq", "CSeq"))


def check_required_headers(msg: SipMessage, o: Opts) -> Failure | None:
    """Via, From, To, Call-ID and CSeq present, the last four once, and readable;
    a Contact (which a dialog or a binding is made of) readable too. Kamailio's
    core parser refuses such messages before the script runs; ser's parser is
    lazy, so this check does it."""
    missing = [h for h in _REQUIRED if not msg.has_header(h)]
    if missing:
        return _bad("Missing Required Header in Request", f"no {', '.join(missing)}")
    for key, name in _SINGLE:
        if msg.count(key) > 1:
            return _bad(f"Duplicate {name} Header", f"more than one {name}")
    try:
        msg.via  # noqa: B018 - parsed for its check
    except ProtocolError as e:
        return Failure(None, "", why=f"bad top Via: {e.reason}")
    for attr, name in (("vias", "Via"), ("from_", "From"), ("to", "To"),
                       ("call_id", "Call-ID"), ("contacts", "Contact")):
        try:
            getattr(msg, attr)
        except ProtocolError as e:
            return _bad(f"Bad {name} Header", e.reason)
    if _cseq_parts(msg) == ("", ""):
        return _bad("Bad CSeq Header", "CSeq is not a number and a method")
    return None


_CSEQ = re.compile(r"[ \t]*(\S+)[ \t]+(\S+)[ \t]*")


def _cseq_parts(msg: SipMessage) -> tuple[str, str] | None:
    raw = msg.header("cseq")
    if raw is None:
        return None
    m = _CSEQ.fullmatch(raw)
    return (m.group(1), m.group(2)) if m else ("", "")


def check_cseq_method(msg: SipMessage, o: Opts) -> Failure | None:
    parts = _cseq_parts(msg)
    if parts is not None and parts[1] != msg.method:
        return _bad("CSeq method does not match request method",
                    f"CSeq method {parts[1][:32]!r}, request {msg.method[:32]!r}")
    return None


def _uint(text: str) -> bool:
    return text.isascii() and text.isdigit() and int(text) <= UINT_MAX


def check_cseq_value(msg: SipMessage, o: Opts) -> Failure | None:
    parts = _cseq_parts(msg)
    if parts is not None and not _uint(parts[0]):
        return _bad("CSeq number is illegal", f"CSeq number {parts[0][:32]!r}")
    return None


def _body_start(raw: bytes) -> int:
    i = raw.find(b"\r\n\r\n")
    if i >= 0:
        return i + 4
    i = raw.find(b"\n\n")
    return i + 2 if i >= 0 else len(raw)


def check_content_length(msg: SipMessage, o: Opts) -> Failure | None:
    # A stream framer cuts a message at Content-Length, so only a datagram
    # can carry more (or fewer) bytes than it announces.
    if not msg.has_header("content-length"):
        return None
    try:
        cl = msg.content_length
    except ProtocolError:
        return _bad("Content-Length mis-match", "bad Content-Length value")
    have = len(msg.raw) - _body_start(msg.raw)
    if cl != have:
        return _bad("Content-Length mis-match", f"Content-Length {cl}, body {have} bytes")
    return None


def check_expires(msg: SipMessage, o: Opts) -> Failure | None:
    for value in msg.headers("expires"):
        if not _uint(value.strip()):
            return _bad("Expires value is illegal", f"Expires {value[:32]!r}")
    return None


def check_proxy_require(msg: SipMessage, o: Opts) -> Failure | None:
    if not msg.has_header("proxy-require"):
        return None
    try:
        tags = msg.headers("proxy-require")
    except ProtocolError:
        tags = []
    if not tags or any(not t for t in tags):
        return _bad("Bad Proxy Require Header", "empty Proxy-Require")
    unsupported = [t for t in dict.fromkeys(tags) if t not in o.supported]
    if unsupported:
        # RFC 3261 8.2.2.3: list every option tag that is not understood
        return Failure(420, "Bad Proxy Require Extension",
                       (f"Unsupported: {', '.join(unsupported)}",),
                       why=f"unsupported Proxy-Require {', '.join(unsupported)[:64]}")
    return None


def _uri_ok(na: NameAddr) -> bool:
    return na.uri.scheme.lower() in SCHEMES


def check_parse_uris(msg: SipMessage, o: Opts) -> Failure | None:
    if o.uri_checks & URI_RURI and msg.is_request:
        try:
            parse_uri(o.ruri or msg.ruri)
        except ProtocolError:
            return _bad("Bad Request URI", "unparsable Request-URI")
    for bit, attr, reason in ((URI_FROM, "from_", "Invalid From Header"),
                              (URI_TO, "to", "Invalid To Header")):
        if o.uri_checks & bit:
            try:
                na = getattr(msg, attr)
            except ProtocolError as e:
                return _bad(reason, e.reason)
            if na is None or not _uri_ok(na):
                return _bad(reason, "missing header or a URI that is not SIP")
    if o.uri_checks & URI_CONTACT:
        try:
            contacts = msg.contacts
        except ProtocolError as e:
            return _bad("Bad Contact URI", e.reason)
        if not all(_uri_ok(c) for c in contacts):
            return _bad("Bad Contact URI", "a Contact URI that is not SIP")
    return None


_DIGEST_NEEDS = ("username", "realm", "nonce", "uri", "response")


def _credentials_failure(values: list[str], digest_only: bool) -> Failure | None:
    for value in values:
        scheme = value.strip().split(None, 1)[0].lower() if value.strip() else ""
        if scheme != "digest":
            if digest_only:
                continue
            # as Kamailio: invalid, and dropped without an answer
            return Failure(None, "", why=f"authorization scheme {scheme[:32]!r} is not digest")
        try:
            cred = parse_credentials(value)
        except ProtocolError as e:
            return _bad("Bad Auth Credentials", e.reason)
        need = _DIGEST_NEEDS + (("nc", "cnonce") if cred.get("qop") else ())
        missing = [p for p in need if not cred.get(p)]
        if missing:
            return _bad("Bad Auth Credentials", f"digest without {', '.join(missing)}")
    return None


def check_digest_credentials(msg: SipMessage, o: Opts) -> Failure | None:
    return _credentials_failure(msg.headers("authorization")
                                + msg.headers("proxy-authorization"), False)


def check_authorization(msg: SipMessage, o: Opts) -> Failure | None:
    return _credentials_failure(msg.headers("authorization"), True)


def _tag_count(value: str) -> int:
    """How many ``tag`` parameters a From/To value carries (a dict keeps one)."""
    m = NAME_ADDR.match(value) or ADDR_SPEC.match(value)
    rest = value[m.end():] if m else value
    return sum(1 for p in rest.split(";")[1:] if p.partition("=")[0].strip().lower() == "tag")


def check_duplicate_tags(msg: SipMessage, o: Opts) -> Failure | None:
    for name, reason in (("to", "Many To Tag Params"), ("from", "Many From Tag Params")):
        value = msg.header(name)
        if value is not None and _tag_count(value) > 1:
            return _bad(reason, f"more than one {name} tag")
    return None


def check_via1(msg: SipMessage, o: Opts) -> Failure | None:
    # without a readable top Via there is nobody to answer
    try:
        via = msg.via
    except ProtocolError as e:
        return Failure(None, "", why=f"bad top Via: {e.reason}")
    if via is None or not via.host:
        return Failure(None, "", why="no top Via")
    return None


Check = Callable[[SipMessage, Opts], "Failure | None"]

# (bit, name, applies to replies, check), run in this order
CHECKS: tuple[tuple[int, str, bool, Check], ...] = (
    (RURI_SIP_VERSION, "ruri_sip_version", False, check_ruri_sip_version),
    (RURI_SCHEME, "ruri_scheme", False, check_ruri_scheme),
    (REQUIRED_HEADERS, "required_headers", True, check_required_headers),
    (CSEQ_METHOD, "cseq_method", False, check_cseq_method),
    (CSEQ_VALUE, "cseq_value", True, check_cseq_value),
    (CONTENT_LENGTH, "content_length", True, check_content_length),
    (EXPIRES_VALUE, "expires_value", True, check_expires),
    (PROXY_REQUIRE, "proxy_require", False, check_proxy_require),
    (PARSE_URIS, "parse_uris", True, check_parse_uris),
    (DIGEST_CREDENTIALS, "digest_credentials", False, check_digest_credentials),
    (DUPLICATE_TAGS, "duplicate_tags", True, check_duplicate_tags),
    (AUTHORIZATION, "authorization", False, check_authorization),
    (VIA1, "via1", True, check_via1),
)


def check_message(msg: SipMessage, checks: int = DEFAULT_CHECKS, opts: Opts = Opts()
                  ) -> tuple[str, Failure] | None:
    """The first selected check ``msg`` fails, as (check name, failure), or None."""
    request = msg.is_request
    for bit, name, on_replies, fn in CHECKS:
        if checks & bit and (request or on_replies):
            try:
                failure = fn(msg, opts)
            except ProtocolError as e:
                failure = _bad("Bad Request", e.reason)
            if failure is not None:
                return name, failure
    return None


def parse_supported(text: str) -> frozenset[str]:
    """The ``proxy_require`` parameter: comma-separated option tags."""
    return frozenset(t.strip() for t in text.split(",") if t.strip())


# ------------------------------------------------------------- script functions

def _instance(ctx: Any) -> ModuleInstance | None:
    return ctx.rt.modules.get("sanity")


def _opts(inst: ModuleInstance | None, uri_checks: int | None, ctx: Any) -> Opts:
    params = inst.params if inst is not None else {}
    supported = inst.state.get("supported") if inst is not None else None
    if supported is None:
        supported = parse_supported(str(params.get("proxy_require", "")))
        if inst is not None:
            inst.state["supported"] = supported
    if uri_checks is None:
        uri_checks = int(params.get("uri_checks", DEFAULT_URI_CHECKS))
    return Opts(int(uri_checks), supported, getattr(ctx, "ruri", None))


def _send(ctx: Any, failure: Failure) -> bool:
    core = ctx.rt.core
    if core is None:
        ctx.actions.append(("reply", failure.status, failure.reason))
        return True
    try:
        return bool(core.reply(ctx, failure.status, failure.reason, headers=failure.headers))
    except (ProtocolError, ValueError) as e:
        # the request is too broken to build an answer from: drop it
        _log(logging.WARNING, "sanity: cannot answer %s from %s:%s: %s", ctx.msg.method,
             ctx.src_ip, ctx.src_port, getattr(e, "reason", e))
        return False


def sanity_check(ctx: Any, msg_checks: int | None = None, uri_checks: int | None = None) -> int:
    inst = _instance(ctx)
    params = inst.params if inst is not None else {}
    checks = int(params.get("default_checks", DEFAULT_CHECKS)) if msg_checks is None \
        else int(msg_checks)
    msg = ctx.msg
    found = check_message(msg, checks, _opts(inst, uri_checks, ctx))
    if found is None:
        return 1
    name, failure = found
    request = msg.is_request
    what = msg.method if request else f"{msg.status} reply"
    _log(logging.WARNING, "sanity: %s from %s:%s failed %s: %s", what, ctx.src_ip,
         ctx.src_port, name, failure.why or failure.reason)
    core = ctx.rt.core
    if core is not None:
        core.stats.inc("core:err_requests" if request else "core:err_replies")
    if request:
        ctx.cache["sanity_failure"] = failure
        if failure.status is not None and not int(params.get("noreply", 0)):
            _send(ctx, failure)
    if int(params.get("autodrop", 1)):
        if not request:
            ctx.dropped = True
        return 0
    return -1


def sanity_reply(ctx: Any) -> int:
    """Send the answer of the last failed check (with ``noreply`` set)."""
    failure = ctx.cache.get("sanity_failure")
    if failure is None or failure.status is None or not ctx.msg.is_request:
        return -1
    return 1 if _send(ctx, failure) else -1


def _check_bits(limit: int) -> Callable[[Any], str | None]:
    def check(v: Any) -> str | None:
        return None if 0 <= int(v) <= limit else f"must be 0..{limit}"
    return check


exports = Module(
    name="sanity",
    doc="RFC 3261 sanity checks of a message, answered with the precise error "
        "(Kamailio's check numbers).",
    depends=("sl",),
    params=(
        Param("default_checks", int, DEFAULT_CHECKS,
              "Checks run by sanity_check() without arguments: the sum of the check "
              "numbers (1 request line: SIP/2.0, single spaces; 2 R-URI scheme "
              "sip/sips/tel/tels/urn, no headers; 4 Via, From, To, Call-ID, CSeq present, "
              "once, readable, and a Contact readable; 8 and 16 disabled, as in "
              "Kamailio; 32 CSeq method, 64 CSeq number, 128 Content-Length, "
              "256 Expires, 512 Proxy-Require, 1024 parse URIs, 2048 digest "
              "credentials, 4096 duplicate To/From tags, 8192 Authorization, "
              "16384 first Via).", _check_bits(ALL_CHECKS)),
        Param("uri_checks", int, DEFAULT_URI_CHECKS,
              "URIs parsed by check 1024: 1 R-URI, 2 From, 4 To, 8 Contact.",
              _check_bits(15)),
        Param("proxy_require", str, "",
              "Comma-separated option tags this proxy supports (Proxy-Require check)."),
        Param("autodrop", int, 1,
              "1: a failed check stops the script (a failed reply is dropped); "
              "0: sanity_check() returns false.", _check_bits(1)),
        Param("noreply", int, 0,
              "1: do not answer a failed request (sanity_reply() can, later).",
              _check_bits(1)),
    ),
    functions=(
        Function("sanity_check", sanity_check,
                 (Arg("msg_checks", "int", optional=True,
                      doc="checks to run (default: default_checks)"),
                  Arg("uri_checks", "int", optional=True,
                      doc="URIs for check 1024 (default: uri_checks)")),
                 R.REQUEST | R.ONREPLY,
                 doc="Run the checks; a failed request is answered with the precise error, "
                     "a failed reply is never answered. True when every check passed."),
        Function("sanity_reply", sanity_reply, (), R.REQUEST,
                 doc="Send the answer of the check that failed (with noreply=1)."),
    ),
)
