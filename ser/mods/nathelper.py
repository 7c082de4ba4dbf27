"""nathelper: signalling of user agents behind NAT (Kamailio's nathelper module).

Theory of operation
-------------------
A UA behind NAT writes its private address into Contact (and Via, and the
SDP); ser sees the packet come from the NAT's public address.
``nat_uac_test(flags)`` detects that (each flag is one test, see
:data:`TESTS`). Then, for a REGISTER, ``fix_nated_register()`` puts the
address the request really came from (``sip:ip:port;transport=...``) in the
AVP named by ``received_avp``; registrar stores it with the contact as
*received*, and ``lookup()`` sends requests for the contact there (``$du``).
For a dialog, ``set_contact_alias()`` adds ``;alias=ip~port~proto`` to the
Contact URI, so the in-dialog requests that target it carry the real
address, and ``handle_ruri_alias()`` turns that back into ``$du`` (removing
the parameter from the R-URI). ``fix_nated_contact()`` rewrites the Contact
host and port instead.

NAT pinging keeps the NAT binding open: every ``natping_interval`` seconds
the timer process sends, to each registered contact (with
``ping_nated_only``: only those whose usrloc ``nat_bflag`` is set), either a
SIP OPTIONS request (contacts with the ``sipping_bflag`` branch flag; From is
``sipping_from``) or a CRLFCRLF keep-alive datagram (RFC 5626 4.4.1), to the
contact's received address if it has one. UDP contacts only; a TCP/TLS
connection is kept open by the UA itself.

Media is not touched here: ser has no media relay (see the ``rtpproxy``
module).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
from typing import Any

from ser.core.log import log
from ser.core.module import Arg, FixedArg, FixupError, Function, Module, Param, RouteType, Timer
from ser.core.parser import NameAddr, ProtocolError, SipURI, parse_uri

R = RouteType

# RFC 1918 and RFC 6598 (carrier-grade NAT) networks: "private" for every test
PRIVATE_NETS = tuple(ipaddress.ip_network(n) for n in (
    "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10"))

PROTO_IDS = {"udp": 1, "tcp": 2, "tls": 3, "sctp": 4, "ws": 5, "wss": 6}
PROTO_NAMES = {v: k for k, v in PROTO_IDS.items()}

NAT_CONTACT_PRIVATE = 1     # Contact URI host is a private address
NAT_VIA_RECEIVED = 2        # top Via sent-by host differs from the source IP
NAT_VIA_PRIVATE = 4         # top Via sent-by host is a private address
NAT_SDP_PRIVATE = 8         # an SDP c= address is private
NAT_VIA_PORT = 16           # source port differs from the top Via's port
NAT_SRC_PRIVATE = 32        # the source IP is a private address
NAT_WEBSOCKET = 64          # received over WebSocket
NAT_CONTACT_PORT = 128      # Contact URI port differs from the source port
NAT_SDP_SRC = 256           # an SDP c= address differs from the source IP
ALL_TESTS = 511


def is_private(host: str | None) -> bool:
    """Is ``host`` an IPv4 literal in an RFC 1918 / RFC 6598 network?"""
    if not host:
        return False
    try:
        addr = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return any(addr in n for n in PRIVATE_NETS)


def _same_ip(a: str, b: str) -> bool:
    try:
        return ipaddress.ip_address(a.strip("[]")) == ipaddress.ip_address(b.strip("[]"))
    except ValueError:
        return a.strip("[]").lower() == b.strip("[]").lower()


def _first_contact_uri(ctx: Any) -> SipURI | None:
    try:
        contacts = _contacts(ctx)
    except ProtocolError:
        return None
    if not contacts or not isinstance(contacts[0].uri, SipURI):
        return None
    uri: SipURI = contacts[0].uri
    return uri


def _sdp_addresses(ctx: Any) -> list[str]:
    body = ctx.msg.body
    if not body or "sdp" not in (ctx.msg.content_type or "").lower():
        return []
    out = []
    for line in body.decode("utf-8", "replace").splitlines():
        m = re.match(r"c=IN\s+IP[46]\s+(\S+)", line.strip())
        if m:
            out.append(m.group(1))
    return out


def uac_test(ctx: Any, flags: int) -> bool:
    """The typed nat_uac_test: True when any test selected by ``flags`` is positive."""
    msg = ctx.msg
    via = msg.via
    src_ip, src_port = ctx.src_ip, ctx.src_port
    if flags & NAT_CONTACT_PRIVATE:
        uri = _first_contact_uri(ctx)
        if uri is not None and is_private(uri.host):
            return True
    if flags & NAT_VIA_RECEIVED and via is not None and not _same_ip(via.host, src_ip):
        return True
    if flags & NAT_VIA_PRIVATE and via is not None and is_private(via.host):
        return True
    if flags & NAT_SDP_PRIVATE and any(is_private(a) for a in _sdp_addresses(ctx)):
        return True
    if flags & NAT_VIA_PORT and via is not None and (via.port or 5060) != src_port:
        return True
    if flags & NAT_SRC_PRIVATE and is_private(src_ip):
        return True
    if flags & NAT_WEBSOCKET and ctx.proto in (PROTO_IDS["ws"], PROTO_IDS["wss"]):
        return True
    if flags & NAT_CONTACT_PORT:
        uri = _first_contact_uri(ctx)
        if uri is not None and (uri.port or 5060) != src_port:
            return True
    if flags & NAT_SDP_SRC and any(not _same_ip(a, src_ip) for a in _sdp_addresses(ctx)):
        return True
    return False


def nat_uac_test(ctx: Any, flags: int) -> int:
    return 1 if uac_test(ctx, flags) else -1


def _flags_fixup(args: list[FixedArg]) -> list[FixedArg]:
    a = args[0]
    if a.is_const and not 0 < int(a.const) <= ALL_TESTS:
        raise FixupError(f"flags is a sum of 1, 2, 4, ..., 256 (1 to {ALL_TESTS})", 0)
    return args


# ---------------------------------------------------------------- Contact rewriting

def _contacts(ctx: Any) -> list[NameAddr]:
    """The Contacts as the script has left them (after our own rewrites)."""
    cur = ctx.cache.get("nh_contacts")
    if cur is None:
        cur = list(ctx.msg.contacts)
    return cur


def _na_text(na: NameAddr, uri: str) -> str:
    shown = ""
    if na.display:
        shown = '"' + na.display.replace("\\", "\\\\").replace('"', '\\"') + '" '
    params = "".join(f";{k}" if v is None else f";{k}={v}" for k, v in na.params.items())
    return f"{shown}<{uri}>{params}"


def _set_first_contact(ctx: Any, uri: SipURI) -> None:
    contacts = _contacts(ctx)
    first = contacts[0]
    new = NameAddr(first.display, uri, first.params, _na_text(first, str(uri)), True)
    contacts = [new] + contacts[1:]
    ctx.cache["nh_contacts"] = contacts
    ctx.msg.replace_header("Contact", ", ".join(c.text or _na_text(c, str(c.uri))
                                                for c in contacts))


def _src_host(ctx: Any) -> str:
    return f"[{ctx.src_ip}]" if ":" in ctx.src_ip else ctx.src_ip


def fix_nated_contact(ctx: Any) -> int:
    """The first Contact URI's host and port become the source address."""
    uri = _first_contact_uri(ctx)
    if uri is None:
        return -1
    _set_first_contact(ctx, dataclasses.replace(uri, host=_src_host(ctx), port=ctx.src_port,
                                                text=""))
    return 1


def _alias_value(ctx: Any) -> str:
    return f"{_src_host(ctx)}~{ctx.src_port}~{ctx.proto}"


def set_contact_alias(ctx: Any) -> int:
    """Add ``;alias=ip~port~proto`` (the source) to the first Contact URI,
    unless it already points there or carries an alias."""
    uri = _first_contact_uri(ctx)
    if uri is None:
        return -1
    if uri.param("alias") is not None:
        return 1
    proto = PROTO_NAMES.get(ctx.proto, "udp")
    if _same_ip(uri.host, ctx.src_ip) and (uri.port or 5060) == ctx.src_port \
            and (uri.transport or "udp") == proto:
        return 1
    params = dict(uri.params)
    params["alias"] = _alias_value(ctx)
    _set_first_contact(ctx, dataclasses.replace(uri, params=params, text=""))
    return 1


def handle_ruri_alias(ctx: Any) -> int:
    """An ``alias`` parameter in the R-URI becomes ``$du`` and leaves the R-URI.
    1 done, 2 the R-URI has no alias, -1 a bad one."""
    msg = ctx.msg
    if not msg.is_request:
        return -1
    try:
        uri = parse_uri(ctx.ruri or msg.ruri)
    except ProtocolError:
        return -1
    if not isinstance(uri, SipURI):
        return 2
    alias = None
    params = {}
    for k, v in uri.params.items():
        if k.lower() == "alias":
            alias = v
        else:
            params[k] = v
    if alias is None:
        return 2
    m = re.fullmatch(r"(\[[0-9A-Fa-f:.]+\]|[^~]+)~(\d{1,5})~(\d)", alias or "")
    if m is None or int(m.group(3)) not in PROTO_NAMES:
        log.warning("handle_ruri_alias: bad alias '%s' in %s", alias, uri)
        return -1
    host, port, proto = m.group(1), int(m.group(2)), PROTO_NAMES[int(m.group(3))]
    new = dataclasses.replace(uri, params=params, text="").build()
    ctx.ruri = new
    msg.set_ruri(new)
    ctx.cache.pop("ruri", None)
    ctx.dst_uri = f"sip:{host}:{port}" + ("" if proto == "udp" else f";transport={proto}")
    return 1


# ---------------------------------------------------------------- REGISTER

def received_uri(ctx: Any) -> str:
    proto = PROTO_NAMES.get(ctx.proto, "udp")
    uri = f"sip:{_src_host(ctx)}:{ctx.src_port}"
    return uri if proto == "udp" else f"{uri};transport={proto}"


def _avp_key(spec: str) -> str | None:
    m = re.fullmatch(r"\$avp\((?:s:)?([^)]+)\)", spec.strip())
    return m.group(1) if m else None


def fix_nated_register(ctx: Any) -> int:
    """Put the source address as a URI in the ``received_avp`` (REGISTER only)."""
    inst = ctx.rt.modules.get("nathelper")
    spec = str(inst.params["received_avp"]) if inst is not None else ""
    key = _avp_key(spec)
    if ctx.msg.method != "REGISTER" or key is None:
        return -1
    ctx.avps[key] = [received_uri(ctx)]
    return 1


def _avp_param(value: object) -> str | None:
    if value and _avp_key(str(value)) is None:
        return "must be an AVP, like \"$avp(RECEIVED)\""
    return None


# ---------------------------------------------------------------- NAT pinging

def _bind_core(inst: Any) -> Any:
    def bind(core: Any) -> None:
        inst.state["core"] = core
    return bind


def mod_init(inst: Any) -> None:
    inst.state.setdefault("core_bind", []).append(_bind_core(inst))


def ping_target(c: Any) -> tuple[str, int] | None:
    """(host, port) a contact's keep-alives go to: its received address, else
    its URI's; None for a contact that is not reached over UDP."""
    try:
        uri = parse_uri(c.received or c.c)
    except ProtocolError:
        return None
    if not isinstance(uri, SipURI) or (uri.transport or "udp") != "udp" \
            or uri.scheme == "sips":
        return None
    return uri.host.strip("[]"), uri.port or 5060


def options_ping(c: Any, aor: str, si: Any, params: dict[str, Any]) -> bytes:
    """The OPTIONS request pinging contact ``c`` (sent from socket ``si``)."""
    tag = os.urandom(6).hex()
    return (f"{params['sipping_method']} {c.c} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {si.hostport};branch=z9hG4bKnp{os.urandom(8).hex()}\r\n"
            f"From: <{params['sipping_from']}>;tag={tag}\r\n"
            f"To: <{c.c}>\r\n"
            f"Call-ID: {tag}-{os.getpid()}@{si.host}\r\n"
            f"CSeq: 1 {params['sipping_method']}\r\n"
            f"Max-Forwards: 70\r\n"
            f"Content-Length: 0\r\n\r\n").encode()


def _flag_set(flags: int, bit: object) -> bool:
    b = int(bit)    # type: ignore[call-overload]
    return 0 <= b < 32 and bool(flags & (1 << b))


def natping(inst: Any, now: float) -> int:
    """One round of NAT pings; how many were sent."""
    from ser.core.receive import Dest
    p = inst.params
    core = inst.state.get("core")
    ul_inst = core.cfg.modules.get("usrloc") if core is not None else None
    if ul_inst is None or ul_inst.state.get("ul") is None:
        return 0
    ul = ul_inst.state["ul"]
    nat_bflag = ul_inst.params.get("nat_bflag", -1)
    sent = 0
    for domain in ul.domains():
        for aor, contacts in ul.aors(domain).items():
            for c in contacts:
                if p["ping_nated_only"] and not _flag_set(c.cflags, nat_bflag):
                    continue
                target = ping_target(c)
                if target is None:
                    continue
                host, port = target
                si = core.socket_for("udp", host)
                if si is None:
                    continue
                if p["sipping_from"] and _flag_set(c.cflags, p["sipping_bflag"]):
                    data = options_ping(c, aor, si, p)
                else:
                    data = b"\r\n\r\n"
                if core.send(Dest("udp", host, port, si), data):
                    sent += 1
    return sent


def _timer(inst: Any, now: float) -> None:
    # declared every second; pings every natping_interval seconds
    interval = int(inst.params["natping_interval"])
    if interval <= 0 or now - inst.state.get("ping_last", 0.0) < interval:
        return
    inst.state["ping_last"] = now
    natping(inst, now)


def _nonneg(v: object) -> str | None:
    return "must be 0 or more" if isinstance(v, int) and v < 0 else None


def _sip_uri(v: object) -> str | None:
    if not v:
        return None
    try:
        parse_uri(str(v))
    except ProtocolError as e:
        return f"not a SIP URI: {e}"
    return None


exports = Module(
    name="nathelper",
    doc="NAT traversal of SIP signalling: detection, Contact fixing, aliases, NAT pinging.",
    params=(
        Param("natping_interval", int, 0, "Seconds between NAT pings of registered contacts "
              "(0: no pinging).", _nonneg),
        Param("ping_nated_only", int, 0, "Ping only contacts with usrloc's nat_bflag."),
        Param("natping_processes", int, 1, "Pinging processes (ser's timer process pings).",
              ignored=True),
        Param("sipping_from", str, "", "From URI of SIP pings (OPTIONS); empty: no SIP "
              "pings.", _sip_uri),
        Param("sipping_method", str, "OPTIONS", "Method of SIP pings."),
        Param("sipping_bflag", int, -1, "Branch flag of contacts pinged with SIP requests "
              "(the others get a CRLFCRLF keep-alive)."),
        Param("received_avp", str, "", "AVP fix_nated_register() sets to the source "
              "address (registrar's received_avp).", _avp_param),
        Param("force_socket", str, "", "Socket to send pings from (accepted).", ignored=True),
        Param("udpping_from_path", int, 0, "Ping via the Path (accepted).", ignored=True),
    ),
    functions=(
        Function("nat_uac_test", nat_uac_test, (Arg("flags", "int"),), R.ANY, _flags_fixup,
                 "Is the sender behind NAT? flags: 1 private Contact, 2 Via host is not the "
                 "source IP, 4 private Via, 8 private SDP address, 16 Via port is not the "
                 "source port, 32 private source, 64 WebSocket, 128 Contact port is not the "
                 "source port, 256 SDP address is not the source IP; true if any is."),
        Function("fix_nated_contact", fix_nated_contact, (), R.REQUEST | R.ONREPLY | R.BRANCH
                 | R.FAILURE, doc="Rewrite the Contact URI host:port to the source address."),
        Function("fix_nated_register", fix_nated_register, (), R.REQUEST,
                 doc="Store the source address (sip:ip:port) in received_avp, for save()."),
        Function("set_contact_alias", set_contact_alias, (), R.REQUEST | R.ONREPLY | R.BRANCH
                 | R.FAILURE, doc="Add ;alias=ip~port~proto of the source to the Contact URI."),
        Function("add_contact_alias", set_contact_alias, (), R.REQUEST | R.ONREPLY | R.BRANCH
                 | R.FAILURE, doc="Same as set_contact_alias()."),
        Function("handle_ruri_alias", handle_ruri_alias, (), R.REQUEST | R.BRANCH | R.FAILURE,
                 doc="Move the R-URI's alias parameter to $du."),
    ),
    timers=(Timer("nathelper", 1.0, _timer),),
    mod_init=mod_init,
)
