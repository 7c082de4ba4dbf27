"""Listen sockets: bound by the master before the fork, shared by the workers.

A :class:`SocketInfo` is one bound socket with what the core needs to use it
(protocol, address, the address to advertise in Via and Record-Route). The
master binds every ``listen`` entry (``-l`` on the command line replaces the
config's list); UDP workers ``recvfrom`` on the same socket, TCP workers
``accept`` on the same listening socket.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass, field

from ser.core.cfg.globals import Listen

PROTO_IDS = {"udp": 1, "tcp": 2, "tls": 3, "sctp": 4, "ws": 5, "wss": 6}
DEFAULT_PORTS = {"udp": 5060, "tcp": 5060, "tls": 5061, "sctp": 5060, "ws": 80, "wss": 443}


class BindError(Exception):
    pass


@dataclass
class SocketInfo:
    proto: str
    host: str                 # address as bound (IPv6 without brackets)
    port: int
    sock: socket.socket | None = None
    advertise_host: str | None = None
    advertise_port: int = 0
    name: str | None = None
    family: int = socket.AF_INET
    aliases: list[str] = field(default_factory=list)

    @property
    def proto_id(self) -> int:
        return PROTO_IDS[self.proto]

    @property
    def via_host(self) -> str:
        """The host to put in Via / Record-Route (brackets for IPv6)."""
        h = self.advertise_host or self.host
        return f"[{h}]" if ":" in h and not h.startswith("[") else h

    @property
    def via_port(self) -> int:
        return self.advertise_port or self.port

    @property
    def hostport(self) -> str:
        return f"{self.via_host}:{self.via_port}"

    def __str__(self) -> str:
        return f"{self.proto}:{self.via_host}:{self.port}"


def parse_cli_listen(text: str, default_port: int = 5060) -> Listen:
    """``-l [proto:]addr[:port]`` as Kamailio's command line takes it."""
    proto = "any"
    rest = text.strip()
    head, sep, tail = rest.partition(":")
    if sep and head.lower() in PROTO_IDS:
        proto, rest = head.lower(), tail
    port = 0
    if rest.startswith("["):
        end = rest.find("]")
        host = rest[1:end]
        if rest[end + 1:end + 2] == ":":
            port = int(rest[end + 2:])
    elif rest.count(":") == 1:
        host, p = rest.split(":")
        port = int(p)
    else:
        host = rest
    return Listen(proto, host, port)


def expand(listens: tuple[Listen, ...] | list[Listen], default_port: int,
           disable_tcp: bool, enable_tls: bool) -> list[SocketInfo]:
    """One SocketInfo per (protocol, address); "any" means UDP and TCP (and TLS)."""
    out: list[SocketInfo] = []
    entries = list(listens) or [Listen("any", "0.0.0.0", 0)]
    for ls in entries:
        protos = [ls.proto]
        if ls.proto == "any":
            protos = ["udp"] + ([] if disable_tcp else ["tcp"]) + (["tls"] if enable_tls else [])
        for proto in protos:
            if proto in ("tcp", "tls") and disable_tcp:
                continue
            port = ls.port or (DEFAULT_PORTS[proto] if proto not in ("udp", "tcp")
                               else default_port)
            if proto == "tls" and ls.proto == "any":
                port = DEFAULT_PORTS["tls"] if not ls.port else ls.port
            host = ls.host.strip("[]")
            out.append(SocketInfo(proto, host, port, advertise_host=ls.advertise_host,
                                  advertise_port=ls.advertise_port, name=ls.name))
    return out


def _family(host: str) -> int:
    try:
        return socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
    except ValueError:
        return socket.AF_INET


def bind(si: SocketInfo, backlog: int = 1024) -> None:
    """Bind (and for stream protocols listen on) ``si``; BindError on failure."""
    host = si.host
    try:
        ipaddress.ip_address(host)
    except ValueError:
        try:
            host = socket.gethostbyname(host)
        except OSError as e:
            raise BindError(f"cannot resolve listen address {si.host}: {e}") from None
        si.aliases.append(si.host)
        si.host = host
    si.family = _family(host)
    kind = socket.SOCK_DGRAM if si.proto == "udp" else socket.SOCK_STREAM
    if si.proto == "sctp":
        raise BindError(sctp_unavailable(si))
    s = socket.socket(si.family, kind)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if si.family == socket.AF_INET6:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        if kind == socket.SOCK_DGRAM:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
        s.bind((host, si.port))
        if kind == socket.SOCK_STREAM:
            s.listen(backlog)
            s.setblocking(False)
    except OSError as e:
        s.close()
        raise BindError(f"cannot bind {si.proto}:{si.host}:{si.port}: {e.strerror}") from None
    if si.port == 0:
        si.port = s.getsockname()[1]
    si.sock = s


def sctp_available() -> str | None:
    """None when this kernel opens SCTP sockets, else why not."""
    try:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_SCTP)
    except OSError as e:
        return e.strerror or str(e)
    s.close()
    return None


def sctp_unavailable(si: SocketInfo) -> str:
    """The start-up error of a ``listen=sctp:`` entry."""
    why = sctp_available()
    if why is not None:
        return (f"listen={si}: SCTP is not supported by this kernel (socket(AF_INET, "
                f"SOCK_STREAM, IPPROTO_SCTP) failed: {why}); load the sctp kernel module "
                f"or remove the sctp listen entry")
    return (f"listen={si}: the kernel has SCTP but ser's SCTP transport (pysctp) is not "
            f"installed; remove the sctp listen entry")


def local_addresses() -> set[str]:
    """Addresses of this host, for 'myself' when listening on a wildcard."""
    out = {"127.0.0.1", "::1", "localhost"}
    try:
        name = socket.gethostname()
        out.add(name.lower())
        for info in socket.getaddrinfo(name, None):
            out.add(str(info[4][0]))
    except OSError:
        pass
    return out
