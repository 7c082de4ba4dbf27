"""siputils: SIP and URI helpers (Kamailio's siputils module, the common subset).

``options_reply`` answers an OPTIONS addressed to the server itself (no user
in the R-URI, the host one of ours) with 200 OK and the capability headers
set by the module's parameters. ``uri_param``/``add_uri_param`` read and
extend the R-URI as the script currently sees it (``$ru``). ``cmp_uri``
compares two URIs by RFC 3261 19.1.4; ``cmp_aor`` compares them as
addresses of record (scheme sip/sips, user, host, port with its default).
The comparisons are plain functions (:func:`uri_equal`, :func:`aor_equal`)
that tests and other modules call directly.
"""

from __future__ import annotations

import re
from typing import Any

from ser.core.log import log
from ser.core.module import Arg, Function, Module, Param, RouteType
from ser.core.parser import ProtocolError, SipURI, TelURI, parse_uri
from ser.core.parser.abnf import unescape

R = RouteType

E164 = re.compile(r"\+[0-9]{2,15}")


def _ruri(ctx: Any) -> str:
    return ctx.ruri or ctx.msg.ruri


def _params(ctx: Any) -> dict[str, Any]:
    inst = ctx.rt.modules.get("siputils")
    return inst.params if inst is not None else {}


# ---------------------------------------------------------------- options_reply

def options_headers(params: dict[str, Any]) -> list[str]:
    """The capability headers of the 200 OK to an OPTIONS (Kamailio sends the
    empty ones too, as the grammar allows)."""
    out = []
    allow = str(params.get("options_allow", DEFAULT_ALLOW))
    if allow:
        out.append(f"Allow: {allow}")
    out += [f"Accept: {params.get('options_accept', '*/*')}",
            f"Accept-Encoding: {params.get('options_accept_encoding', '')}",
            f"Accept-Language: {params.get('options_accept_language', 'en')}",
            f"Supported: {params.get('options_support', '')}"]
    return out


def options_reply(ctx: Any) -> int:
    msg = ctx.msg
    if not msg.is_request or msg.method != "OPTIONS":
        log.error("options_reply: called for a %s request", msg.method)
        return -1
    try:
        uri = parse_uri(_ruri(ctx))
    except ProtocolError:
        log.error("options_reply: bad R-URI")
        return -1
    if uri.user:
        log.error("options_reply: the R-URI contains a user")
        return -1
    if not isinstance(uri, SipURI) or not ctx.rt.is_myself(uri.host, uri.port):
        # Kamailio's docs warn that it does not check this; an OPTIONS for another
        # host is not ours to answer
        return -1
    core = ctx.rt.core
    if core is None:
        ctx.actions.append(("reply", 200, "OK"))
        return 1
    if core.reply(ctx, 200, "OK", headers=options_headers(_params(ctx))):
        return 1
    return -1


# ------------------------------------------------------------- credentials, tags

def is_user(ctx: Any, username: str) -> int:
    """The username of the first credentials (Authorization, else Proxy-Authorization)."""
    msg = ctx.msg
    try:
        creds = msg.authorization or msg.proxy_authorization
    except ProtocolError:
        return -1
    if not creds:
        return -1
    name = creds[0].username
    return 1 if name is not None and name == username else -1


def has_totag(ctx: Any) -> int:
    try:
        to = ctx.msg.to
    except ProtocolError:
        return -1
    return 1 if to is not None and to.tag else -1


def is_first_hop(ctx: Any) -> int:
    """Did the message come straight from the UA that sent it? A request: it
    has one Via. A reply: the top Record-Route URI is one of our IP
    addresses and the reply does not come from that address (a local loop);
    false when that URI names a domain."""
    msg = ctx.msg
    try:
        if msg.is_request:
            return 1 if len(msg.vias) == 1 else -1
        rrs = msg.record_routes
    except ProtocolError:
        return -1
    if not rrs or not isinstance(rrs[0].uri, SipURI):
        return -1
    uri = rrs[0].uri
    host = uri.host.strip("[]")
    if not re.fullmatch(r"[0-9.]+|[0-9A-Fa-f:.]*:[0-9A-Fa-f:.]*", host):
        return -1
    if not ctx.rt.is_myself(host, uri.port or 5060):
        return -1
    return -1 if host == ctx.src_ip and (uri.port or 5060) == ctx.src_port else 1


# --------------------------------------------------------------- R-URI parameters

def _ruri_param(ctx: Any, name: str) -> tuple[bool, str | None]:
    """(present, value) of an R-URI parameter; names compare case-insensitively."""
    try:
        uri = parse_uri(_ruri(ctx))
    except ProtocolError:
        return False, None
    if not isinstance(uri, SipURI | TelURI):
        return False, None
    value = uri.param(name)
    return value is not None, value


def uri_param(ctx: Any, name: str, value: str | None = None) -> int:
    present, got = _ruri_param(ctx, name)
    if not present:
        return -1
    if value is None:
        return 1 if got == "" else -1
    return 1 if got == value else -1


def uri_param_any(ctx: Any, name: str) -> int:
    return 1 if _ruri_param(ctx, name)[0] else -1


def add_uri_param(ctx: Any, param: str) -> int:
    param = param.strip().lstrip(";")
    if not param or any(c in param for c in " \t\r\n?<>"):
        log.error("add_uri_param: bad parameter %r", param[:64])
        return -1
    ruri = _ruri(ctx)
    head, q, headers = ruri.partition("?")
    new = f"{head};{param}{q}{headers}"
    try:
        parse_uri(new)
        if ctx.msg.is_request:
            ctx.msg.set_ruri(new)
    except (ProtocolError, ValueError):
        log.error("add_uri_param: %r would make a bad R-URI", param[:64])
        return -1
    ctx.ruri = new
    return 1


def is_uri_user_e164(ctx: Any, uri: str) -> int:
    try:
        parsed = parse_uri(uri.strip())
    except ProtocolError:
        return -1
    if not isinstance(parsed, SipURI) or not parsed.user:
        return -1
    return 1 if E164.fullmatch(unescape(parsed.user)) else -1


def is_request(ctx: Any) -> int:
    return 1 if ctx.msg.is_request else -1


def is_reply(ctx: Any) -> int:
    return -1 if ctx.msg.is_request else 1


# --------------------------------------------------------------- URI comparison

# RFC 3261 19.1.4: these parameters, present in only one URI, make them differ
_MUST_MATCH = ("user", "ttl", "method", "maddr", "transport")


def _with_scheme(text: str) -> str:
    text = text.strip()
    if text.startswith("<") and text.endswith(">"):
        text = text[1:-1]
    if ":" not in text.split("@", 1)[0]:
        text = "sip:" + text
    return text


def _norm_params(params: dict[str, str | None]) -> dict[str, str]:
    return {unescape(k).lower(): unescape(v or "").lower() for k, v in params.items()}


def uri_equal(a: str, b: str) -> bool | None:
    """RFC 3261 19.1.4 equality of two URIs; None when one does not parse."""
    try:
        ua, ub = parse_uri(_with_scheme(a)), parse_uri(_with_scheme(b))
    except ProtocolError:
        return None
    if ua.scheme.lower() != ub.scheme.lower():
        return False
    if not (isinstance(ua, SipURI) and isinstance(ub, SipURI)):
        if isinstance(ua, TelURI) and isinstance(ub, TelURI):
            return (ua.number.replace("-", "").replace(".", "")
                    == ub.number.replace("-", "").replace(".", "")
                    and _norm_params(ua.params) == _norm_params(ub.params))
        return unescape(str(ua).split(":", 1)[1]) == unescape(str(ub).split(":", 1)[1])
    if unescape(ua.user or "") != unescape(ub.user or "") or (ua.user is None) != (ub.user is None):
        return False
    if unescape(ua.password or "") != unescape(ub.password or ""):
        return False
    if unescape(ua.host).lower() != unescape(ub.host).lower() or ua.port != ub.port:
        return False
    pa, pb = _norm_params(ua.params), _norm_params(ub.params)
    for name in _MUST_MATCH:
        if pa.get(name) != pb.get(name):
            return False
    for name in pa.keys() & pb.keys():
        if pa[name] != pb[name]:
            return False
    ha = {unescape(k).lower(): unescape(v) for k, v in ua.headers.items()}
    hb = {unescape(k).lower(): unescape(v) for k, v in ub.headers.items()}
    return ha == hb


def aor_equal(a: str, b: str) -> bool | None:
    """Equality as addresses of record: user (exact, unescaped), host (any case),
    port (a missing one is 5060); sip and sips alike, parameters ignored."""
    try:
        ua, ub = parse_uri(_with_scheme(a)), parse_uri(_with_scheme(b))
    except ProtocolError:
        return None
    if not (isinstance(ua, SipURI) and isinstance(ub, SipURI)):
        return None

    def key(u: SipURI) -> tuple[str, str, int]:
        return unescape(u.user or ""), unescape(u.host).lower().strip("[]"), u.port or 5060
    return key(ua) == key(ub)


def cmp_uri(ctx: Any, a: str, b: str) -> int:
    r = uri_equal(a, b)
    return -2 if r is None else (1 if r else -1)


def cmp_aor(ctx: Any, a: str, b: str) -> int:
    r = aor_equal(a, b)
    return -2 if r is None else (1 if r else -1)


DEFAULT_ALLOW = ("INVITE, ACK, CANCEL, OPTIONS, BYE, REGISTER, SUBSCRIBE, NOTIFY, "
                 "PUBLISH, INFO, REFER, MESSAGE, UPDATE, PRACK")

exports = Module(
    name="siputils",
    doc="SIP and URI helpers: OPTIONS replies, R-URI parameters, tags, URI comparison.",
    depends=("sl",),
    params=(
        Param("options_allow", str, DEFAULT_ALLOW,
              "Allow header of options_reply() (not in Kamailio 5.6; empty: no header)."),
        Param("options_accept", str, "*/*", "Accept header of options_reply()."),
        Param("options_accept_encoding", str, "", "Accept-Encoding header of options_reply()."),
        Param("options_accept_language", str, "en", "Accept-Language header of options_reply()."),
        Param("options_support", str, "", "Supported header of options_reply()."),
        Param("contact_flds_separator", str, "*",
              "Separator of encode_contact() (not available in ser yet).", ignored=True),
        Param("rpid_prefix", str, "", "Remote-Party-ID prefix (RPID functions not available).",
              ignored=True),
        Param("rpid_suffix", str, ";party=calling;id-type=subscriber;screen=yes",
              "Remote-Party-ID suffix (RPID functions not available).", ignored=True),
        Param("rpid_avp", str, "$avp(s:rpid)", "AVP of the RPID (RPID functions not available).",
              ignored=True),
    ),
    functions=(
        Function("options_reply", options_reply, (), R.REQUEST,
                 doc="Answer an OPTIONS to the server itself (no user, our host) with 200 OK "
                     "and Allow, Accept, Accept-Encoding, Accept-Language, Supported; false "
                     "for any other request."),
        Function("is_user", is_user, (Arg("username"),), R.REQUEST,
                 doc="True if the username of the credentials is username."),
        Function("has_totag", has_totag, (), doc="True if the To header has a tag."),
        Function("uri_param", uri_param, (Arg("param"), Arg("value", optional=True)),
                 R.REQUEST,
                 doc="True if the R-URI has the parameter without a value (one argument) "
                     "or with that value."),
        Function("uri_param_any", uri_param_any, (Arg("param"),), R.REQUEST,
                 doc="True if the R-URI has the parameter, with or without a value."),
        Function("add_uri_param", add_uri_param, (Arg("param", doc="name=value"),), R.REQUEST,
                 doc="Append ;name=value to the R-URI."),
        Function("is_uri_user_e164", is_uri_user_e164, (Arg("uri"),),
                 doc="True if the user part of the URI is an E.164 number (+ and 2-15 digits)."),
        Function("is_request", is_request, (), doc="True for a request."),
        Function("is_first_hop", is_first_hop, (), doc="True if the message comes straight "
                 "from its UA: a request with one Via; a reply whose top Record-Route is our "
                 "address (not its source)."),
        Function("is_reply", is_reply, (), doc="True for a reply."),
        Function("cmp_uri", cmp_uri, (Arg("uri1"), Arg("uri2")),
                 doc="True if the URIs are equal by RFC 3261 19.1.4; -2 if one does not parse."),
        Function("cmp_aor", cmp_aor, (Arg("uri1"), Arg("uri2")),
                 doc="True if the URIs are the same address of record (user, host, port)."),
    ),
)
