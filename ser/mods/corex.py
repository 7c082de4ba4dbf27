"""corex: more core functions (Kamailio's corex module).

Sockets are named as in Kamailio's ``listen``: ``proto:addr:port`` (or by the
``name`` given in ``listen=... name "x"``). ``set_recv_socket`` makes the
message look as if it came in on another socket: its replies leave from it.
``set_send_socket`` chooses the socket ``send_udp`` sends from; the core's
``forward()`` does not honour it yet (it picks the first socket of the
address family). ``append_to_reply`` collects headers in
``ctx.cache["reply_headers"]``, which the core adds to the next reply it
generates (sl_send_reply, the core's error replies).
"""

from __future__ import annotations

import logging
from typing import Any

from ser.core.cfg.runtime import add_branch, parse_q
from ser.core.module import Arg, FixedArg, FixupError, Function, Module, RouteType, RPCMethod
from ser.core.parser import ProtocolError, SipURI, parse_uri
from ser.core.rpc import RpcContext

R = RouteType
log = logging.getLogger("ser.corex")


def _core(ctx: Any) -> Any:
    return ctx.rt.core


def find_socket(sockets: list[Any], spec: str) -> Any:
    """The SocketInfo named ``proto:addr:port`` (proto, port optional) or by name."""
    spec = spec.strip()
    for si in sockets:
        if si.name and si.name == spec:
            return si
    proto, host, port = "", spec, 0
    low = spec.lower()
    for p in ("udp", "tcp", "tls", "sctp", "ws", "wss"):
        if low.startswith(p + ":"):
            proto, host = p, spec[len(p) + 1:]
            break
    if host.startswith("["):
        h, _, rest = host[1:].partition("]")
        host, port = h, int(rest[1:]) if rest.startswith(":") and rest[1:].isdigit() else 0
    elif host.count(":") == 1:
        h, _, p = host.partition(":")
        if not p.isdigit():
            return None
        host, port = h, int(p)
    for si in sockets:
        if (not proto or si.proto == proto) and si.host == host and (not port or si.port == port):
            return si
    return None


def append_to_reply(ctx: Any, text: str) -> int:
    lines = [ln for ln in text.replace("\r\n", "\n").split("\n") if ln.strip()]
    if not lines or any(":" not in ln for ln in lines):
        log.error("append_to_reply: not a header: %r", text)
        return -1
    ctx.cache.setdefault("reply_headers", []).extend(lines)
    return 1


def send_udp(ctx: Any, target: str = "") -> int:
    """The received message, unchanged, to host[:port] (else $du, else the R-URI)."""
    core = _core(ctx)
    host, port = "", 5060
    if target:
        t = target.strip()
        if t.startswith("["):
            h, _, rest = t[1:].partition("]")
            host = h
            port = int(rest[1:]) if rest.startswith(":") and rest[1:].isdigit() else 5060
        else:
            h, _, p = t.rpartition(":") if t.count(":") == 1 else (t, "", "")
            host = h or t
            port = int(p) if p.isdigit() else 5060
    else:
        text = ctx.dst_uri or ctx.ruri or ctx.msg.ruri
        try:
            uri = parse_uri(text)
        except ProtocolError:
            return -1
        if not isinstance(uri, SipURI):
            return -1
        host, port = uri.host.strip("[]"), uri.port or 5060
    if core is None:
        ctx.actions.append(("send_udp", host, port))
        return 1
    from ser.core.receive import Dest, resolve_host
    ip = resolve_host(host)
    if ip is None:
        log.error("send_udp: cannot resolve %s", host)
        return -1
    si = ctx.options.get("force_send_socket")
    if si is None or si.proto != "udp":
        si = core.socket_for("udp", ip)
    return 1 if core.send(Dest("udp", ip, port, si), ctx.msg.raw) else -1


def file_read(ctx: Any, path: str, var: Any) -> int:
    try:
        with open(path, encoding="utf-8", errors="surrogateescape") as f:
            data = f.read()
    except OSError as e:
        log.error("file_read: %s: %s", path, e.strerror or e)
        return -1
    var.set(ctx, data)
    return 1


def _writable_fixup(index: int) -> Any:
    def fixup(args: list[FixedArg]) -> list[FixedArg]:
        ref = args[index].const
        if getattr(ref.decl, "set", None) is None:
            raise FixupError(f"{ref.raw} is not writable", index)
        return args
    return fixup


def _sockets(ctx: Any) -> list[Any]:
    core = _core(ctx)
    return list(core.sockets) if core is not None else []


def set_recv_socket(ctx: Any, spec: str) -> int:
    si = find_socket(_sockets(ctx), spec)
    if si is None:
        log.error("set_recv_socket: no local socket %s", spec)
        return -1
    ctx.dst_ip, ctx.dst_port, ctx._dst_addr = si.host, si.port, None
    if ctx.rcv is not None:
        ctx.rcv.si = si
        ctx.rcv.proto = si.proto
    return 1


def set_send_socket(ctx: Any, spec: str) -> int:
    si = find_socket(_sockets(ctx), spec)
    if si is None:
        log.error("set_send_socket: no local socket %s", spec)
        return -1
    ctx.options["force_send_socket"] = si
    return 1


def is_socket_name(ctx: Any, name: str) -> int:
    return 1 if any(si.name == name for si in _sockets(ctx)) else -1


def append_branch(ctx: Any, uri: str = "", q: str = "") -> int:
    target = uri or (ctx.ruri if ctx.ruri is not None else ctx.msg.ruri)
    if not target:
        return -1
    add_branch(ctx, target, "", parse_q(q))
    return 1


def list_sockets(ctx: RpcContext) -> list[dict[str, Any]]:
    return [{"PROTO": si.proto, "NAME": si.name or "", "ADDRLIST": {"ADDR": si.host},
             "PORT": si.port, "ADVERTISE": si.advertise_host or "-"}
            for si in ctx.env.sockets]


def list_aliases(ctx: RpcContext) -> list[str]:
    return sorted(ctx.rt.local_hosts) if ctx.rt is not None else []


exports = Module(
    name="corex",
    doc="More core functions: sockets, sending, reply headers, files.",
    functions=(
        Function("append_to_reply", append_to_reply, (Arg("txt"),),
                 R.REQUEST | R.BRANCH | R.FAILURE,
                 doc="Add the header(s) \"Name: value\\r\\n\" to the next reply ser "
                     "generates for this request."),
        Function("send_udp", send_udp, (Arg("hostport", optional=True),), R.REQUEST | R.FAILURE,
                 doc="Send the received message unchanged (no Via added) over UDP to "
                     "host[:port] (default port 5060), else to $du, else to the R-URI; "
                     "from the set_send_socket() socket when one is set."),
        Function("file_read", file_read, (Arg("fpath"), Arg("var", "pv")),
                 fixup=_writable_fixup(1), doc="Read a text file into a variable."),
        Function("set_recv_socket", set_recv_socket, (Arg("saddr"),),
                 doc="Handle the message as received on another local socket "
                     "(proto:addr:port): its replies leave from it."),
        Function("set_send_socket", set_send_socket, (Arg("saddr"),),
                 doc="The local socket (proto:addr:port) to send from: send_udp(), the "
                     "core forward() and tm's branches (kept for failure_route) use it."),
        Function("is_socket_name", is_socket_name, (Arg("sockname"),),
                 doc="True if a listen socket has this name."),
        Function("append_branch", append_branch,
                 (Arg("uri", optional=True), Arg("q", optional=True)), R.REQUEST | R.FAILURE,
                 doc="Add a branch for forking (recorded for tm, which does not exist yet)."),
    ),
    rpc=(
        RPCMethod("corex.list_sockets", list_sockets, "The listen sockets."),
        RPCMethod("corex.list_aliases", list_aliases, "The names matched by 'myself'."),
    ),
)
