"""What a compiled route runs over: the per-process :class:`Runtime` and the
per-message :class:`Context`.

``Runtime`` is created once per process after the fork (it holds ``$var``
values, the loaded module instances and the core settings). A ``Context`` is
created for every message a worker handles and passed to the compiled route
callables and to every script function (``call(ctx, *args)``).
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Any, NamedTuple

PROTO_UDP, PROTO_TCP, PROTO_TLS, PROTO_SCTP, PROTO_WS, PROTO_WSS = 1, 2, 3, 4, 5, 6


class Branch(NamedTuple):
    """One more target of a request (Kamailio's branch): tm forks to each.
    ``ctx.cache["branches"]`` holds them until t_relay takes them."""
    uri: str
    dst_uri: str = ""
    q: float = 1.0
    path: str = ""
    flags: int = 0


def parse_q(q: Any) -> float:
    """A q-value as a script or a Contact gives it ("" or None: 1.0)."""
    try:
        return float(q) if q not in ("", None) else 1.0
    except (TypeError, ValueError):
        return 1.0


def add_branch(ctx: Any, uri: str, dst_uri: str = "", q: float = 1.0, path: str = "",
               flags: int = 0) -> None:
    ctx.cache.setdefault("branches", []).append(Branch(uri, dst_uri or "", q, path, flags))


class ScriptExit(Exception):
    """Raised by ``exit``, ``drop``, ``return 0`` and functions returning 0."""


EXIT = ScriptExit()


class Runtime:
    """Per-process script state."""

    def __init__(self, settings: Any = None, modules: dict[str, Any] | None = None,
                 rank: int = 0) -> None:
        self.settings = settings
        self.modules: dict[str, Any] = modules or {}
        self.vars: dict[str, Any] = {}
        self.shv: dict[str, Any] = {}
        self.rank = rank
        self.core: Any = None              # receive.Core of a worker process
        self.local_hosts: set[str] = set()     # lower-case names and addresses of 'myself'
        self.local_ports: set[int] = set()
        if settings is not None:
            self._init_myself(settings)

    def _init_myself(self, settings: Any) -> None:
        values = getattr(settings, "values", {})
        for listen in values.get("listen", ()):
            self.local_hosts.add(listen.host.lower())
            if listen.advertise_host:
                self.local_hosts.add(listen.advertise_host.lower())
            self.local_ports.add(listen.port or values.get("port", 5060))
        for alias in values.get("alias", ()):
            host, _, port = alias.rpartition(":") if alias.count(":") == 1 else (alias, "", "")
            self.local_hosts.add((host or alias).lower())
            if port.isdigit():
                self.local_ports.add(int(port))
        if not self.local_ports:
            self.local_ports.add(values.get("port", 5060))

    def is_myself(self, host: str, port: int | None = None) -> bool:
        h = host.lower().strip("[]")
        if h not in self.local_hosts:
            return False
        return port is None or not self.local_ports or port in self.local_ports


class Context:
    """One message on its way through the script."""

    __slots__ = ("msg", "rt", "src_ip", "src_port", "dst_ip", "dst_port", "proto", "af",
                 "flags", "bflags", "retcode", "avps", "route_type", "ruri", "dst_uri",
                 "actions", "options", "dropped", "cache", "_src_addr", "_dst_addr", "_src4",
                 "rcv")

    def __init__(self, msg: Any, rt: Runtime, src_ip: str = "127.0.0.1", src_port: int = 5060,
                 dst_ip: str = "127.0.0.1", dst_port: int = 5060, proto: int = PROTO_UDP,
                 route_type: int = 1) -> None:
        self.msg = msg
        self.rt = rt
        self.src_ip = src_ip
        self.src_port = src_port
        self.dst_ip = dst_ip
        self.dst_port = dst_port
        self.proto = proto
        self.af = 6 if ":" in src_ip else 4
        self.flags = 0
        self.bflags = 0
        self.retcode = 1
        self.avps: dict[str, list[Any]] = {}
        self.route_type = route_type
        self.ruri: str | None = None       # set when the script changes the R-URI
        self.dst_uri: str | None = None
        self.actions: list[tuple[Any, ...]] = []   # what stub functions were asked to do
        self.options: dict[str, Any] = {}
        self.dropped = False
        self.cache: dict[str, Any] = {}
        self._src_addr: Any = None
        self._dst_addr: Any = None
        self._src4 = -1
        self.rcv: Any = None               # receive.Dest: where the message came from

    def src4(self) -> int:
        """The IPv4 source address as an int; 1 << 32 (matches no IPv4 mask) for IPv6."""
        v = self._src4
        if v < 0:
            try:
                v = int.from_bytes(socket.inet_aton(self.src_ip), "big")
            except OSError:
                v = 1 << 32
            self._src4 = v
        return v

    def src_addr(self) -> Any:
        a = self._src_addr
        if a is None:
            a = self._src_addr = ipaddress.ip_address(self.src_ip)
        return a

    def dst_addr(self) -> Any:
        a = self._dst_addr
        if a is None:
            a = self._dst_addr = ipaddress.ip_address(self.dst_ip)
        return a
