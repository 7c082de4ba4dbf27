"""The global (core) parameters of the routing script, each declared once.

A :class:`GlobalDecl` names the type, default and documentation of one
parameter; ``GLOBALS`` is the registry the checker, the daemon and the
generated ``ser.cfg(5)`` page all read. ``IGNORED`` lists Kamailio parameters
that ser accepts but that have no meaning for it (allocator and memory-debug
settings); using one yields a single start-up warning listing them all.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from ser.core.cfg import ast
from ser.core.cfg.errors import CfgError, did_you_mean

_BOOLS = {"yes": True, "on": True, "true": True, "no": False, "off": False, "false": False}
PROTOS = ("udp", "tcp", "tls", "sctp", "ws", "wss", "any")


@dataclass(frozen=True)
class Listen:
    proto: str           # "udp", "tcp", "tls", "sctp", "ws", "wss" or "any"
    host: str            # address, host name or interface; IPv6 without brackets
    port: int            # 0: the default port of the protocol
    advertise_host: str | None = None
    advertise_port: int = 0
    name: str | None = None


@dataclass(frozen=True)
class GlobalDecl:
    name: str
    type: str            # "int" | "bool" | "str" | "listen" | "alias"
    default: object
    doc: str
    multi: bool = False  # may be set several times, values accumulate (listen, alias)
    choices: tuple[str, ...] = ()


def _d(name: str, type_: str, default: object, doc: str, **kw: object) -> GlobalDecl:
    return GlobalDecl(name, type_, default, doc, **kw)  # type: ignore[arg-type]


FACILITIES = tuple(f"LOG_{x}" for x in (
    "AUTH", "AUTHPRIV", "CRON", "DAEMON", "FTP", "KERN", "LPR", "MAIL", "NEWS", "SYSLOG",
    "USER", "UUCP", "LOCAL0", "LOCAL1", "LOCAL2", "LOCAL3", "LOCAL4", "LOCAL5", "LOCAL6",
    "LOCAL7"))

GLOBALS: dict[str, GlobalDecl] = {d.name: d for d in (
    _d("debug", "int", 0, "Log level: -5 (alert) .. 3 (debug); messages above it are not logged."),
    _d("log_stderror", "bool", False, "Log to standard error instead of syslog."),
    _d("log_facility", "str", "LOG_DAEMON", "Syslog facility.", choices=FACILITIES),
    _d("log_name", "str", "ser", "Program name in syslog lines."),
    _d("log_prefix", "str", "", "Prefix of every log line written while a message is "
       "processed; may hold pseudo-variables."),
    _d("log_color", "bool", False, "Colour log lines written to standard error."),
    _d("children", "int", 8, "Worker processes per UDP socket."),
    _d("tcp_children", "int", 0, "TCP/TLS worker processes (0: as many as children)."),
    _d("listen", "listen", (), "Socket to listen on: [proto:]addr[:port] "
       "[advertise addr[:port]] [name \"n\"]; may be repeated.", multi=True),
    _d("alias", "alias", (), "Another name of this server, matched by 'myself'; "
       "may be repeated.", multi=True),
    _d("port", "int", 5060, "Default port of listen entries without one."),
    _d("auto_aliases", "bool", True, "Add the names of listen addresses to the aliases."),
    _d("dns", "bool", False, "Add a received= parameter when the Via host is a name "
       "that does not resolve to the source address."),
    _d("rev_dns", "bool", False, "Like dns, with a reverse lookup."),
    _d("use_dns_cache", "bool", True, "Cache DNS answers."),
    _d("use_dns_failover", "bool", False, "Try the next DNS target when one fails."),
    _d("dns_try_ipv6", "bool", True, "Look up AAAA records too."),
    _d("enable_tls", "bool", False, "Enable TLS transport (needs the tls module)."),
    _d("disable_tcp", "bool", False, "Disable TCP (and TLS) transport."),
    _d("enable_sctp", "bool", False, "SCTP (not available in ser): yes/no, or 0 off, "
       "1 on, 2 on if available."),
    _d("disable_sctp", "bool", True, "Disable SCTP transport."),
    _d("tcp_connection_lifetime", "int", 120, "Idle TCP connection lifetime, seconds."),
    _d("tcp_max_connections", "int", 2048, "Maximum open stream connections "
       "(TCP and TLS, accepted and opened), counted over all TCP workers together."),
    _d("tcp_connect_timeout", "int", 10, "TCP connect timeout, seconds."),
    _d("tcp_send_timeout", "int", 10, "TCP send timeout, seconds."),
    _d("tcp_msg_read_timeout", "int", 20, "Seconds a TCP connection may take to send one "
       "whole message once it started; then it is closed."),
    _d("tcp_max_connections_per_ip", "int", 256, "Open stream connections (TCP and TLS) "
       "accepted from one source address, counted over all TCP workers together (ser only)."),
    _d("tcp_max_message_size", "int", 65535, "Largest SIP message accepted on a stream; a "
       "larger one closes the connection (ser only)."),
    _d("tcp_accept_aliases", "bool", False, "Honour the alias Via parameter."),
    _d("tcp_accept_no_cl", "bool", False, "Accept stream messages without Content-Length "
       "(HTTP requests for xhttp)."),
    _d("tcp_rd_buf_size", "int", 65536, "Bytes read from a TCP connection at once."),
    _d("tcp_async", "bool", True, "Write TCP data asynchronously."),
    _d("tcp_keepalive", "bool", True, "Enable TCP keepalive."),
    _d("tls_max_connections", "int", 2048, "Maximum open TLS connections, counted "
       "over all TCP workers together."),
    _d("server_header", "str", "Server: ser", "Server header added to local replies."),
    _d("user_agent_header", "str", "User-Agent: ser", "User-Agent header of local requests."),
    _d("server_signature", "bool", True, "Add the Server header to local replies."),
    _d("sip_warning", "bool", False, "Add a Warning header to local replies."),
    _d("mhomed", "bool", False, "Pick the outgoing socket by the route to the destination."),
    _d("shm_mem", "int", 64, "Shared memory size, megabytes (-m)."),
    _d("shm_mem_size", "int", 64, "Same as shm_mem."),
    _d("fork", "bool", True, "Fork worker processes (no: one process, debugging only)."),
    _d("max_while_loops", "int", 100, "Iterations after which a while loop is stopped."),
    _d("maxbuffer", "int", 262144, "Maximum socket receive buffer, bytes."),
    _d("user", "str", "", "Drop privileges to this user."),
    _d("uid", "str", "", "Same as user."),
    _d("group", "str", "", "Drop privileges to this group."),
    _d("gid", "str", "", "Same as group."),
    _d("chroot", "str", "", "chroot() to this directory."),
    _d("workdir", "str", "", "Working directory."),
    _d("wdir", "str", "", "Same as workdir."),
    _d("loadpath", "str", "", "Accepted for Kamailio compatibility; modules are Python packages."),
    _d("mpath", "str", "", "Same as loadpath."),
    _d("reply_to_via", "bool", False, "Send replies to the Via address, not the source."),
    _d("phone2tel", "bool", True, "Treat sip: URIs with user=phone as tel: URIs."),
    _d("onsend_route_reply", "bool", False, "Run onsend_route for replies too."),
    _d("async_workers", "int", 0, "Asynchronous task workers."),
    _d("corelog", "int", -1, "Log level of core error messages."),
    _d("latency_log", "int", -1, "Log level of slow-operation messages."),
    _d("latency_limit_action", "int", 0, "Microseconds after which an action is logged."),
    _d("latency_limit_db", "int", 0, "Microseconds after which a DB query is logged."),
    _d("pv_buffer_size", "int", 8192, "Size of a pseudo-variable print buffer."),
    _d("pv_buffer_slots", "int", 10, "Number of pseudo-variable print buffers."),
    _d("stun_allow_stun", "bool", False, "Answer STUN requests on SIP ports."),
    _d("dns_cache_init", "bool", True, "Create the DNS cache at start."),
    _d("dst_blocklist_init", "bool", True, "Create the destination blocklist at start."),
    _d("use_dst_blocklist", "bool", False, "Avoid destinations that failed recently."),
    _d("tos", "int", 0, "IP TOS of sent packets."),
    _d("statistics", "str", "", "Accepted for compatibility."),
)}

IGNORED = frozenset({
    "memdbg", "mem_dbg", "memlog", "mem_log", "mem_join", "mem_safety", "mem_summary",
    "mem_status_mode", "shm_force_alloc", "mlock_pages", "real_time", "rt_prio",
    "rt_policy", "rt_timer1_prio", "rt_timer1_policy", "rt_timer2_prio", "rt_timer2_policy",
    "pkg_mem", "shm_mem_pool", "sip_parser_log", "sip_parser_mem", "malloc",
})


def _to_int(p: ast.GlobalParam) -> int:
    if isinstance(p.value, int) and not isinstance(p.value, bool):
        return p.value
    if isinstance(p.value, str) and re.fullmatch(r"-?\d+", p.value.strip()):
        return int(p.value)
    raise CfgError.at(p.value_pos, f"'{p.name}' needs a number, found '{p.text}'")


def _to_bool(p: ast.GlobalParam) -> bool:
    if isinstance(p.value, int):
        return bool(p.value)
    if isinstance(p.value, str) and p.value.lower() in _BOOLS:
        return _BOOLS[p.value.lower()]
    raise CfgError.at(p.value_pos, f"'{p.name}' needs yes/no/on/off/true/false or a number, "
                      f"found '{p.text}'")


def _to_str(p: ast.GlobalParam) -> str:
    return str(p.value)


_HOSTPORT = re.compile(r"(\[[0-9a-fA-F:.]+\]|[^\s:\[\]]+)(?::(\d+))?")


def _host(text: str) -> str:
    return text[1:-1] if text.startswith("[") else text


def parse_listen(p: ast.GlobalParam) -> Listen:
    text = p.text.strip()
    proto = "any"
    m = re.match(r"([A-Za-z]+):(?!:)", text)
    if m and m.group(1).lower() in PROTOS:
        proto = m.group(1).lower()
        text = text[m.end():]
    words = text.split()
    if not words:
        raise CfgError.at(p.value_pos, "listen needs an address")
    hp = _HOSTPORT.fullmatch(words[0])
    if not hp:
        raise CfgError.at(p.value_pos, f"bad listen address '{words[0]}'",
                          "expected [proto:]addr[:port]")
    listen = Listen(proto, _host(hp.group(1)), int(hp.group(2) or 0))
    rest = words[1:]
    while rest:
        key = rest.pop(0).lower()
        if key == "advertise" and rest:
            ap = _HOSTPORT.fullmatch(rest.pop(0))
            if not ap:
                raise CfgError.at(p.value_pos, "bad advertise address in listen")
            listen = Listen(listen.proto, listen.host, listen.port, _host(ap.group(1)),
                            int(ap.group(2) or 0), listen.name)
        elif key == "name" and rest:
            listen = Listen(listen.proto, listen.host, listen.port, listen.advertise_host,
                            listen.advertise_port, rest.pop(0))
        else:
            raise CfgError.at(p.value_pos, f"unexpected '{key}' in listen",
                              "expected 'advertise addr[:port]' or 'name \"id\"'")
    if listen.port > 65535:
        raise CfgError.at(p.value_pos, f"bad port {listen.port} in listen")
    return listen


_CONVERT: dict[str, Callable[[ast.GlobalParam], object]] = {
    "int": _to_int, "bool": _to_bool, "str": _to_str, "listen": parse_listen,
    "alias": lambda p: tuple(p.text.split()),
}


@dataclass
class CoreSettings:
    values: dict[str, object]
    warnings: list[str]

    def __getitem__(self, name: str) -> object:
        return self.values[name]


def apply_globals(params: tuple[ast.GlobalParam, ...],
                  errors: list[CfgError]) -> CoreSettings:
    """Check and convert the global parameters; defaults for the rest."""
    values: dict[str, object] = {name: d.default for name, d in GLOBALS.items()}
    multi: dict[str, list[object]] = {name: [] for name, d in GLOBALS.items() if d.multi}
    ignored: list[str] = []
    for p in params:
        decl = GLOBALS.get(p.name)
        if decl is None:
            if p.name in IGNORED:
                if p.name not in ignored:
                    ignored.append(p.name)
                continue
            errors.append(CfgError.at(p.pos, f"unknown global parameter '{p.name}'",
                                      did_you_mean(p.name, GLOBALS)))
            continue
        try:
            value = _CONVERT[decl.type](p)
        except CfgError as e:
            errors.append(e)
            continue
        if decl.choices and value not in decl.choices:
            errors.append(CfgError.at(p.value_pos, f"bad value '{value}' for '{p.name}'",
                                      did_you_mean(str(value), decl.choices)))
            continue
        if decl.multi:
            if isinstance(value, tuple):
                multi[p.name].extend(value)
            else:
                multi[p.name].append(value)
        else:
            values[p.name] = value
    for name, items in multi.items():
        values[name] = tuple(items)
    warnings = []
    if ignored:
        warnings.append("parameters without meaning in ser, ignored: " + ", ".join(ignored))
    return CoreSettings(values, warnings)
