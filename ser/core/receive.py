"""A worker's way with one message: parse, route, answer; and the sending side.

Theory of operation. A receiver process (UDP or TCP) owns one :class:`Core`.
``receive()`` parses the bytes; a protocol error becomes a 400-class reply
when one can be routed back (first line and top Via readable) and is counted
in ``err_requests`` either way; a reply is never answered. A request runs
``request_route`` over a fresh :class:`Context`; a reply runs
``reply_route`` (if any) and is relayed statelessly by its Via when it is
not for us. Every send goes through :meth:`Core.send`, which knows the
socket or connection a message must leave by.

Byte hooks: a module may list ``fn(data) -> bytes | None`` in its
``state["core_in"]`` (applied to every received message before parsing) and
``fn(data, dest) -> bytes | None`` in ``state["core_out"]`` (applied to every
message about to leave, in :meth:`Core.send` and the UDP reply path); None
drops the message. topoh masks and unmasks through them.

Send-time edits: an edit that depends on the socket a request leaves by
(rr's double Record-Route) is listed by the script function as
``(module, arg)`` in ``ctx.cache["send_fixups"]``; once the outgoing socket
is known, :meth:`Core.fix_request` calls that module's
``state["send_fixup"](data, arg, in_socket, out_socket)``. The pairs are plain
data, so tm keeps them with a transaction for the branches it adds later.
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import socket
from collections.abc import Iterable
from typing import Any

from ser.core import testhooks
from ser.core.cfg.runtime import Context, Runtime
from ser.core.log import RateLimited, log
from ser.core.net import SocketInfo
from ser.core.parser import ProtocolError, SipMessage, SipURI, build_reply, parse_message, parse_uri
from ser.core.parser.reply import build_error_reply

_bad_log = RateLimited(interval=10.0, burst=5)


XHTTP_ROUTE = "xhttp:request"


class Dest:
    """Where a message goes: protocol, address, and the socket to send from."""

    __slots__ = ("proto", "host", "port", "si", "conn")

    def __init__(self, proto: str, host: str, port: int, si: SocketInfo | None = None,
                 conn: Any = None) -> None:
        self.proto = proto
        self.host = host
        self.port = port
        self.si = si
        self.conn = conn

    def __repr__(self) -> str:
        return f"{self.proto}:{self.host}:{self.port}"


class Core:
    """Per-process sending and receiving, shared by all route executions."""

    def __init__(self, cfg: Any, rt: Runtime, sockets: list[SocketInfo], stats: Any,
                 env: Any = None) -> None:
        self.cfg = cfg
        self.env = env            # the process's roles.Env (what RPC handlers see), if any
        self.routes = cfg.routes
        self.rt = rt
        self.sockets = sockets
        self.stats = stats
        values = cfg.settings.values
        hdr = str(values.get("server_header", "Server: ser"))
        self.server = hdr.partition(":")[2].strip() if values.get("server_signature", True) else None
        self.has_reply_route = cfg.routes is not None and cfg.routes.get("reply") is not None
        self.has_onsend = cfg.routes is not None and cfg.routes.get("onsend") is not None
        # fn(dest, data) -> bool: the TCP worker's own sender, else the hand-off
        # to the process owning the connection (ser.core.tcp.StreamSender)
        self.tcp_send: Any = getattr(rt, "stream_send", None)
        # fn(conn, port): add a port alias to a connection this process owns
        # (set by the TCP worker; force_tcp_alias)
        self.tcp_alias: Any = None
        rt.core = self
        # tm's per-process engine (ser.mods.tm), when loaded: replies are
        # matched to their transaction before the stateless relay
        tm = cfg.modules.get("tm") if isinstance(getattr(cfg, "modules", None), dict) else None
        self.tm: Any = tm.state.get("engine") if tm is not None else None
        if self.tm is not None:
            self.tm.bind(self)
        mods = cfg.modules.values() if isinstance(getattr(cfg, "modules", None), dict) else ()
        self.in_hooks: list[Any] = [fn for i in mods for fn in i.state.get("core_in", ())]
        self.out_hooks: list[Any] = [fn for i in mods for fn in i.state.get("core_out", ())]
        for inst in mods:       # modules that send by themselves (nathelper's pings)
            for bind in inst.state.get("core_bind", ()):
                bind(self)

    # -- receiving ----------------------------------------------------------------
    def receive(self, data: bytes, si: SocketInfo, src: tuple[str, int],
                conn: Any = None) -> None:
        for hook in self.in_hooks:
            data = hook(data)
            if data is None:
                self.stats.inc("core:drop_requests")
                return
        try:
            msg = parse_message(data)
        except ProtocolError as e:
            self._bad_message(data, e, si, src, conn)
            return
        if msg.is_request and msg.http_version is not None:
            self._http(msg, si, src, conn)
        elif msg.is_request:
            self.stats.inc("core:rcv_requests")
            self._request(msg, si, src, conn)
        else:
            self.stats.inc("core:rcv_replies")
            self._reply(msg, si, src, conn)

    def _context(self, msg: SipMessage, si: SocketInfo, src: tuple[str, int],
                 conn: Any) -> Context:
        ctx = Context(msg, self.rt, src[0], src[1], si.host, si.port, si.proto_id)
        ctx.rcv = Dest(si.proto, src[0], src[1], si, conn)
        return ctx

    def _request(self, msg: SipMessage, si: SocketInfo, src: tuple[str, int], conn: Any) -> None:
        ctx = self._context(msg, si, src, conn)
        if testhooks.ENABLED and testhooks.handle(self, ctx):
            return
        try:
            self.routes.request(ctx)
        except ProtocolError as e:
            # a header the script read turned out malformed
            self.stats.inc("core:err_requests")
            _bad_log(logging.WARNING, "bad %s from %s:%s: %s", msg.method, src[0], src[1],
                     e.reason)
            if e.status:
                self.reply(ctx, e.status, _reason(e))
        except Exception:
            self.stats.inc("core:drop_requests")
            log.exception("request_route failed for %s from %s:%s", msg.method, src[0], src[1])
            if msg.method != "ACK":
                self.reply(ctx, 500, "Server Internal Error")

    def _http(self, msg: SipMessage, si: SocketInfo, src: tuple[str, int], conn: Any) -> None:
        """An HTTP request on a SIP stream port goes to event_route[xhttp:request]
        (module xhttp), as in Kamailio; over UDP or without that route it is dropped."""
        if conn is None or self.routes is None or self.routes.get("event", XHTTP_ROUTE) is None:
            self.stats.inc("core:drop_requests")
            return
        ctx = self._context(msg, si, src, conn)
        try:
            self.routes.run("event", XHTTP_ROUTE, ctx)
        except Exception:
            log.exception("event_route[%s] failed for %s %s from %s:%s", XHTTP_ROUTE,
                          msg.method, msg.ruri, src[0], src[1])
        if ctx.options.get("set_reply_close") and hasattr(conn, "close_after"):
            conn.close_after = True

    def _reply(self, msg: SipMessage, si: SocketInfo, src: tuple[str, int], conn: Any) -> None:
        ctx = self._context(msg, si, src, conn)
        try:
            if self.has_reply_route:
                if self.routes.run("reply", "", ctx) == 0 and ctx.dropped:
                    return
            if self.tm is not None and self.tm.on_reply(ctx):
                return
            self.relay_reply(ctx)
        except ProtocolError as e:
            _bad_log(logging.WARNING, "bad reply from %s:%s: %s", src[0], src[1], e.reason)
        except Exception:
            log.exception("reply handling failed for a reply from %s:%s", src[0], src[1])

    def _bad_message(self, data: bytes, e: ProtocolError, si: SocketInfo, src: tuple[str, int],
                     conn: Any) -> None:
        self.stats.inc("core:err_requests")
        _bad_log(logging.WARNING, "malformed message from %s:%s:%s (%d bytes): %s",
                 si.proto, src[0], src[1], len(data), e.reason)
        if e.status is None:
            return
        raw = build_error_reply(data, e.status, _reason(e), server=self.server)
        if raw is None:
            return
        dest = Dest(si.proto, src[0], src[1], si, conn)
        self.send(dest, raw)
        self.stats.inc(f"sl:{e.status // 100}xx_replies")

    # -- replying -----------------------------------------------------------------
    def reply(self, ctx: Context, code: int, reason: str, headers: Iterable[str] = (),
              body: bytes = b"") -> bool:
        """A stateless reply to the request of ``ctx`` (Kamailio's sl_send_reply)."""
        msg = ctx.msg
        if not msg.is_request or msg.method == "ACK":
            return False
        rcv = ctx.rcv
        extra = ctx.cache.get("reply_headers")
        if extra:
            headers = [*headers, *extra]
        try:
            raw = build_reply(msg, code, reason, headers=headers, body=body,
                              server=self.server, received=rcv.host, rport=rcv.port)
        except ProtocolError as e:
            # nothing to route a reply by (no or broken Via): the request is dropped
            _bad_log(logging.WARNING, "cannot answer %s from %s:%s: %s", msg.method,
                     rcv.host, rcv.port, e.reason)
            self.stats.inc("sl:failures")
            return False
        if rcv.proto == "udp":
            # RFC 3261 18.2.2 / RFC 3581: the source address, and the source
            # port when rport was asked for, else the Via port
            via = msg.via
            port = rcv.port
            if via is not None and via.rport is None and not ctx.options.get("force_rport"):
                port = via.port or 5060
            for hook in self.out_hooks:
                raw = hook(raw, rcv)
                if raw is None:
                    return False
            try:
                rcv.si.sock.sendto(raw, (rcv.host, port))
            except OSError as e:
                _bad_log(logging.ERROR, "reply to %s:%s failed: %s", rcv.host, port,
                         e.strerror or e)
                self.stats.inc("sl:failures")
                return False
        elif not self.send(rcv, raw):
            self.stats.inc("sl:failures")
            return False
        self.stats.inc(_SL_STATS[code // 100])
        return True

    # -- sending ------------------------------------------------------------------
    def send(self, dest: Dest, data: bytes) -> bool:
        for hook in self.out_hooks:
            data = hook(data, dest)
            if data is None:
                return False
        try:
            if dest.proto == "udp":
                si = dest.si or self.socket_for("udp", dest.host)
                if si is None or si.sock is None:
                    log.error("no UDP socket to send to %s", dest)
                    return False
                si.sock.sendto(data, (dest.host, dest.port))
                return True
            if self.tcp_send is not None:
                return bool(self.tcp_send(dest, data))
            log.error("no %s transport in this process to send to %s", dest.proto, dest)
            return False
        except OSError as e:
            _bad_log(logging.ERROR, "send to %s failed: %s", dest, e.strerror or e)
            return False

    def onsend(self, ctx: Context, proto: str, host: str, port: int, si: SocketInfo | None,
               data: bytes) -> bool:
        """Run onsend_route for a request about to leave (``$snd(...)`` reads
        where to); False when the script dropped it."""
        if not self.has_onsend:
            return True
        saved = ctx.route_type, ctx.dropped, ctx.cache.get("snd")
        ctx.cache["snd"] = (proto, host, port, si, data)
        ctx.dropped = False
        try:
            self.routes.run("onsend", "", ctx)
            return not ctx.dropped
        except Exception:
            log.exception("onsend_route failed for %s to %s:%s:%s", ctx.msg.method, proto,
                          host, port)
            return True
        finally:
            ctx.route_type, ctx.dropped, ctx.cache["snd"] = saved

    def socket_for(self, proto: str, host: str) -> SocketInfo | None:
        fam = socket.AF_INET6 if ":" in host else socket.AF_INET
        first = None
        for si in self.sockets:
            if si.proto == proto:
                if si.family == fam:
                    return si
                first = first or si
        return first

    # -- stateless forwarding -------------------------------------------------------
    def forward(self, ctx: Context, host: str = "", port: int = 0) -> bool:
        """Forward the request statelessly (core ``forward()``): to host:port, else
        the destination URI ($du), else the Request-URI."""
        msg = ctx.msg
        if not msg.is_request:
            return self.relay_reply(ctx)
        proto = "udp"
        if not host:
            target = ctx.dst_uri or ctx.ruri or msg.ruri
            try:
                parsed = _sip_target(target)
            except ProtocolError:
                log.error("forward: bad destination URI %s", target)
                return False
            if isinstance(parsed, str):
                log.error("forward: cannot route to a %s: URI", parsed)
                return False
            sips, host, uport, transport = parsed
            port = port or uport or (5061 if sips else 5060)
            proto = transport or ("tls" if sips else "udp")
        port = port or 5060
        ip = resolve_host(host.strip("[]"))
        if ip is None:
            log.error("forward: cannot resolve %s", host)
            return False
        forced = ctx.options.get("force_send_socket")     # corex set_send_socket()
        if forced is not None and forced.proto == proto:
            si = forced
        else:
            si = self.socket_for(proto, ip) if proto == "udp" else \
                self.socket_for(proto, ip) or self.socket_for("udp", ip)
        if si is None:
            log.error("forward: no %s socket to reach %s", proto, ip)
            return False
        if ctx.ruri and ctx.ruri != msg.ruri:
            msg.set_ruri(ctx.ruri)
        self._via_edits(ctx, si)
        raw = self.fix_request(ctx.cache.get("send_fixups", ()), msg.serialize(),
                               ctx.rcv.si if ctx.rcv is not None else None, si)
        if not self.onsend(ctx, proto, ip, port, si, raw):
            return False
        ok = self.send(Dest(proto, ip, port, si if si.proto == proto else None), raw)
        if ok:
            self.stats.inc("core:fwd_requests")
        return ok

    def fix_request(self, fixups: Iterable[Any], data: bytes, in_si: SocketInfo | None,
                    out_si: SocketInfo) -> bytes:
        """Apply the send-time edits of a request leaving by ``out_si``."""
        for mod, arg in fixups:
            inst = self.rt.modules.get(mod)
            fn = inst.state.get("send_fixup") if inst is not None else None
            if fn is not None:
                data = fn(data, arg, in_si, out_si)
        return data

    def _via_edits(self, ctx: Context, si: SocketInfo) -> None:
        """received/rport on the previous hop's Via, and our own Via with a
        branch that is the same for retransmissions."""
        msg = ctx.msg
        top = msg.via
        self.fix_received(ctx)
        key = "\0".join((top.text if top else "", msg.ruri, ctx.ruri or "",
                          msg.header("call-id") or "", msg.header("cseq") or ""))
        branch = "z9hG4bKsl" + hashlib.md5(key.encode("utf-8", "surrogateescape")).hexdigest()[:16]
        rport = ";rport" if ctx.options.get("add_local_rport") else ""
        msg.add_via(f"SIP/2.0/{si.proto.upper()} {si.hostport};branch={branch}{rport}")

    def fix_received(self, ctx: Context) -> None:
        """received/rport on the previous hop's Via (RFC 3261 18.2.1, RFC 3581),
        once per message."""
        if ctx.cache.get("rcv_fixed"):
            return
        ctx.cache["rcv_fixed"] = True
        msg = ctx.msg
        top = msg.via
        if top is not None:
            text = top.text
            new = text
            src = ctx.src_ip
            if top.rport is not None and not top.rport or ctx.options.get("force_rport"):
                new = _with_param(new, "rport", str(ctx.src_port))
                new = _with_param(new, "received", src)
            elif top.host.strip("[]") != src:
                new = _with_param(new, "received", src)
            if new != text:
                msg.remove_top_via()
                msg.add_via(new)

    def resolve_target(self, target: str) -> tuple[str, str, int, SocketInfo] | None:
        """(proto, ip, port, socket to send from) of a SIP URI, or None."""
        try:
            parsed = _sip_target(target)
        except ProtocolError:
            return None
        if isinstance(parsed, str):
            return None
        sips, host, uport, transport = parsed
        proto = transport or ("tls" if sips else "udp")
        port = uport or (5061 if proto == "tls" else 5060)
        ip = resolve_host(host.strip("[]"))
        if ip is None:
            return None
        si = self.socket_for(proto, ip)
        if si is None:
            return None
        return proto, ip, port, si

    def relay_reply(self, ctx: Context) -> bool:
        """Send a reply on by its second Via, if the top Via is ours."""
        msg = ctx.msg
        vias = msg.vias
        if len(vias) < 2 or not self.rt.is_myself(vias[0].host, vias[0].port or 5060):
            self.stats.inc("core:drop_replies")
            return False
        nxt = vias[1]
        host = nxt.received or nxt.host.strip("[]")
        rport = nxt.rport
        port = int(rport) if rport else (nxt.port or 5060)
        msg.remove_top_via()
        proto = nxt.transport.lower()
        dest = Dest(proto if proto in ("udp", "tcp", "tls") else "udp", host, port)
        ok = self.send(dest, msg.serialize())
        if ok:
            self.stats.inc("core:fwd_replies")
        return ok


_SL_STATS = [f"sl:{i}xx_replies" for i in range(7)]
_PHRASES = {400: "Bad Request", 413: "Request Entity Too Large", 414: "Request-URI Too Long",
            505: "Version Not Supported", 513: "Message Too Large"}


def _with_param(via: str, name: str, value: str) -> str:
    """A Via value with ``;name=value`` set (replacing a flag or an old value)."""
    parts = via.split(";")
    for i, p in enumerate(parts[1:], 1):
        if p.strip().split("=", 1)[0].strip().lower() == name:
            parts[i] = f"{name}={value}"
            return ";".join(parts)
    return f"{via};{name}={value}"


_LITERALS_MAX = 512     # bound of the IP literals remembered (cleared when full)
_literals: set[str] = set()


def _sip_target(target: str) -> tuple[bool, str, int | None, str | None] | str:
    """(sips?, host as written, port or None, lowercased transport or None) of
    a SIP URI, or the scheme of another kind of URI; raises ProtocolError for
    a bad one (parse_uri keeps the parsed next hops)."""
    uri = parse_uri(target)
    if isinstance(uri, SipURI):
        return uri.scheme == "sips", uri.host, uri.port, uri.transport
    return uri.scheme


def resolve_host(host: str) -> str | None:
    """An IP literal as it is, else the first address the name resolves to
    (names are looked up every time; only literals are remembered)."""
    if host in _literals:
        return host
    try:
        ipaddress.ip_address(host)
        if len(_literals) >= _LITERALS_MAX:
            _literals.clear()
        _literals.add(host)
        return host
    except ValueError:
        pass
    try:
        return socket.getaddrinfo(host, None, type=socket.SOCK_DGRAM)[0][4][0]
    except (OSError, IndexError):
        return None


def _reason(e: ProtocolError) -> str:
    """The reason phrase of a protocol error's reply, with what was wrong."""
    phrase = _PHRASES.get(e.status or 400, "Bad Request")
    if e.reason and e.reason != phrase:
        return f"{phrase} ({e.reason})"
    return phrase
