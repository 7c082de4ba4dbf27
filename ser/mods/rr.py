"""rr: Record-Route and loose routing (Kamailio's rr module; RFC 3261 16.4, 16.6, 16.12).

``record_route()`` puts our address (the socket the request came in on) in a
Record-Route header so the dialog's later requests come through us (two
headers, marked ``r2=on``, when the request leaves by another socket: the
second is a send-time edit, see receive.py);
``loose_route()`` processes the Route set of such a request: our own entry
is removed, the next hop goes to ``$du`` (or, for a strict router, to the
Request-URI), and a Request-URI that is ours because a strict router put our
Record-Route there is replaced by the last Route (RFC 3261 16.4).
"""

from __future__ import annotations

from typing import Any

from ser.core.module import Arg, FixedArg, FixupError, Function, Module, Param, RouteType
from ser.core.parser import ProtocolError, SipURI, parse_uri, split_list

R = RouteType


def _params(ctx: Any) -> dict[str, Any]:
    inst = ctx.rt.modules.get("rr")
    return inst.params if inst is not None else {}


def _rr_uri(ctx: Any, hostport: str, proto: str, extra: str) -> str:
    p = _params(ctx)
    uri = f"sip:{hostport}"
    if proto != "udp":
        uri += f";transport={proto}"
    uri += ";lr" if not p.get("enable_full_lr") else ";lr=on"
    if p.get("append_fromtag"):
        frm = ctx.msg.from_
        if frm is not None and frm.tag:
            uri += f";ftag={frm.tag}"
    return f"<{uri}{extra}>"


def _socket_hostport(ctx: Any) -> tuple[str, str]:
    rcv = ctx.rcv
    si = getattr(rcv, "si", None)
    if si is not None:
        return si.hostport, si.proto
    host = ctx.dst_ip if ":" not in ctx.dst_ip else f"[{ctx.dst_ip}]"
    return f"{host}:{ctx.dst_port}", "udp"


def _semi(param: str) -> str:
    return param if not param or param.startswith(";") else ";" + param


def record_route(ctx: Any, params: str = "") -> int:
    msg = ctx.msg
    if not msg.is_request:
        return -1
    extra = _semi(params) + ctx.cache.get("rr_add_params", "")
    hostport, proto = _socket_hostport(ctx)
    value = _rr_uri(ctx, hostport, proto, extra)
    msg.add_header("Record-Route", value, first=True)
    ctx.cache["rr_added"] = value
    _double_later(ctx, value)
    return 1


def _double_later(ctx: Any, value: str, old: str | None = None) -> None:
    """(Re)register the send-time edit that doubles our Record-Route
    ``value`` (receive.Core.fix_request -> _double_rr): the second header
    needs the socket the request leaves by."""
    mode = int(_params(ctx).get("enable_double_rr") or 0)
    if not mode:
        return
    fixups = ctx.cache.setdefault("send_fixups", [])
    if old is not None:
        fixups[:] = [f for f in fixups if not (f[0] == "rr" and f[1][1] == old)]
    lr = value.index(";lr")
    fixups.append(("rr", (mode, value, value[:lr] + ";r2=on" + value[lr:], value[lr:])))


def add_rr_param(ctx: Any, param: str) -> int:
    """Add ``;param`` to the Record-Route URI of record_route(), called before or after it."""
    msg = ctx.msg
    if not msg.is_request or not param.strip(";"):
        return -1
    param = _semi(param.strip())
    added = ctx.cache.get("rr_added")
    if added is None:
        ctx.cache["rr_add_params"] = ctx.cache.get("rr_add_params", "") + param
        return 1
    new = added[:-1] + param + ">" if added.endswith(">") else added + param
    if not msg.amend_added_header("Record-Route", added, new):
        return -1
    ctx.cache["rr_added"] = new
    _double_later(ctx, new, added)
    return 1


def _double_rr(data: bytes, arg: tuple, in_si: Any, out_si: Any) -> bytes:
    """Our Record-Route becomes two when the request leaves by another socket
    (transport, address or port) than it came in on, both marked ``r2=on``
    (Kamailio's enable_double_rr: 1 then, 2 always); the top one is the
    outgoing socket, so each side of the dialog reaches us on its own."""
    mode, value, value_r2, tail = arg
    if out_si is None or (mode == 1 and (in_si is None or out_si is in_si)):
        return data
    needle = f"\r\nRecord-Route: {value}\r\n".encode("utf-8", "surrogateescape")
    out = f"sip:{out_si.hostport}"
    if out_si.proto != "udp":
        out += f";transport={out_si.proto}"
    pair = (f"\r\nRecord-Route: <{out};r2=on{tail}\r\nRecord-Route: {value_r2}\r\n")
    return data.replace(needle, pair.encode("utf-8", "surrogateescape"), 1)


def record_route_preset(ctx: Any, addr: str, addr2: str = "") -> int:
    msg = ctx.msg
    if not msg.is_request:
        return -1
    if addr2:
        msg.add_header("Record-Route", _rr_uri(ctx, addr2.removeprefix("sip:"), "udp", ""),
                       first=True)
    msg.add_header("Record-Route", _rr_uri(ctx, addr.removeprefix("sip:"), "udp", ""),
                   first=True)
    return 1


def _is_me(ctx: Any, uri: Any) -> bool:
    return isinstance(uri, SipURI) and ctx.rt.is_myself(uri.host, uri.port or 5060)


def _uri_of(route: str) -> Any:
    """The URI of a Route value (or of a bare URI), None if it is not one
    (parse_uri keeps the URIs it parsed: a dialog's Route set is parsed once)."""
    v = route.strip()
    if "<" in v:
        v = v[v.index("<") + 1:v.index(">")]
    try:
        return parse_uri(v)
    except ProtocolError:
        return None


def loose_route(ctx: Any) -> int:
    """1 when the request was routed by its Route headers, -1 when it had none."""
    msg = ctx.msg
    if not msg.is_request:
        return -1
    routes = []
    for v in msg.headers("Route"):
        routes.extend(split_list(v) if "," in v else [v])
    if not routes:
        return -1
    ruri = _uri_of(ctx.ruri or msg.ruri)
    if ruri is not None and _is_me(ctx, ruri) and ruri.user is None and routes:
        # RFC 3261 16.4: a strict router sent us our own Record-Route as the
        # R-URI; the real target is the last Route
        last = routes.pop()
        target = _uri_of(last)
        if target is not None:
            ctx.ruri = str(target)
            msg.set_ruri(str(target))
        _set_routes(msg, routes)
        ctx.cache["rr_strict_in"] = True
        ctx.cache["rr_params"] = ";".join(f"{k}={v}" if v is not None else k
                                          for k, v in ruri.params.items())
        if not routes:
            return 1
    if not routes:
        return -1
    first = _uri_of(routes[0])
    removed = False
    while routes and first is not None and _is_me(ctx, first):
        ctx.cache["rr_params"] = ";".join(f"{k}={v}" if v is not None else k
                                          for k, v in first.params.items())
        routes.pop(0)
        removed = True
        first = _uri_of(routes[0]) if routes else None
    if removed:
        _set_routes(msg, routes)
    if not routes:
        return 1
    if first is None:
        return -1
    if "lr" in first.params:
        ctx.dst_uri = str(first)
    else:
        # the next hop is a strict router: it gets the R-URI as the
        # request's target and our R-URI goes to the end of the Route set
        old = ctx.ruri or msg.ruri
        rest = routes[1:] + [f"<{old}>"]
        ctx.ruri = str(first)
        msg.set_ruri(str(first))
        _set_routes(msg, rest)
    return 1


def _set_routes(msg: Any, routes: list[str]) -> None:
    msg.remove_header("Route")
    if routes:
        msg.add_header("Route", ", ".join(r.strip() for r in routes), first=True)


def is_direction(ctx: Any, direction: str) -> int:
    """downstream: the From tag equals the ftag we put in the Record-Route."""
    params = ctx.cache.get("rr_params")
    if params is None:
        return -1
    ftag = None
    for p in params.split(";"):
        if p.startswith("ftag="):
            ftag = p[5:]
    if ftag is None:
        return -1
    frm = ctx.msg.from_
    down = frm is not None and frm.tag == ftag
    return 1 if down == (direction == "downstream") else -1


def check_route_param(ctx: Any, regex: str) -> int:
    import re
    params = ctx.cache.get("rr_params")
    return 1 if params is not None and re.search(regex, params) else -1


def _dir_fixup(args: list[FixedArg]) -> list[FixedArg]:
    if args[0].is_const and args[0].const not in ("downstream", "upstream"):
        raise FixupError("direction is downstream or upstream", 0)
    return args


def _mod_init(inst: Any) -> None:
    inst.state["send_fixup"] = _double_rr


exports = Module(
    name="rr",
    doc="Record-Route and loose routing.",
    params=(
        Param("append_fromtag", int, 0, "Add the From tag (ftag=) to Record-Route URIs, "
              "for is_direction()."),
        Param("enable_full_lr", int, 0, "Write ';lr=on' instead of ';lr'."),
        Param("enable_double_rr", int, 1, "Two Record-Route headers (marked r2=on) when "
              "the request leaves by another socket (transport, address or port) than it "
              "came in on; 2: always; 0: never."),
        Param("ignore_user", int, 1, "Ignore the user part when checking a Route is ours."),
    ),
    functions=(
        Function("record_route", record_route, (Arg("params", optional=True),),
                 R.REQUEST | R.FAILURE | R.BRANCH, doc="Add a Record-Route header with our "
                 "address."),
        Function("record_route_preset", record_route_preset,
                 (Arg("addr"), Arg("addr2", optional=True)), R.REQUEST | R.FAILURE | R.BRANCH,
                 doc="Add a Record-Route header with the given address."),
        Function("loose_route", loose_route, (), R.REQUEST,
                 doc="Route the request by its Route headers (RFC 3261 16.4, 16.12)."),
        Function("is_direction", is_direction, (Arg("direction", "const"),), R.REQUEST,
                 _dir_fixup, "Is the in-dialog request going downstream (from the caller)?"),
        Function("check_route_param", check_route_param, (Arg("regex"),),
                 R.REQUEST | R.FAILURE | R.BRANCH | R.ONREPLY,
                 doc="Do the parameters of our Route match the regular expression? (After "
                 "loose_route(); false in a route that has not run it, as a reply's.)"),
        Function("add_rr_param", add_rr_param, (Arg("param", doc=";name=value"),),
                 R.REQUEST | R.FAILURE | R.BRANCH | R.ONREPLY,
                 doc="Add a parameter to the Record-Route URI of record_route() (called "
                 "before or after it; false for a reply)."),
    ),
    mod_init=_mod_init,
)
